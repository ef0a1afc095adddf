"""The store: the one module that talks to the database.

Writes are serialised by one lock (SQLite has a single writer; the lock keeps waiting inside
the event loop instead of in ``busy_timeout``). Reads run concurrently (WAL).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import aiosqlite
from sqlalchemy import (
    Integer,
    Table,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db.bulk import execute_rows, existing_keys
from db.engine import create_engine, migrate
from db.models import ContextSnapshot, Message, MessageChunk, Run, Session, UpstreamConfigRow, User
from db.records import (
    Enqueued,
    FlushBatch,
    HistoryItem,
    MessageRecord,
    RunRecord,
    SessionRecord,
    SnapshotRecord,
    UpstreamConfigRecord,
    UserRecord,
    dump_json,
    load_json,
)
from db.writer import WriterThread
from server.errors import BadRequest, Forbidden

ACTIVE_RUN_STATUSES = ("running",)
T = TypeVar("T")
MAX_BATCH = 500  # writes per group commit

# Core statements for the hot paths (ORM-enabled statements cost far more to build)
MESSAGES = cast(Table, Message.__table__)
RUNS = cast(Table, Run.__table__)
SESSIONS = cast(Table, Session.__table__)
CHUNKS = cast(Table, MessageChunk.__table__)
SNAPSHOTS = cast(Table, ContextSnapshot.__table__)
INSERT_MESSAGE = insert(MESSAGES).returning(MESSAGES.c.id)
INSERT_RUN = insert(RUNS)
INSERT_SESSION = insert(SESSIONS)
INSERT_CHUNKS = insert(CHUNKS)
INSERT_MESSAGE_ROWS = insert(MESSAGES)
# what a flush writes, built once (each is an ``executemany`` over the batch)
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


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine | None = None
        self._pending: list[
            tuple[Callable[[AsyncConnection], Awaitable[Any]], asyncio.Future[Any]]
        ] = []
        self._writer: asyncio.Future[None] | None = None
        self._arrived = asyncio.Event()  # a write was queued (wakes a waiting writer)
        self.transactions = 0  # write transactions committed (a metric)
        self._message_ids = MessageIds()
        self._writer_thread: WriterThread | None = None  # SQLite: where group commits go

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        self._engine = create_engine(self.url)
        await migrate(self._engine)
        if self._engine.dialect.name == "sqlite":
            async with self._read() as conn:
                # known from the start, so even the first burst's commit is one trip
                await self._message_ids.read(conn)
            database = make_url(self.url).database
            if database and database != ":memory:":
                self._writer_thread = WriterThread(database)
                await self._writer_thread.open()

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.shield(self._writer)  # let queued writes land
        if self._writer_thread is not None:
            await self._writer_thread.close()
            self._writer_thread = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("store is not open")
        return self._engine

    async def _transact(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``fn`` in a write transaction and return its result.

        Writes are group-committed: one writer task runs every write queued while the previous
        commit was in progress inside a single transaction (in order), so a burst of runs costs
        a few commits instead of one each. If any of them fails, the batch is rolled back and
        retried in halves, so only the failing one fails. The write finishes even when
        its caller is cancelled (a transaction cut off by cancellation would leave SQLite's
        write lock behind a half-closed connection): the caller waits on a future of its own,
        which a cancellation cancels, while the writer runs the write regardless. (Not
        ``asyncio.shield``: its relay of the result costs one more turn of the event loop, and
        under a burst every turn is long.)
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, future))
        self._arrived.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_batches())
        return await future

    async def _write_batches(self) -> None:
        """Commit the queued writes, batch by batch.

        Batches of new runs only (committed in one trip, see ``_run_committed``) do not wait
        for each other: each goes to the database as soon as it is taken, so the second batch
        of a burst is not held up by the turn of the event loop that the first one's answer
        waits for (SQLite still writes them one after the other). A write waits for its own
        earlier ones (its caller awaits each), so no batch depends on one still in flight.
        Any other batch waits until those in flight are committed.
        """
        inflight: set[asyncio.Future[Any]] = set()
        while self._pending or inflight:
            if self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                one_trip = self._one_trip(fns := [fn for fn, _ in batch])
                if one_trip and all(isinstance(fn, _RunInsert) for fn in fns):
                    inflight.add(self._commit_in_one_trip(batch))
                    continue
                if inflight:
                    await asyncio.wait(inflight)
                    inflight.clear()
                await (self._commit_in_one_trip(batch) if one_trip else self._commit(batch))
                continue
            self._arrived.clear()
            arrival: asyncio.Future[Any] = asyncio.ensure_future(self._arrived.wait())
            done, _ = await asyncio.wait({*inflight, arrival}, return_when=asyncio.FIRST_COMPLETED)
            arrival.cancel()
            inflight -= done

    def _one_trip(self, fns: Sequence[Callable[[AsyncConnection], Awaitable[Any]]]) -> bool:
        """Whether a batch is written and committed in one trip to the SQLite writer thread:
        a batch of new runs and flushes only (a burst of new chats, the flusher's ticks).
        Through SQLAlchemy each statement costs three or four trips to aiosqlite's thread,
        each waiting for a turn of the event loop, and under load a turn is long."""
        return (
            self._writer_thread is not None
            and self._message_ids.last is not None
            and all(isinstance(fn, (_RunInsert, _FlushWrite)) for fn in fns)
        )

    async def _commit(self, batch: _Batch) -> None:
        """Commit a batch; when it fails, its halves are committed apart (in order), down to
        the single write that fails, so one clash costs a few extra commits, not one each."""
        try:
            async with self.engine.begin() as conn:
                results = await _run_batch(conn, [fn for fn, _ in batch])
        except Exception:
            await self._failed(batch, sys.exc_info()[1], self._commit)
            return
        self._committed(batch, results)

    def _commit_in_one_trip(self, batch: _Batch) -> asyncio.Future[None]:
        """Hand a batch to the writer thread at once (see ``_one_trip``); the future is done
        when the batch is committed, or failed as ``_commit`` fails."""
        assert self._writer_thread is not None
        loop = asyncio.get_running_loop()
        landed: asyncio.Future[None] = loop.create_future()
        dialect = self.engine.dialect
        try:
            ops, finishers = _one_trip_ops(dialect, [fn for fn, _ in batch])
        except Exception as exc:  # a write that cannot even be prepared fails its batch
            for _, future in batch:
                _settle(future, exc=exc)
            landed.set_result(None)
            return landed

        def done(raw: list[Any] | None, error: BaseException | None) -> None:
            if error is None:
                assert raw is not None
                results = [r for f, result in zip(finishers, raw, strict=True) for r in f(result)]
                self._committed(batch, results)
                landed.set_result(None)
                return
            if isinstance(error, sqlite3.Error):
                error = _database_error(error, dialect, self._message_ids)
            retry = asyncio.ensure_future(self._failed(batch, error, self._one_trip_again))
            retry.add_done_callback(lambda _: landed.set_result(None))

        self._writer_thread.submit(functools.partial(_run_ops, ops=ops, commit=True), done)
        return landed

    async def _one_trip_again(self, batch: _Batch) -> None:
        await self._commit_in_one_trip(batch)

    async def _failed(
        self,
        batch: _Batch,
        error: BaseException | None,
        commit: Callable[[_Batch], Awaitable[None]],
    ) -> None:
        if len(batch) == 1:
            _settle(batch[0][1], exc=error)
            return
        middle = len(batch) // 2
        await commit(batch[:middle])
        await commit(batch[middle:])

    def _committed(self, batch: _Batch, results: list[Any]) -> None:
        self.transactions += 1
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def ping(self) -> None:
        async with self._read() as conn:
            await conn.execute(text("SELECT 1"))

    async def integrity_check(self) -> str:
        async with self._read() as conn:
            return str((await conn.execute(text("PRAGMA integrity_check"))).scalar_one())

    # -- users --------------------------------------------------------------------------------

    async def sync_users(self, tokens: dict[str, str]) -> None:
        """Create or update users from ``{name: token}`` (tokens are stored hashed)."""
        now = time.time()

        async def tx(conn: AsyncConnection) -> None:
            for name, token in tokens.items():
                digest = hash_token(token)
                row = (
                    await conn.execute(select(User.id, User.token_hash).where(User.name == name))
                ).first()
                clash = (
                    await conn.execute(
                        select(User.id).where(User.token_hash == digest, User.name != name)
                    )
                ).first()
                if clash is not None:
                    # Another user held this token; tokens identify users, so it moves here.
                    await conn.execute(
                        update(User)
                        .where(User.id == clash.id)
                        .values(token_hash=hash_token(f"revoked:{clash.id}:{now}"), revoked_at=now)
                    )
                if row is None:
                    await conn.execute(
                        insert(User).values(name=name, token_hash=digest, created_at=now)
                    )
                elif row.token_hash != digest:
                    await conn.execute(
                        update(User)
                        .where(User.id == row.id)
                        .values(token_hash=digest, revoked_at=None)
                    )

        await self._transact(tx)

    async def user_by_token(self, token: str) -> UserRecord | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(User.id, User.name).where(
                        User.token_hash == hash_token(token), User.revoked_at.is_(None)
                    )
                )
            ).first()
        return None if row is None else UserRecord(id=row.id, name=row.name)

    async def add_user(self, name: str, token: str) -> UserRecord:
        """A new user with this token (stored hashed); ``BadRequest`` if the name is taken."""

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                insert(User).values(name=name, token_hash=hash_token(token), created_at=time.time())
            )

        try:
            await self._transact(tx)
        except IntegrityError:
            raise BadRequest(f"there is already a user called {name!r}") from None
        user = await self.user_by_name(name)
        assert user is not None
        return user

    async def list_users(self) -> list[tuple[str, float, float | None]]:
        """``(name, created_at, revoked_at)`` of every user."""
        async with self._read() as conn:
            rows = await conn.execute(
                select(User.name, User.created_at, User.revoked_at).order_by(User.name)
            )
            return [(r.name, r.created_at, r.revoked_at) for r in rows]

    async def revoke_user(self, name: str) -> bool:
        """Make the user's token stop working; False when there is no such active user."""

        async def tx(conn: AsyncConnection) -> bool:
            now = time.time()
            result = await conn.execute(
                update(User)
                .where(User.name == name, User.revoked_at.is_(None))
                .values(revoked_at=now, token_hash=hash_token(f"revoked:{name}:{now}"))
            )
            return bool(result.rowcount)

        return await self._transact(tx)

    async def user_by_name(self, name: str) -> UserRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(select(User.id, User.name).where(User.name == name))).first()
        return None if row is None else UserRecord(id=row.id, name=row.name)

    async def ensure_user(self, name: str) -> UserRecord:
        """The user called ``name``, created without a usable token if missing."""
        user = await self.user_by_name(name)
        if user is not None:
            return user

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                insert(User).values(
                    name=name, token_hash=hash_token(f"no-token:{name}"), created_at=time.time()
                )
            )

        await self._transact(tx)
        user = await self.user_by_name(name)
        assert user is not None
        return user

    # -- sessions -----------------------------------------------------------------------------

    async def get_session(self, session_id: str) -> SessionRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(select(Session).where(Session.id == session_id))).first()
        return None if row is None else _session(row._mapping)

    async def load_session(
        self, session_id: str, seq_reserve: int
    ) -> tuple[SessionRecord, list[RunRecord]] | None:
        """The session and its queued runs, reserving ``seq_reserve`` sequence numbers ahead.

        The stored ``last_seq`` becomes a ceiling of what may be emitted, so that a crash can
        never make a sequence number be used twice.
        """
        if await self.get_session(session_id) is None:  # no write for what does not exist
            return None

        async def tx(conn: AsyncConnection) -> tuple[SessionRecord, list[RunRecord]] | None:
            row = (await conn.execute(select(Session).where(Session.id == session_id))).first()
            if row is None:
                return None
            record = _session(row._mapping)
            await conn.execute(
                update(Session)
                .where(Session.id == session_id)
                .values(last_seq=record.last_seq + seq_reserve)
            )
            queued = await self._queued_runs(conn, session_id)
            record.last_position = int(
                (
                    await conn.execute(
                        select(func.coalesce(func.max(Run.position), 0)).where(
                            Run.session_id == session_id
                        )
                    )
                ).scalar_one()
            )
            return record, queued

        return await self._transact(tx)

    async def _queued_runs(self, conn: AsyncConnection, session_id: str) -> list[RunRecord]:
        rows = await conn.execute(
            select(Run)
            .where(Run.session_id == session_id, Run.status == "queued")
            .order_by(Run.position)
        )
        return [_run(r._mapping) for r in rows]

    async def reserve_seq(self, session_id: str, ceiling: int) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                update(Session).where(Session.id == session_id).values(last_seq=ceiling)
            )

        await self._transact(tx)

    # -- runs ---------------------------------------------------------------------------------

    async def enqueue_run(
        self,
        run: RunRecord,
        *,
        owner_id: int,
        title: str,
        seq_reserve: int,
        start: tuple[dict[str, Any], dict[str, Any]] | None = None,
        position: int | None = None,
    ) -> Enqueued:
        """Persist a new run, creating its session on first use, in one transaction.

        The common cases take no reads: with ``position`` (the caller holds the session and
        checked its owner) the run is inserted at that position; without it, the session is
        created. A session that is already stored makes it a ``clash`` with nothing written
        (the caller loads the session and enqueues again with its position). Only a duplicate
        ``queue_id`` (or a clash on a database without ``ON CONFLICT``) runs the careful path.

        With ``start`` (its user and assistant messages) the run is saved as started right
        away. When the session already has a run with this ``queue_id``, that run is returned
        as a duplicate and nothing is written. Raises ``Forbidden`` when the session belongs to
        another user. A new session's stored ``last_seq`` is a reservation of ``seq_reserve``.
        """

        async def tx(conn: AsyncConnection) -> Enqueued:
            owner = (
                await conn.execute(select(Session.owner_id).where(Session.id == run.session_id))
            ).first()
            if owner is not None and owner.owner_id != owner_id:
                raise Forbidden("this session belongs to another user")
            existing = (
                await conn.execute(
                    select(Run).where(
                        Run.session_id == run.session_id, Run.queue_id == run.queue_id
                    )
                )
            ).first()
            if existing is not None:
                return Enqueued(_run(existing._mapping), duplicate=True)
            if owner is None:
                run.position = 1
            else:
                position_now = (
                    await conn.execute(
                        select(func.coalesce(func.max(Run.position), 0)).where(
                            Run.session_id == run.session_id
                        )
                    )
                ).scalar_one()
                run.position = int(position_now) + 1
                await conn.execute(
                    update(Session)
                    .where(Session.id == run.session_id)
                    .values(updated_at=run.created_at)
                )
            return await insert_run(conn, create_session=owner is None)

        run.position = position or 1
        fast = _RunInsert.build(
            run,
            owner_id=owner_id,
            title=title,
            seq_reserve=seq_reserve,
            start=start,
            create_session=position is None,
            ids=self._message_ids,
        )

        async def insert_run(conn: AsyncConnection, *, create_session: bool) -> Enqueued:
            return await self._insert_run(
                conn,
                run,
                owner_id=owner_id,
                title=title,
                seq_reserve=seq_reserve,
                start=start,
                create_session=create_session,
            )

        try:
            return await self._transact(fast)  # a stored session comes back as a clash
        except IntegrityError:
            return await self._transact(tx)

    async def _insert_run(
        self,
        conn: AsyncConnection,
        run: RunRecord,
        *,
        owner_id: int,
        title: str,
        seq_reserve: int,
        start: tuple[dict[str, Any], dict[str, Any]] | None,
        create_session: bool,
    ) -> Enqueued:
        insert_ = _RunInsert.build(
            run,
            owner_id=owner_id,
            title=title,
            seq_reserve=seq_reserve,
            start=start,
            create_session=create_session,
            ids=self._message_ids,
        )
        return await insert_(conn)

    async def run_by_queue_id(self, session_id: str, queue_id: str) -> RunRecord | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    select(Run).where(Run.session_id == session_id, Run.queue_id == queue_id)
                )
            ).first()
        return None if row is None else _run(row._mapping)

    async def get_run(self, run_id: str) -> RunRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(select(Run).where(Run.id == run_id))).first()
        return None if row is None else _run(row._mapping)

    async def cancel_queued(self, run_id: str) -> bool:
        async def tx(conn: AsyncConnection) -> bool:
            result = await conn.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == "queued")
                .values(status="cancelled", finished_at=time.time())
            )
            return bool(result.rowcount)

        return await self._transact(tx)

    async def start_run(
        self, run_id: str, user_message: dict[str, Any], assistant_message: dict[str, Any]
    ) -> tuple[int, int]:
        """Mark a queued run running and save its user and (empty) assistant messages."""
        now = time.time()

        async def tx(conn: AsyncConnection) -> tuple[int, int]:
            await conn.execute(
                update(Run).where(Run.id == run_id).values(status="running", started_at=now)
            )
            ids = (
                await self._insert_message(conn, user_message, now),
                await self._insert_message(conn, assistant_message, now),
            )
            await conn.execute(
                update(Session)
                .where(Session.id == user_message["session_id"])
                .values(updated_at=now)
            )
            return ids

        return await self._transact(tx)

    async def recover_interrupted(self, error: str) -> list[str]:
        """After a stop or crash: in-flight runs become ``interrupted`` (their text kept).

        Returns the ids of sessions that still have queued runs.
        """
        now = time.time()

        async def tx(conn: AsyncConnection) -> list[str]:
            await conn.execute(
                update(Run)
                .where(Run.status.in_(ACTIVE_RUN_STATUSES))
                .values(
                    status="interrupted", finished_at=now, error=error, error_code="interrupted"
                )
            )
            await self._fold_chunks(conn)
            await conn.execute(
                update(Message)
                .where(Message.status == "streaming")
                .values(status="interrupted", updated_at=now)
            )
            rows = await conn.execute(
                select(Run.session_id).where(Run.status == "queued").distinct()
            )
            return [r.session_id for r in rows]

        return await self._transact(tx)

    async def _fold_chunks(self, conn: AsyncConnection) -> None:
        """Append every stored chunk to its message and drop the chunks."""
        rows = await conn.execute(
            select(CHUNKS.c.message_id, CHUNKS.c.field, CHUNKS.c.text).order_by(CHUNKS.c.id)
        )
        texts: dict[tuple[int, str], list[str]] = {}
        for row in rows:
            texts.setdefault((row.message_id, row.field), []).append(row.text)
        for (message_id, field), parts in texts.items():
            column = MESSAGES.c.content if field == "content" else MESSAGES.c.reasoning
            await conn.execute(
                update(MESSAGES)
                .where(MESSAGES.c.id == message_id)
                .values({column: column + "".join(parts)})
            )
        await conn.execute(delete(CHUNKS))

    # -- messages -----------------------------------------------------------------------------

    async def insert_message(self, message: dict[str, Any]) -> int:
        async def tx(conn: AsyncConnection) -> int:
            return await self._insert_message(conn, message, time.time())

        return await self._transact(tx)

    async def _insert_message(
        self, conn: AsyncConnection, message: dict[str, Any], now: float
    ) -> int:
        result = await conn.execute(INSERT_MESSAGE, message_row(message, now))
        return self._message_ids.seen(int(result.scalar_one()))

    async def recent_messages(
        self, session_id: str, limit: int, before_id: int | None = None
    ) -> list[MessageRecord]:
        """The newest ``limit`` messages of a session (older than ``before_id``), oldest first;
        an answer that did not complete carries its run's error."""
        query = (
            select(Message, Run.error.label("run_error"))
            .outerjoin(Run, Run.id == Message.run_id)
            .where(Message.session_id == session_id)
        )
        if before_id is not None:
            query = query.where(Message.id < before_id)
        async with self._read() as conn:
            rows = await conn.execute(query.order_by(Message.id.desc()).limit(limit))
            records = [_message(r._mapping) for r in rows]
        records.reverse()
        return records

    async def list_sessions(
        self, owner_id: int, limit: int, before: tuple[float, str] | None
    ) -> list[tuple[SessionRecord, str, int]]:
        """A page of the owner's sessions, newest activity first: ``(session, preview, count)``.

        ``before`` is the ``(updated_at, id)`` of the last session of the previous page.
        """
        count = (
            select(func.count(Message.id)).where(Message.session_id == Session.id).scalar_subquery()
        )
        preview = (
            select(Message.content)
            .where(
                Message.session_id == Session.id,
                Message.role.in_(("user", "assistant")),
                Message.content != "",
            )
            .order_by(Message.id.desc())
            .limit(1)
            .scalar_subquery()
        )
        query = select(Session, count.label("n"), preview.label("preview")).where(
            Session.owner_id == owner_id
        )
        if before is not None:
            updated, sid = before
            query = query.where(
                (Session.updated_at < updated)
                | ((Session.updated_at == updated) & (Session.id < sid))
            )
        query = query.order_by(Session.updated_at.desc(), Session.id.desc()).limit(limit)
        async with self._read() as conn:
            rows = await conn.execute(query)
            return [(_session(r._mapping), (r.preview or "")[:160], int(r.n)) for r in rows]

    async def rename_session(self, session_id: str, title: str) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(update(Session).where(Session.id == session_id).values(title=title))

        await self._transact(tx)

    async def delete_session(self, session_id: str) -> None:
        """Delete a session with its messages and runs."""

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(delete(Message).where(Message.session_id == session_id))
            await conn.execute(delete(Run).where(Run.session_id == session_id))
            await conn.execute(delete(Session).where(Session.id == session_id))

        await self._transact(tx)

    async def history(
        self,
        session_id: str,
        before_id: int,
        count: Callable[[str], int],
        after_id: int = 0,
    ) -> list[HistoryItem]:
        """The user and assistant turns between two messages (exclusive), oldest first, each
        with its token count.

        Tool activity is not part of it, and neither are empty assistant turns. Rows stored
        without a count (before counts were kept) are counted here once and the count saved.
        """
        async with self._read() as conn:
            rows = await conn.execute(
                HISTORY,
                {"session_id": session_id, "after_id": after_id, "before_id": before_id},
            )
            items: list[HistoryItem] = []
            missing: dict[int, int] = {}
            for r in rows:
                tokens = r.token_count
                if tokens is None:
                    tokens = missing[r.id] = count(r.content)
                items.append(HistoryItem(r.id, r.role, r.content, tokens))
        if missing:
            await self.set_token_counts(missing)
        return items

    async def set_token_counts(self, counts: dict[int, int]) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                update(MESSAGES)
                .where(MESSAGES.c.id == bindparam("m_id"))
                .values(token_count=bindparam("m_tokens")),
                [{"m_id": i, "m_tokens": n} for i, n in counts.items()],
            )

        await self._transact(tx)

    async def latest_snapshot(self, session_id: str) -> SnapshotRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(LATEST_SNAPSHOT, {"session_id": session_id})).first()
        return None if row is None else _snapshot(row._mapping)

    async def context(
        self, session_id: str, before_id: int, count: Callable[[str], int]
    ) -> tuple[SnapshotRecord | None, list[HistoryItem]]:
        """A session's newest compression snapshot and the turns after it up to ``before_id``
        (as ``history``), read together: on SQLite in one trip to the database thread, which
        costs a fifth of the CPU of the two reads through SQLAlchemy and waits for one turn of
        the event loop instead of several."""
        if self.engine.dialect.name != "sqlite":
            snapshot = await self.latest_snapshot(session_id)
            after = snapshot.last_message_id if snapshot is not None else 0
            return snapshot, await self.history(session_id, before_id, count, after_id=after)
        async with self._read() as conn:  # no SQLAlchemy transaction: plain reads
            driver = (await conn.get_raw_connection()).driver_connection
            assert isinstance(driver, aiosqlite.Connection)  # SQLite's only async driver
            snapshot_sql = _compiled_read(conn.dialect, "snapshot")
            history_sql = _compiled_read(conn.dialect, "history")
            try:
                found, rows = await driver._execute(  # type: ignore[no-untyped-call]
                    _read_context, driver._conn, snapshot_sql, history_sql, session_id, before_id
                )
            except sqlite3.Error as exc:  # what SQLAlchemy would have raised
                raise DBAPIError.instance(
                    history_sql[0], None, exc, sqlite3.Error, dialect=conn.dialect
                ) from None
        snapshot = None if found is None else _snapshot(found)
        items: list[HistoryItem] = []
        missing: dict[int, int] = {}
        for message_id, role, content, tokens in rows:
            if tokens is None:
                tokens = missing[message_id] = count(content)
            items.append(HistoryItem(message_id, role, content, tokens))
        if missing:
            await self.set_token_counts(missing)
        return snapshot, items

    async def save_snapshot(self, snapshot: SnapshotRecord) -> None:
        """Store a snapshot; older ones of the session are dropped (only the newest is used)."""

        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                delete(SNAPSHOTS).where(SNAPSHOTS.c.session_id == snapshot.session_id)
            )
            await conn.execute(
                insert(SNAPSHOTS).values(
                    session_id=snapshot.session_id,
                    summary=snapshot.summary,
                    last_message_id=snapshot.last_message_id,
                    message_count=snapshot.message_count,
                    covered_tokens=snapshot.covered_tokens,
                    summary_tokens=snapshot.summary_tokens,
                    created_at=snapshot.created_at,
                )
            )

        await self._transact(tx)

    # -- upstream configs ---------------------------------------------------------------------

    async def upstream_configs(self) -> list[UpstreamConfigRecord]:
        async with self._read() as conn:
            rows = await conn.execute(select(UpstreamConfigRow).order_by(UpstreamConfigRow.name))
            return [_upstream_config(r._mapping) for r in rows]

    async def create_upstream_config(self, record: UpstreamConfigRecord) -> bool:
        """Insert a profile; False when the name is taken. An active one deactivates the rest."""

        async def tx(conn: AsyncConnection) -> bool:
            try:
                async with conn.begin_nested():
                    await conn.execute(insert(UpstreamConfigRow).values(**_config_row(record)))
            except IntegrityError:
                return False
            if record.active:
                await _only_active(conn, record.name)
            return True

        return await self._transact(tx)

    async def update_upstream_config(self, record: UpstreamConfigRecord) -> bool:
        """Replace a config; False when it does not exist."""

        async def tx(conn: AsyncConnection) -> bool:
            row = _config_row(record)
            del row["created_at"]
            result = await conn.execute(
                update(UpstreamConfigRow).where(UpstreamConfigRow.name == record.name).values(**row)
            )
            if result.rowcount and record.active:
                await _only_active(conn, record.name)
            return bool(result.rowcount)

        return await self._transact(tx)

    async def delete_upstream_config(self, name: str) -> bool:
        async def tx(conn: AsyncConnection) -> bool:
            result = await conn.execute(
                delete(UpstreamConfigRow).where(UpstreamConfigRow.name == name)
            )
            return bool(result.rowcount)

        return await self._transact(tx)

    async def save_upstream_check(self, name: str, check: dict[str, Any]) -> None:
        async def tx(conn: AsyncConnection) -> None:
            await conn.execute(
                update(UpstreamConfigRow)
                .where(UpstreamConfigRow.name == name)
                .values(last_check=dump_json(check))
            )

        await self._transact(tx)

    # -- batched writes -----------------------------------------------------------------------

    async def write(self, batch: FlushBatch) -> None:
        """Write one flush batch in a single transaction (on SQLite in one trip to the
        database thread, so a flush under load is not stretched by a turn of the busy event
        loop per statement)."""
        if not batch:
            return
        whole = [m for m in batch.messages if m.content is not None]
        partial = [m for m in batch.messages if m.content is None]
        write = _FlushWrite(
            [
                (
                    "flush_whole",
                    [
                        {
                            "m_id": m.id,
                            "m_content": m.content,
                            "m_reasoning": m.reasoning,
                            "m_status": str(m.status),
                            "m_updated": m.updated_at,
                            "m_tool_calls": dump_json(m.tool_calls),
                            "m_finish": m.finish_reason,
                            "m_tokens": m.token_count,
                        }
                        for m in whole
                    ],
                ),
                ("delete_chunks", [{"m_id": m.id} for m in whole]),
                (
                    "flush_partial",
                    [
                        {
                            "m_id": m.id,
                            "m_status": str(m.status),
                            "m_updated": m.updated_at,
                            "m_tool_calls": dump_json(m.tool_calls),
                        }
                        for m in partial
                    ],
                ),
                (
                    "insert_chunks",
                    [
                        {"message_id": m.id, "field": field, "text": text}
                        for m in partial
                        for field, text in (
                            ("content", m.append_content),
                            ("reasoning", m.append_reasoning),
                        )
                        if text
                    ],
                ),
                (
                    "flush_sessions",
                    [
                        {
                            "s_id": sid,
                            "s_seq": seq,
                            "s_updated": updated,
                            "s_in": tin,
                            "s_out": tout,
                        }
                        for sid, (seq, updated, tin, tout) in batch.sessions.items()
                    ],
                ),
                (
                    "finish_runs",
                    [
                        {
                            "r_id": run.run_id,
                            "r_status": run.status,
                            "r_upstream": run.upstream_run_id,
                            "r_finished": run.finished_at,
                            "r_usage": dump_json(run.usage),
                            "r_error": run.error,
                            "r_code": run.error_code,
                            "r_finish": run.finish_reason,
                        }
                        for run in batch.runs
                    ],
                ),
            ]
        )
        await self._transact(write)


