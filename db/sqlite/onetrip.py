"""A group commit's batch written and committed in one trip to the SQLite writer thread, and
the reads before a run in one trip to the reader thread.

Through SQLAlchemy each statement costs three or four trips to the database thread (cursor,
execute, fetch, close), each waiting for a turn of the event loop; under a burst of new runs
that wait, not SQLite, was most of a new run's time to its first token. The statements are
SQLAlchemy's own (``db.statements``), compiled once for the dialect, and every table's rows go
in a few multi-row statements (``db.sqlite.bulk``).
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, cast

from sqlalchemy.exc import DBAPIError

from db.records import Enqueued
from db.sqlite.bulk import execute_rows, existing_keys
from db.sqlite.ids import MessageIds
from db.sqlite.thread import SQLiteThread
from db.statements import SESSIONS, compiled, compiled_read
from db.writes import FlushWrite, RunInsert

# A step run in the writer thread: ("runs", sql, plan) inserts new runs (its result is the set
# of clashing sessions), ("steps", [(sql, rows), …]) runs multi-row statements (result None).
Op = tuple[Any, ...]
Plan = list[tuple[dict[str, Any] | None, dict[str, Any], list[dict[str, Any]]]]
Write = Callable[[Any], Awaitable[Any]]
# which of a batch's new sessions are stored already (in the batch's transaction)
EXISTING_SESSIONS = f"SELECT id FROM {SESSIONS.name} WHERE id IN ({{keys}})"


class OneTrip:
    """Writes batches of new runs and flushes on the writer thread."""

    def __init__(self, dialect: Any, writer: SQLiteThread, ids: MessageIds) -> None:
        self.dialect = dialect
        self.writer = writer
        self.ids = ids

    def accepts(self, fns: Sequence[Write]) -> bool:
        """Whether a batch can go in one trip: new runs and flushes only, with the next message
        ids known."""
        return self.ids.last is not None and all(
            isinstance(fn, (RunInsert, FlushWrite)) for fn in fns
        )

    def commit(
        self,
        fns: list[Write],
        done: Callable[[list[Any] | None, BaseException | None], None],
    ) -> None:
        """Hand the batch to the writer thread; ``done(results, error)`` is called on the loop
        once it is committed (or rolled back). A batch that cannot even be prepared fails at
        once."""
        try:
            ops, finishers = self._ops(fns)
        except Exception as exc:
            done(None, exc)
            return

        def landed(raw: list[Any] | None, error: BaseException | None) -> None:
            if error is not None:
                if isinstance(error, sqlite3.Error):
                    error = self.database_error(error)
                done(None, error)
                return
            assert raw is not None
            done([r for f, result in zip(finishers, raw, strict=True) for r in f(result)], None)

        self.writer.submit(functools.partial(run_ops, ops=ops), landed)

    def _ops(self, fns: list[Write]) -> tuple[list[Op], list[Callable[[Any], list[Any]]]]:
        """The thread's steps (consecutive new runs share one), and what turns each step's
        result into its writes' results."""
        ops: list[Op] = []
        finishers: list[Callable[[Any], list[Any]]] = []
        i = 0
        while i < len(fns):
            fn = fns[i]
            if isinstance(fn, FlushWrite):
                ops.append(self._flush_op(fn))
                finishers.append(lambda _: [None])
                i += 1
                continue
            j = i
            while j < len(fns) and isinstance(fns[j], RunInsert):
                j += 1
            op, finish = self._runs_op(cast(list[RunInsert], fns[i:j]))
            ops.append(op)
            finishers.append(finish)
            i = j
        return ops, finishers

    def _flush_op(self, write: FlushWrite) -> Op:
        steps = []
        for name, rows in write.steps:
            sql, order = compiled(self.dialect, name, tuple(rows[0]))
            steps.append((sql, [[row[k] for k in order] for row in rows]))
        return ("steps", steps)

    def _runs_op(self, inserts: list[RunInsert]) -> tuple[Op, Callable[[Any], list[Enqueued]]]:
        """The step that inserts ``inserts``, and what turns its result (the indices of
        clashing sessions) into their ``Enqueued``s."""
        # SQLite cannot order RETURNING rows of a multi-row insert: the batch will hold the
        # write lock, so the next message ids are ours to assign (a clash leaves a gap)
        count = sum(len(i.messages) for i in inserts)
        next_id = self.ids.take(count) if count else 0
        plan: Plan = []
        for i in inserts:
            messages = [{**m, "id": next_id + k} for k, m in enumerate(i.messages)]
            next_id += len(messages)
            plan.append((i.session_row, i.run_row, messages))
        session = next((s for s, _, _ in plan if s is not None), None)
        message = next((m[0] for _, _, m in plan if m), None)
        sql = {"run": compiled(self.dialect, "run", tuple(plan[0][1]))}
        if session is not None:
            sql["session"] = compiled(self.dialect, "session", tuple(session))
        if message is not None:
            sql["message"] = compiled(self.dialect, "message", tuple(message))

        def finish(clashed: set[int]) -> list[Enqueued]:
            for index, i in enumerate(inserts):
                if index in clashed:
                    i.enqueued.clash = True
                    i.enqueued.session = None
                elif i.messages:
                    _, _, messages = plan[index]
                    i.enqueued.started = (int(messages[0]["id"]), int(messages[1]["id"]))
            return [i.enqueued for i in inserts]

        return ("runs", sql, plan), finish

    def database_error(self, exc: sqlite3.Error) -> DBAPIError:
        """What SQLAlchemy would have raised for ``exc`` (IntegrityError, …)."""
        if "messages.id" in str(exc):
            self.ids.forget()  # another process wrote messages: read the highest again
        return cast(
            DBAPIError,
            DBAPIError.instance("(one-trip write)", None, exc, sqlite3.Error, dialect=self.dialect),
        )


