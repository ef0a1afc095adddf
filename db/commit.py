"""The group commit: every write of the store goes through one writer, which runs the writes
queued while the previous commit was in progress in a single transaction."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from db.sqlite.ids import MessageIds
from db.sqlite.onetrip import OneTrip
from db.writes import RunInsert

T = TypeVar("T")
Write = Callable[[AsyncConnection], Awaitable[Any]]
Batch = list[tuple[Write, asyncio.Future[Any]]]
MAX_BATCH = 500  # writes per group commit


class GroupCommit:
    """A burst of writes costs a few commits instead of one each. If a batch fails, it is
    rolled back and committed again in halves, down to the single write that fails, so only
    that one fails.

    A write finishes even when its caller is cancelled (a transaction cut off by cancellation
    would leave SQLite's write lock behind a half-closed connection): the caller waits on a
    future of its own, which a cancellation cancels, while the writer runs the write regardless
    (``asyncio.shield`` would cost one more turn of the event loop to relay the result).
    """

    def __init__(
        self, engine: AsyncEngine, one_trip: OneTrip | None, ids: MessageIds | None
    ) -> None:
        self._engine = engine
        self._one_trip = one_trip
        self._ids = ids  # SQLite: message ids counted here, read again after other writes
        self._pending: Batch = []
        self._writer: asyncio.Future[None] | None = None
        self._arrived = asyncio.Event()  # a write was queued (wakes a waiting writer)
        self.transactions = 0  # write transactions committed (a metric)

    async def transact(self, fn: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``fn`` in a write transaction and return its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((fn, future))
        self._arrived.set()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_batches())
        return await future

    async def close(self) -> None:
        """Wait for the queued writes to land."""
        if self._writer is not None:
            await asyncio.shield(self._writer)

    async def _write_batches(self) -> None:
        """Commit the queued writes, batch by batch.

        Batches of new runs only, written in one trip, do not wait for each other: each goes to
        the database as soon as it is taken, so the second batch of a burst is not held up by
        the turn of the event loop that the first one's answer waits for (SQLite still writes
        them one after the other). A write waits for its own earlier ones (its caller awaits
        each), so no batch depends on one still in flight. Any other batch waits until those in
        flight are committed.
        """
        inflight: set[asyncio.Future[Any]] = set()
        while self._pending or inflight:
            if self._pending:
                batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                fns = [fn for fn, _ in batch]
                one_trip = self._one_trip is not None and self._one_trip.accepts(fns)
                if one_trip and all(isinstance(fn, RunInsert) for fn in fns):
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

    async def _commit(self, batch: Batch) -> None:
        """Commit a batch through SQLAlchemy."""
        try:
            async with self._engine.begin() as conn:
                results = await _run_batch(conn, [fn for fn, _ in batch])
                if self._ids is not None:
                    await self._ids.catch_up(conn)  # these writes chose message ids of their own
        except Exception:
            await self._failed(batch, sys.exc_info()[1], self._commit)
            return
        self._committed(batch, results)

    def _commit_in_one_trip(self, batch: Batch) -> asyncio.Future[None]:
        """Hand a batch to the SQLite writer thread at once; the future is done when the batch
        is committed, or failed as ``_commit`` fails."""
        assert self._one_trip is not None
        landed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(results: list[Any] | None, error: BaseException | None) -> None:
            if error is None:
                assert results is not None
                self._committed(batch, results)
                landed.set_result(None)
                return
            if len(batch) == 1:  # (a batch that could not be prepared fails here too)
                _settle(batch[0][1], exc=error)
                landed.set_result(None)
                return
            retry = asyncio.ensure_future(self._failed(batch, error, self._one_trip_again))
            retry.add_done_callback(lambda _: landed.set_result(None))

        self._one_trip.commit([fn for fn, _ in batch], done)
        return landed

    async def _one_trip_again(self, batch: Batch) -> None:
        if self._one_trip is not None and self._one_trip.accepts([fn for fn, _ in batch]):
            await self._commit_in_one_trip(batch)
        else:  # the message ids must be read again first
            await self._commit(batch)

    async def _failed(
        self,
        batch: Batch,
        error: BaseException | None,
        commit: Callable[[Batch], Awaitable[None]],
    ) -> None:
        if len(batch) == 1:
            _settle(batch[0][1], exc=error)
            return
        middle = len(batch) // 2
        await commit(batch[:middle])
        await commit(batch[middle:])

    def _committed(self, batch: Batch, results: Sequence[Any]) -> None:
        self.transactions += 1
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)


async def _run_batch(conn: AsyncConnection, fns: list[Write]) -> list[Any]:
    """Run a group commit's writes in order; consecutive run inserts go in bulk."""
    results: list[Any] = []
    i = 0
    while i < len(fns):
        j = i
        while j < len(fns) and isinstance(fns[j], RunInsert):
            j += 1
        if j - i > 1:
            results.extend(await RunInsert.run_many(conn, cast(list[RunInsert], fns[i:j])))
            i = j
        else:
            results.append(await fns[i](conn))
            i += 1
    return results


def _settle(
    future: asyncio.Future[Any], *, result: Any = None, exc: BaseException | None = None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
