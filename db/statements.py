"""The SQL the store runs on its hot paths, built once as SQLAlchemy Core statements (building
ORM-enabled statements per call costs far more), and their compiled forms."""

from __future__ import annotations

import functools
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Insert,
    Integer,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from db.models import ContextSnapshot, Message, MessageChunk, Run, Session

MESSAGES = cast(Table, Message.__table__)
RUNS = cast(Table, Run.__table__)
SESSIONS = cast(Table, Session.__table__)
CHUNKS = cast(Table, MessageChunk.__table__)
SNAPSHOTS = cast(Table, ContextSnapshot.__table__)

INSERT_MESSAGE = insert(MESSAGES).returning(MESSAGES.c.id)
INSERT_MESSAGES = insert(MESSAGES).returning(MESSAGES.c.id, sort_by_parameter_order=True)
INSERT_MESSAGE_ROWS = insert(MESSAGES)
INSERT_RUN = insert(RUNS)
INSERT_SESSION = insert(SESSIONS)
# New sessions that are not stored yet, by dialect: the ids of those inserted come back, a
# session stored already is left as it is (and its run is a clash)
INSERT_NEW_SESSIONS: dict[str, Insert] = {
    "postgresql": postgresql.insert(SESSIONS)
    .on_conflict_do_nothing(index_elements=[SESSIONS.c.id])
    .returning(SESSIONS.c.id),
    "sqlite": sqlite.insert(SESSIONS)
    .on_conflict_do_nothing(index_elements=[SESSIONS.c.id])
    .returning(SESSIONS.c.id),
}
INSERT_CHUNKS = insert(CHUNKS)
MAX_MESSAGE_ID = select(func.coalesce(func.max(MESSAGES.c.id), 0))

# What a flush writes (each an ``executemany`` over the batch's rows)
FLUSH_WHOLE_MESSAGES = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("m_id"))
    .values(
        content=bindparam("m_content"),
        reasoning=bindparam("m_reasoning"),
        status=bindparam("m_status"),
        updated_at=bindparam("m_updated"),
        tool_calls=bindparam("m_tool_calls"),
        finish_reason=bindparam("m_finish"),
        token_count=func.coalesce(bindparam("m_tokens", type_=Integer), MESSAGES.c.token_count),
    )
)
DELETE_MESSAGE_CHUNKS = delete(CHUNKS).where(CHUNKS.c.message_id == bindparam("m_id"))
FLUSH_PARTIAL_MESSAGES = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("m_id"))
    .values(
        status=bindparam("m_status"),
        updated_at=bindparam("m_updated"),
        tool_calls=bindparam("m_tool_calls"),
    )
)
FLUSH_SESSIONS = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("s_id"))
    .values(
        last_seq=bindparam("s_seq"),
        updated_at=bindparam("s_updated"),
        input_tokens=bindparam("s_in"),
        output_tokens=bindparam("s_out"),
    )
)
FINISH_RUNS = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("r_id"))
    .values(
        status=bindparam("r_status"),
        upstream_run_id=bindparam("r_upstream"),
        finished_at=bindparam("r_finished"),
        usage=bindparam("r_usage"),
        error=bindparam("r_error"),
        error_code=bindparam("r_code"),
        finish_reason=bindparam("r_finish"),
    )
)

# The reads before a run: the newest compression snapshot, and the turns after it
LATEST_SNAPSHOT = (
    select(SNAPSHOTS)
    .where(SNAPSHOTS.c.session_id == bindparam("session_id"))
    .order_by(SNAPSHOTS.c.id.desc())
    .limit(1)
)
HISTORY = (
    select(MESSAGES.c.id, MESSAGES.c.role, MESSAGES.c.content, MESSAGES.c.token_count)
    .where(
        MESSAGES.c.session_id == bindparam("session_id"),
        # 64-bit bounds: a caller's "no bound" (2**62) is out of PostgreSQL's INTEGER range
        MESSAGES.c.id > bindparam("after_id", type_=BigInteger),
        MESSAGES.c.id < bindparam("before_id", type_=BigInteger),
        # constants written out, so the statement compiles once with no expanding parameters
        MESSAGES.c.role.in_([literal_column("'user'"), literal_column("'assistant'")]),
        MESSAGES.c.content != literal_column("''"),
    )
    .order_by(MESSAGES.c.id)
)

# PostgreSQL: the newest snapshot and the turns after it in one statement (one round trip, as
# SQLite's reader thread reads both in one trip): a row per turn, each with the snapshot's
# columns (NULL when there is none), or a single row with no turn
_SNAPSHOT = LATEST_SNAPSHOT.lateral("snapshot")
CONTEXT_POSTGRES = (
    select(
        _SNAPSHOT.c.summary,
        _SNAPSHOT.c.last_message_id,
        _SNAPSHOT.c.message_count,
        _SNAPSHOT.c.covered_tokens,
        _SNAPSHOT.c.summary_tokens,
        _SNAPSHOT.c.created_at,
        MESSAGES.c.id,
        MESSAGES.c.role,
        MESSAGES.c.content,
        MESSAGES.c.token_count,
    )
    .select_from(
        select(literal_column("1").label("one"))
        .subquery("one")
        .outerjoin(_SNAPSHOT, true())
        .outerjoin(
            MESSAGES,
            and_(
                MESSAGES.c.session_id == bindparam("session_id"),
                MESSAGES.c.id > func.coalesce(_SNAPSHOT.c.last_message_id, 0),
                MESSAGES.c.id < bindparam("before_id", type_=BigInteger),
                MESSAGES.c.role.in_([literal_column("'user'"), literal_column("'assistant'")]),
                MESSAGES.c.content != literal_column("''"),
            ),
        )
    )
    .order_by(MESSAGES.c.id)
)

# Statements the SQLite writer thread runs by name, compiled for its dialect
BULK: dict[str, Any] = {
    "run": INSERT_RUN,
    "session": INSERT_SESSION,
    "message": INSERT_MESSAGE_ROWS,
    "flush_whole": FLUSH_WHOLE_MESSAGES,
    "delete_chunks": DELETE_MESSAGE_CHUNKS,
    "flush_partial": FLUSH_PARTIAL_MESSAGES,
    "insert_chunks": INSERT_CHUNKS,
    "flush_sessions": FLUSH_SESSIONS,
    "finish_runs": FINISH_RUNS,
}
READS = {"snapshot": LATEST_SNAPSHOT, "history": HISTORY}


@functools.cache
def compiled(dialect: Any, name: str, keys: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """A ``BULK`` statement's SQL for ``dialect`` and the order of its parameters."""
    statement = BULK[name].compile(dialect=dialect, column_keys=list(keys))
    return str(statement), tuple(statement.positiontup or ())


@functools.cache
def compiled_read(dialect: Any, name: str) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """A ``READS`` statement's SQL for ``dialect``, the order of its parameters and their fixed
    values."""
    statement = READS[name].compile(dialect=dialect)
    return str(statement), tuple(statement.positiontup or ()), dict(statement.params)