def run_ops(db: sqlite3.Connection, ops: list[Op]) -> list[Any]:
    """Runs in the writer thread: each step in order, then a commit (a rollback when anything
    failed)."""
    try:
        if not db.in_transaction:
            # the write lock from the start: the clash check of new sessions reads inside it
            db.execute("BEGIN IMMEDIATE")
        results: list[Any] = []
        for op in ops:
            if op[0] == "runs":
                results.append(_insert_runs(db, op[1], op[2]))
            else:
                for sql, rows in op[1]:
                    execute_rows(db, sql, rows)
                results.append(None)
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return results


def _insert_runs(
    db: sqlite3.Connection, sql: dict[str, tuple[str, tuple[str, ...]]], plan: Plan
) -> set[int]:
    """Insert new sessions (a session already stored, or created twice in the batch, is a
    clash: its run is not written), then the runs and their messages. Returns the clashing
    indices. Runs inside the batch's write transaction, so nothing is stored in between."""
    clashed: set[int] = set()
    new = [(index, session) for index, (session, _, _) in enumerate(plan) if session is not None]
    if new:
        taken = existing_keys(db, EXISTING_SESSIONS, [session["id"] for _, session in new])
        rows = []
        text, order = sql["session"]
        for index, session in new:
            if session["id"] in taken:
                clashed.add(index)
            else:
                taken.add(session["id"])
                rows.append([session[k] for k in order])
        execute_rows(db, text, rows)
    kept = [entry for index, entry in enumerate(plan) if index not in clashed]
    if kept:
        text, order = sql["run"]
        execute_rows(db, text, [[run[k] for k in order] for _, run, _ in kept])
    messages = [m for _, _, ms in kept for m in ms]
    if messages:
        text, order = sql["message"]
        execute_rows(db, text, [[m[k] for k in order] for m in messages])
    return clashed


Read = tuple[str, tuple[str, ...], dict[str, Any]]
ContextRows = tuple[dict[str, Any] | None, list[tuple[int, str, str, int | None]]]


async def read_context(
    reader: SQLiteThread, dialect: Any, session_id: str, before_id: int
) -> ContextRows:
    """The newest snapshot of a session (as a column mapping) and the history rows after it,
    in one trip to the reader thread; sqlite3 errors come back as SQLAlchemy's."""
    snapshot_sql = compiled_read(dialect, "snapshot")
    history_sql = compiled_read(dialect, "history")
    try:
        return await reader.call(
            functools.partial(
                _read_context,
                snapshot_sql=snapshot_sql,
                history_sql=history_sql,
                session_id=session_id,
                before_id=before_id,
            )
        )
    except sqlite3.Error as exc:
        raise DBAPIError.instance(
            history_sql[0], None, exc, sqlite3.Error, dialect=dialect
        ) from None


def _read_context(
    db: sqlite3.Connection,
    *,
    snapshot_sql: Read,
    history_sql: Read,
    session_id: str,
    before_id: int,
) -> ContextRows:
    text, order, fixed = snapshot_sql
    cursor = db.execute(text, [{**fixed, "session_id": session_id}[k] for k in order])
    row = cursor.fetchone()
    found = None if row is None else dict(zip([d[0] for d in cursor.description], row, strict=True))
    values = {
        **history_sql[2],
        "session_id": session_id,
        "after_id": found["last_message_id"] if found is not None else 0,
        "before_id": before_id,
    }
    text, order, _ = history_sql
    return found, db.execute(text, [values[k] for k in order]).fetchall()


__all__ = ["OneTrip", "read_context"]
