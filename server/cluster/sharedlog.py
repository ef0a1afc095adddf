"""The shared event log: a Redis stream per session holding its numbered events, so that any
node can replay them and a node taking a session over continues its ``seq``.

An entry's id is ``<seq>-0``, so Redis itself refuses a ``seq`` that is not above the last
one. Appends are fenced: a session's fence key holds the fence of its current owner (set by
the owner when it takes the session, only ever raised), and an append with another fence is
refused, so a node that lost the session can add nothing a client would see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from server.errors import Fenced

_APPEND = """
local f = redis.call('GET', KEYS[2])
if f ~= ARGV[1] then return redis.error_reply('FENCED ' .. (f or 'none')) end
local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local first = tonumber(ARGV[4])
if top[1] and tonumber(string.match(top[1][1], '^(%d+)')) >= first then
  return redis.error_reply('SEQ ' .. top[1][1])
end
for i = 5, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], ARGV[i] .. '-0', 'e', ARGV[i + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return (#ARGV - 4) / 2
"""

_RAISE_FENCE = """
local f = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) < f then return f end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return tonumber(ARGV[1])
"""


@dataclass(frozen=True, slots=True)
class Tail:
    """A session's log: its last ``seq`` and the events from ``since`` on, encoded."""

    seq: int
    events: list[tuple[int, str]]


class SharedLog:
    def __init__(self, client: aioredis.Redis, prefix: str, retained: int, ttl_s: float) -> None:
        self._redis = client
        self._prefix = prefix
        self._retained = retained
        self._ttl_ms = int(ttl_s * 1000)
        self._append = client.register_script(_APPEND)
        self._raise_fence = client.register_script(_RAISE_FENCE)

    def _key(self, session_id: str) -> str:
        return f"{self._prefix}:log:{session_id}"

    def _fence_key(self, session_id: str) -> str:
        return f"{self._prefix}:fence:{session_id}"

    async def take(self, session_id: str, fence: int) -> None:
        """Make ``fence`` the session's log fence (a new owner, after its database claim);
        ``Fenced`` when a higher one is there already."""
        now = int(
            await self._raise_fence(keys=[self._fence_key(session_id)], args=[fence, self._ttl_ms])
        )
        if now != fence:
            raise Fenced(f"session {session_id} is held with fence {now} now")

    async def append(self, session_id: str, fence: int, events: list[tuple[int, str]]) -> None:
        """Add numbered events (ascending ``seq``, each above the log's last) under ``fence``."""
        if not events:
            return
        args: list[str | int] = [fence, self._retained, self._ttl_ms, events[0][0]]
        for seq, encoded in events:
            args += [seq, encoded]
        try:
            await self._append(keys=[self._key(session_id), self._fence_key(session_id)], args=args)
        except ResponseError as exc:
            text = str(exc)
            if text.startswith(("FENCED", "SEQ")):
                raise Fenced(f"session {session_id}: the shared log refused: {text}") from None
            raise

    async def since(self, session_id: str, last_seq: int, current_seq: int) -> list[str] | None:
        """Encoded events with ``seq > last_seq`` up to ``current_seq``, or None when the log
        does not hold them all."""
        if last_seq > current_seq:
            return None
        if last_seq == current_seq:
            return []
        entries = await self._range(session_id, f"{last_seq + 1}-0", f"{current_seq}-0")
        if len(entries) != current_seq - last_seq:
            return None
        return [_text(fields[b"e"]) for _id, fields in entries]

    async def tail(self, session_id: str, since: int = 0) -> Tail:
        """The log's last ``seq`` (0: empty or gone) and its events after ``since``."""
        entries = await self._range(session_id, f"{since + 1}-0", "+")
        events = [(_seq(entry_id), _text(fields[b"e"])) for entry_id, fields in entries]
        if events:
            return Tail(events[-1][0], events)
        top: list[Any] = list(
            await self._redis.xrevrange(self._key(session_id), "+", "-", count=1) or []
        )
        return Tail(_seq(top[0][0]) if top else 0, [])

    async def _range(self, session_id: str, first: str, last: str) -> list[Any]:
        return list(await self._redis.xrange(self._key(session_id), first, last) or [])

    async def drop(self, session_id: str) -> None:
        await self._redis.delete(self._key(session_id))


def _seq(entry_id: bytes | str) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[0])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
