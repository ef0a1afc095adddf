"""Fuzzing every socket event and REST endpoint with hostile input (hypothesis): wrong types,
missing and extra fields, huge strings, deep nesting, odd unicode (lone surrogates, NUL, RTL),
binary attachments. Always a clear error ack or a 4xx, never an error in the server log, and
nothing in the database changes.

The server runs on its own event loop in a thread; each example is sent from the test through
real clients on that loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from server.upstream.configs import EDITABLE
from tests.databases import StoredDatabase
from tests.fakes.hermes import FakeHermes
from tests.helpers import TOKEN, ChatrunServer, Tab, make_settings

T = TypeVar("T")
IDENTIFIER = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
ADMIN = "fuzz-admin-token"
EXAMPLES = settings(
    max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
ADMIN_FIELDS = {"name", *EDITABLE}
CODES = {"bad_request", "too_large", "not_found", "forbidden", "rate_limited", "unauthorized"}

odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["\ud800", "a\x00b", "\u202eevil", "\ufeff", "\U0001d54f" * 50, "", " ", "../.."]
    ),
    st.text(min_size=3000, max_size=3000, alphabet="x"),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    odd_text,
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
deep: Any = [[[[[[[[[[[[[[[[[[[["deep"]]]]]]]]]]]]]]]]]]]]
bad_ids = st.one_of(
    st.text(max_size=200).filter(lambda s: not IDENTIFIER.fullmatch(s)),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
    st.just(deep),
    st.binary(max_size=16),
)
KNOWN = {"session_id", "input", "queue_id", "last_seq", "model", "instructions", "title"}
extra: st.SearchStrategy[dict[str, Any]] = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in KNOWN), junk, max_size=3
)


def with_bad(
    field: str, value: st.SearchStrategy[Any], *, optional: bool = False, **valid: Any
) -> st.SearchStrategy[Any]:
    """An otherwise valid payload whose ``field`` is bad (or, when required, missing)."""
    return st.builds(
        lambda v, more, missing: {
            **more,
            **valid,
            **({} if missing and not optional else {field: v}),
        },
        value,
        extra,
        st.booleans(),
    )


PAYLOADS: dict[str, st.SearchStrategy[Any]] = {
    "run": st.one_of(
        junk.filter(lambda p: not isinstance(p, dict)),
        with_bad("session_id", bad_ids, input="hi"),
        with_bad(
            "input",
            st.one_of(
                st.integers(),
                st.none(),
                st.just(deep),
                st.lists(junk, min_size=1, max_size=3),
                st.just([{"type": "text", "text": 5}]),
                st.binary(max_size=8),
                st.just(""),
            ),
            session_id="fuzz",
        ),
        with_bad(
            "queue_id",
            bad_ids.filter(lambda v: v is not None),
            optional=True,
            session_id="f",
            input="x",
        ),
        with_bad(
            "model",
            st.one_of(st.integers(), st.just(deep)),
            optional=True,
            session_id="f",
            input="x",
        ),
    ),
    "resume": st.one_of(
        junk.filter(lambda p: not isinstance(p, dict)),
        with_bad("session_id", bad_ids),
        with_bad(
            "last_seq",
            st.one_of(st.integers(max_value=-1), st.text(), st.floats(), st.just(2**60)),
            optional=True,
            session_id="fuzz",
        ),
    ),
    "cancel_queued_run": st.one_of(
        junk, with_bad("queue_id", bad_ids.filter(lambda v: v is not None), session_id="f")
    ),
    "abort": st.one_of(
        junk.filter(lambda p: not isinstance(p, dict)), with_bad("session_id", bad_ids)
    ),
    "leave": st.one_of(
        junk.filter(lambda p: not isinstance(p, dict)), with_bad("session_id", bad_ids)
    ),
    "compact": st.one_of(
        junk.filter(lambda p: not isinstance(p, dict)), with_bad("session_id", bad_ids)
    ),
    "no_such_event": junk,
}


class Background:
    """The server, a client tab and an HTTP session on an event loop of their own."""

    def __init__(self, tmp: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.tmp = tmp
        self.errors: list[logging.LogRecord] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def start(self) -> None:
        # Not the ``make_server`` fixture: this server lives on the thread's loop for the whole
        # module (hypothesis drives the examples from plain functions).
        self.hermes = FakeHermes()
        await self.hermes.start()
        settings = make_settings(
            self.tmp / "data", self.hermes.url, admin_token=ADMIN, max_input_chars=2000
        )
        self.server = ChatrunServer(settings, StoredDatabase(settings.resolved_database_url))
        await self.server.start()
        self.tab = Tab(self.server.url)
        await self.tab.connect()
        ack = await self.tab.call("run", {"session_id": "known", "input": "hi"})
        await self.tab.wait_event("run.completed", run_id=ack["run_id"])
        self.http = aiohttp.ClientSession()

    async def stop(self) -> None:
        await self.http.close()
        await self.tab.close()
        await self.server.stop()
        await self.hermes.close()

    def counts(self) -> tuple[int, ...]:
        tables = ("sessions", "runs", "messages", "upstream_configs", "users")
        return tuple(self.server.query(f"SELECT count(*) FROM {t}")[0][0] for t in tables)


class ErrorLog(logging.Handler):
    def __init__(self, sink: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    background = Background(tmp_path_factory.mktemp("fuzz"))
    handler = ErrorLog(background.errors)
    logging.getLogger("chatrun").addHandler(handler)
    background.run(background.start())
    try:
        yield background
    finally:
        background.run(background.stop())
        logging.getLogger("chatrun").removeHandler(handler)
        background.loop.call_soon_threadsafe(background.loop.stop)
        background.thread.join(5)


@pytest.mark.parametrize("event", sorted(PAYLOADS))
def test_socket_events_refuse_hostile_payloads(world: Background, event: str) -> None:
    before = world.counts()

    @EXAMPLES
    @given(PAYLOADS[event])
    def check(payload: Any) -> None:
        ack = world.run(world.tab.call(event, payload))
        assert isinstance(ack, dict) and ack["ok"] is False, (payload, ack)
        assert ack["error"]["code"] in CODES and ack["error"]["message"]

    check()
    assert world.counts() == before
    assert not world.errors, [r.getMessage() for r in world.errors]
    assert world.tab.sio.connected


paths = st.one_of(
    st.text(max_size=30, alphabet=st.characters(blacklist_categories=["Cs"])),
    st.sampled_from(["%00", "..%2F..", "%E2%80%AE", "a" * 300, "known/../../x"]),
)


async def request(world: Background, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with world.http.request(method, world.server.url + path, **kwargs) as response:
        body = await response.read()
        return response.status, body


@EXAMPLES
@given(
    st.sampled_from(
        [
            ("GET", "/api/sessions?limit={}&before={}"),
            ("GET", "/api/sessions/known/messages?limit={}&before={}"),
            ("GET", "/api/sessions/{}/messages?limit=5{}"),
            ("PATCH", "/api/sessions/known{}{}"),
            ("DELETE", "/api/sessions/{}{}"),
            ("GET", "/api/admin/upstreams/{}{}"),
            ("POST", "/api/admin/upstreams{}{}"),
            ("PATCH", "/api/admin/upstreams/default{}{}"),
        ]
    ),
    paths,
    paths,
    st.one_of(junk, st.binary(max_size=64), st.just(deep)),
)
def test_rest_endpoints_refuse_hostile_input(
    world: Background, route: tuple[str, str], a: str, b: str, body: Any
) -> None:
    method, template = route
    assume(a != "known")  # the one session that exists stays
    assume(not (isinstance(body, dict) and isinstance(body.get("title"), str)))
    assume(not (isinstance(body, dict) and set(body) <= ADMIN_FIELDS))
    path = template.format(quote(a, safe="%"), quote(b, safe="%"))
    headers = {"Authorization": f"Bearer {ADMIN if '/admin/' in path else TOKEN}"}
    kwargs: dict[str, Any] = {"headers": headers}
    if method in ("POST", "PATCH"):
        kwargs["data"] = body if isinstance(body, bytes) else _json(body)
    before = world.counts()
    status, _ = world.run(request(world, method, path, **kwargs))
    if status < 400:
        # a well-formed request that happens to be valid (a listing page): nothing changes
        assert method == "GET", (method, path, body, status)
    else:
        assert 400 <= status < 500, (method, path, body, status)
    assert world.counts() == before
    assert not world.errors, [r.getMessage() for r in world.errors]


def _json(value: Any) -> bytes:
    import json

    try:
        return json.dumps(value).encode("utf-8", "surrogatepass")
    except (ValueError, TypeError):
        return b"{not json"