def _settle(
    future: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _session(m: Any) -> SessionRecord:
    return SessionRecord(
        id=m["id"],
        owner_id=m["owner_id"],
        title=m["title"],
        profile=m["profile"],
        model=m["model"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        last_seq=m["last_seq"],
        input_tokens=m["input_tokens"],
        output_tokens=m["output_tokens"],
    )


def _run(m: Any) -> RunRecord:
    return RunRecord(
        id=m["id"],
        session_id=m["session_id"],
        queue_id=m["queue_id"],
        input=json.loads(m["input"]),
        model=m["model"],
        instructions=m["instructions"],
        profile=m["profile"],
        status=m["status"],
        position=m["position"],
        created_at=m["created_at"],
        upstream_run_id=m["upstream_run_id"],
        error=m["error"],
        error_code=m["error_code"],
    )


def _message(m: Any) -> MessageRecord:
    return MessageRecord(
        id=m["id"],
        session_id=m["session_id"],
        run_id=m["run_id"],
        role=m["role"],
        content=m["content"],
        reasoning=m["reasoning"],
        status=m["status"],
        created_at=m["created_at"],
        tool_calls=load_json(m["tool_calls"]),
        tool_call_id=m["tool_call_id"],
        tool_name=m["tool_name"],
        finish_reason=m["finish_reason"],
        token_count=m["token_count"],
        error=m["run_error"] if m.get("run_error") and m["role"] == "assistant" else None,
    )


__all__: Sequence[str] = ["Store", "hash_token"]


def _config_row(record: UpstreamConfigRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "kind": record.kind,
        "url": record.url,
        "api_key": record.api_key,
        "model": record.model,
        "context_length": record.context_length,
        "sampling": dump_json(record.sampling),
        "overrides": dump_json(record.overrides),
        "draft_model": record.draft_model,
        "active": int(record.active),
        "last_check": dump_json(record.last_check) if record.last_check is not None else None,
        "env_digest": record.env_digest,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def _upstream_config(row: Any) -> UpstreamConfigRecord:
    return UpstreamConfigRecord(
        name=row["name"],
        kind=row["kind"],
        url=row["url"],
        api_key=row["api_key"],
        model=row["model"],
        context_length=row["context_length"],
        sampling=load_json(row["sampling"]) or {},
        overrides=load_json(row["overrides"]) or {},
        draft_model=row["draft_model"],
        active=bool(row["active"]),
        last_check=load_json(row["last_check"]) if row["last_check"] else None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        env_digest=row["env_digest"],
    )


async def _only_active(conn: AsyncConnection, name: str) -> None:
    await conn.execute(
        update(UpstreamConfigRow).where(UpstreamConfigRow.name != name).values(active=0)
    )


class MessageIds:
    """Message ids handed out in this process (SQLite has one writing process, and every write
    goes through the store's writer, one at a time): the table's highest id is read once, then
    counted on. A rolled-back batch only leaves a gap."""

    def __init__(self) -> None:
        self.last: int | None = None

    async def read(self, conn: AsyncConnection) -> None:
        """Read the table's highest id."""
        self.last = int((await conn.execute(MAX_MESSAGE_ID)).scalar_one())

    def take(self, count: int) -> int:
        """The first of ``count`` new consecutive ids (the highest is known: ``read``)."""
        if self.last is None:
            raise RuntimeError("the highest message id is not known")
        first = self.last + 1
        self.last += count
        return first

    def forget(self) -> None:
        """The count is off (the table was written by someone else): read it again."""
        self.last = None

    def seen(self, message_id: int) -> int:
        """An id the database chose itself (autoincrement): never hand it out again."""
        if self.last is not None:
            self.last = max(self.last, message_id)
        return message_id


INSERT_MESSAGES = insert(MESSAGES).returning(MESSAGES.c.id, sort_by_parameter_order=True)
# which of a batch's new sessions are stored already (SQLite, in the batch's transaction)
EXISTING_SESSIONS = f"SELECT id FROM {SESSIONS.name} WHERE id IN ({{keys}})"
MAX_MESSAGE_ID = select(func.coalesce(func.max(MESSAGES.c.id), 0))


class _RunInsert:
    """The rows of one new run (its session when new, its start messages when it starts now).

    Consecutive run inserts of one group commit share three ``executemany`` statements instead
    of costing four statements each, so a burst of new runs is written in one short transaction.
    """

    __slots__ = ("enqueued", "ids", "messages", "run_row", "session_row")

    def __init__(
        self,
        enqueued: Enqueued,
        session_row: dict[str, Any] | None,
        run_row: dict[str, Any],
        messages: list[dict[str, Any]],
        ids: MessageIds,
    ) -> None:
        self.enqueued = enqueued
        self.ids = ids
        self.session_row = session_row
        self.run_row = run_row
        self.messages = messages

    @classmethod
    def build(
        cls,
        run: RunRecord,
        *,
        owner_id: int,
        title: str,
        seq_reserve: int,
        start: tuple[dict[str, Any], dict[str, Any]] | None,
        create_session: bool,
        ids: MessageIds,
    ) -> _RunInsert:
        now = time.time()
        created = session_row = None
        if create_session:
            created = SessionRecord(
                id=run.session_id,
                owner_id=owner_id,
                title=title,
                profile=run.profile,
                model=run.model,
                created_at=run.created_at,
                updated_at=run.created_at,
                last_seq=0,
                input_tokens=0,
                output_tokens=0,
            )
            session_row = {
                "id": run.session_id,
                "owner_id": owner_id,
                "title": title,
                "profile": run.profile,
                "model": run.model,
                "created_at": run.created_at,
                "updated_at": run.created_at,
                "last_seq": seq_reserve,
                "input_tokens": 0,
                "output_tokens": 0,
            }
        run_row = {
            "id": run.id,
            "session_id": run.session_id,
            "queue_id": run.queue_id,
            "input": json.dumps(run.input, ensure_ascii=False),
            "model": run.model,
            "instructions": run.instructions,
            "profile": run.profile,
            "status": "running" if start else "queued",
            "position": run.position,
            "created_at": run.created_at,
            "started_at": now if start else None,
            "upstream_run_id": None,
            "usage": None,
            "error": None,
            "error_code": None,
            "finish_reason": None,
            "finished_at": None,
        }
        messages = [message_row(m, now) for m in start] if start is not None else []
        return cls(Enqueued(run, session=created), session_row, run_row, messages, ids)

    async def __call__(self, conn: AsyncConnection) -> Enqueued:
        return (await _RunInsert.run_many(conn, [self]))[0]

    @staticmethod
    async def run_many(conn: AsyncConnection, inserts: list[_RunInsert]) -> list[Enqueued]:
        """Insert the rows of ``inserts`` in the connection's transaction."""
        if conn.dialect.name == "sqlite":
            driver = (await conn.get_raw_connection()).driver_connection
            assert isinstance(driver, aiosqlite.Connection)  # SQLite's only async driver
            return await _RunInsert._run_many_in_thread(conn, driver, inserts)
        sessions = [i.session_row for i in inserts if i.session_row is not None]
        if sessions:
            await conn.execute(INSERT_SESSION, sessions)
        await conn.execute(INSERT_RUN, [i.run_row for i in inserts])
        rows = [m for i in inserts for m in i.messages]
        ids = [row[0] for row in await conn.execute(INSERT_MESSAGES, rows)] if rows else []
        for i in inserts:
            if i.messages:
                user_id, assistant_id = ids[0], ids[1]
                del ids[:2]
                i.enqueued.started = (int(user_id), int(assistant_id))
        return [i.enqueued for i in inserts]

    @staticmethod
    async def _run_many_in_thread(
        conn: AsyncConnection, driver: aiosqlite.Connection, inserts: list[_RunInsert]
    ) -> list[Enqueued]:
        """``run_many`` for aiosqlite in one trip to its thread.

        Through SQLAlchemy each statement costs three or four trips (cursor, execute, fetch,
        close), and each trip waits for a turn of the event loop: under a burst of new runs
        that wait, not SQLite, was most of a new run's time to its first token. The statements
        are SQLAlchemy's own, compiled once for this dialect.
        """
        ids = inserts[0].ids
        if ids.last is None:
            await ids.read(conn)
        op, finish = _RunInsert.plan(conn.dialect, inserts)
        (clashed,) = await _in_thread(conn, driver, [op], ids)
        return finish(clashed)

    @staticmethod
    def plan(
        dialect: Any, inserts: list[_RunInsert]
    ) -> tuple[_Op, Callable[[Any], list[Enqueued]]]:
        """The database-thread step that inserts ``inserts`` on SQLite, and what turns its
        result (the indices of clashing sessions) into their ``Enqueued``s."""
        # SQLite cannot order RETURNING rows of a multi-row insert: the transaction holds the
        # write lock, so the next message ids are ours to assign (a clash leaves a gap)
        rows = sum(len(i.messages) for i in inserts)
        next_id = inserts[0].ids.take(rows) if rows else 0
        plan: list[tuple[dict[str, Any] | None, dict[str, Any], list[dict[str, Any]]]] = []
        for i in inserts:
            messages = [{**m, "id": next_id + k} for k, m in enumerate(i.messages)]
            next_id += len(messages)
            plan.append((i.session_row, i.run_row, messages))
        sql = _sqlite_sql(dialect, plan)

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


class _FlushWrite:
    """A flush batch's statements, each an ``executemany`` over its rows (see ``Store.write``);
    on SQLite they are written in one trip to the database thread."""

    __slots__ = ("steps",)

    def __init__(self, steps: list[tuple[str, list[dict[str, Any]]]]) -> None:
        self.steps = [(name, rows) for name, rows in steps if rows]

    async def __call__(self, conn: AsyncConnection) -> None:
        for name, rows in self.steps:
            await conn.execute(_BULK_STATEMENTS[name], rows)

    def prepare(self, dialect: Any) -> _Op:
        steps = []
        for name, rows in self.steps:
            text, order = _compiled(dialect, name, tuple(rows[0]))
            steps.append((text, [[row[k] for k in order] for row in rows]))
        return ("steps", steps)


# A step run in the database thread: ("runs", sql, plan) inserts new runs (its result is the
# set of clashing sessions), ("steps", [(sql, rows), …]) runs ``executemany``s (result None).
_Op = tuple[Any, ...]


async def _in_thread(
    conn: AsyncConnection,
    driver: aiosqlite.Connection,
    ops: list[_Op],
    ids: MessageIds,
) -> list[Any]:
    """Run ``ops`` in one trip to aiosqlite's thread, in the connection's transaction;
    sqlite3 errors come back as SQLAlchemy's."""
    try:
        # aiosqlite runs a function in its thread with ``_execute`` (as its own methods do)
        return cast(
            list[Any],
            await driver._execute(_run_ops, driver._conn, ops, False),  # type: ignore[no-untyped-call]
        )
    except sqlite3.Error as exc:
        raise _database_error(exc, conn.dialect, ids) from None


def _database_error(exc: sqlite3.Error, dialect: Any, ids: MessageIds) -> DBAPIError:
    """What SQLAlchemy would have raised for ``exc`` (IntegrityError, …)."""
    if "messages.id" in str(exc):
        ids.forget()  # another process wrote messages: read the highest again
    return cast(
        DBAPIError,
        DBAPIError.instance("(one-trip write)", None, exc, sqlite3.Error, dialect=dialect),
    )


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
        MESSAGES.c.id > bindparam("after_id"),
        MESSAGES.c.id < bindparam("before_id"),
        # constants written out, so the statement compiles once with no expanding parameters
        MESSAGES.c.role.in_([literal_column("'user'"), literal_column("'assistant'")]),
        MESSAGES.c.content != literal_column("''"),
    )
    .order_by(MESSAGES.c.id)
)
_READS = {"snapshot": LATEST_SNAPSHOT, "history": HISTORY}


@functools.cache
def _compiled_read(dialect: Any, name: str) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """A read's SQL for ``dialect``, the order of its parameters and their fixed values."""
    compiled = _READS[name].compile(dialect=dialect)
    return str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params)


def _read_context(
    db: sqlite3.Connection,
    snapshot_sql: tuple[str, tuple[str, ...], dict[str, Any]],
    history_sql: tuple[str, tuple[str, ...], dict[str, Any]],
    session_id: str,
    before_id: int,
) -> tuple[dict[str, Any] | None, list[tuple[int, str, str, int | None]]]:
    """Runs in the database thread: the newest snapshot (as a column mapping) and the history
    rows after it."""
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


def _snapshot(m: Any) -> SnapshotRecord:
    return SnapshotRecord(
        session_id=m["session_id"],
        summary=m["summary"],
        last_message_id=m["last_message_id"],
        message_count=m["message_count"],
        covered_tokens=m["covered_tokens"],
        summary_tokens=m["summary_tokens"],
        created_at=m["created_at"],
    )


_BULK_STATEMENTS: dict[str, Any] = {
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


@functools.cache
def _compiled(dialect: Any, name: str, keys: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """A statement's SQL for ``dialect`` and the order of its parameters (compiled once)."""
    compiled = _BULK_STATEMENTS[name].compile(dialect=dialect, column_keys=list(keys))
    return str(compiled), tuple(compiled.positiontup or ())


def _sqlite_sql(
    dialect: Any, plan: list[tuple[dict[str, Any] | None, dict[str, Any], list[dict[str, Any]]]]
) -> dict[str, tuple[str, tuple[str, ...]]]:
    session = next((s for s, _, _ in plan if s is not None), None)
    message = next((m[0] for _, _, m in plan if m), None)
    sql = {"run": _compiled(dialect, "run", tuple(plan[0][1]))}
    if session is not None:
        sql["session"] = _compiled(dialect, "session", tuple(session))
    if message is not None:
        sql["message"] = _compiled(dialect, "message", tuple(message))
    return sql


_Batch = list[tuple[Callable[[AsyncConnection], Awaitable[Any]], asyncio.Future[Any]]]


def _one_trip_ops(
    dialect: Any, fns: list[Callable[[AsyncConnection], Awaitable[Any]]]
) -> tuple[list[_Op], list[Callable[[Any], list[Any]]]]:
    """The database-thread steps of a one-trip batch (consecutive new runs share one), and
    what turns each step's result into its writes' results."""
    ops: list[_Op] = []
    finishers: list[Callable[[Any], list[Any]]] = []
    i = 0
    while i < len(fns):
        fn = fns[i]
        if isinstance(fn, _FlushWrite):
            ops.append(fn.prepare(dialect))
            finishers.append(lambda _: [None])
            i += 1
            continue
        j = i
        while j < len(fns) and isinstance(fns[j], _RunInsert):
            j += 1
        op, finish = _RunInsert.plan(dialect, cast(list[_RunInsert], fns[i:j]))
        ops.append(op)
        finishers.append(finish)
        i = j
    return ops, finishers


def _run_ops(db: sqlite3.Connection, ops: list[_Op], commit: bool) -> list[Any]:
    """Runs in the database thread: each step in order (in multi-row statements, see
    ``db.bulk``), then with ``commit`` a commit (or a rollback when anything failed)."""

    def run() -> list[Any]:
        if not db.in_transaction:
            # the write lock from the start: the clash check of new sessions reads inside it
            db.execute("BEGIN IMMEDIATE")
        results: list[Any] = []
        for op in ops:
            if op[0] == "runs":
                results.append(_insert_run_rows(db, op[1], op[2]))
            else:
                for text, rows in op[1]:
                    execute_rows(db, text, rows)
                results.append(None)
        return results

    if not commit:
        return run()
    try:
        results = run()
        db.commit()
    except BaseException:
        db.rollback()
        raise
    return results


def _insert_run_rows(
    db: sqlite3.Connection,
    sql: dict[str, tuple[str, tuple[str, ...]]],
    plan: list[tuple[dict[str, Any] | None, dict[str, Any], list[dict[str, Any]]]],
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


async def _run_batch(
    conn: AsyncConnection, fns: list[Callable[[AsyncConnection], Awaitable[Any]]]
) -> list[Any]:
    """Run a group commit's writes in order; consecutive run inserts go in bulk."""
    results: list[Any] = []
    i = 0
    while i < len(fns):
        j = i
        while j < len(fns) and isinstance(fns[j], _RunInsert):
            j += 1
        if j - i > 1:
            results.extend(await _RunInsert.run_many(conn, cast(list[_RunInsert], fns[i:j])))
            i = j
        else:
            results.append(await fns[i](conn))
            i += 1
    return results


def message_row(message: dict[str, Any], now: float) -> dict[str, Any]:
    """A full ``messages`` row: the given fields over the defaults."""
    values = {
        "content": "",
        "reasoning": "",
        "tool_calls": None,
        "tool_call_id": None,
        "tool_name": None,
        "token_count": None,
        "finish_reason": None,
        "run_id": None,
        "created_at": now,
        **message,
        "updated_at": now,
    }
    values["tool_calls"] = dump_json(values["tool_calls"])
    return values
