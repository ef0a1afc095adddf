"""The socket shortcuts (direct packet writes through python-engineio's and python-socketio's
private parts, ``server/transport``) can be turned off, and a server streams, resumes and
replays alike with them on and off, over a websocket and over long-polling that upgrades.
The guard that decides whether they can be taken names what stands in their way."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import socketio

from server.settings import Settings
from server.transport import shortcuts
from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import (
    SHORTCUTS_ENV,
    ChatrunServer,
    ServerFactory,
    Tab,
    TabFactory,
    Transcript,
    make_settings,
    until,
)

TOKENS = [f"t{i} " for i in range(150)]
TRANSPORTS = {"websocket": ["websocket"], "upgrade": ["polling", "websocket"]}


async def steady(run: FakeRun) -> None:
    for token in TOKENS:
        await run.delta(token)
        await asyncio.sleep(0.003)
    await run.complete()


def contiguous(tab: Tab, session_id: str, first: int = 1) -> bool:
    seqs = tab.seqs(session_id)
    return seqs == list(range(first, first + len(seqs)))


@pytest.fixture(params=[True, False], ids=["shortcuts-on", "shortcuts-off"])
async def server(
    request: pytest.FixtureRequest, make_server: ServerFactory, hermes: FakeHermes
) -> ChatrunServer:
    hermes.script = steady
    return await make_server(upstream_url=hermes.url, socket_shortcuts=request.param)


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_a_run_streams_whole_and_in_order(
    server: ChatrunServer, tab_factory: TabFactory, transport: str
) -> None:
    tab = await tab_factory(transports=TRANSPORTS[transport])
    # started at once: on long-polling the first events go out while the socket upgrades
    run_id, name, _ = await tab.run_to_end("whole", "go")
    assert name == "run.completed"
    assert tab.text(run_id) == "".join(TOKENS)
    assert contiguous(tab, "whole") and tab.seqs("whole")
    await until(lambda: tab.sio.transport() == "websocket", what="never upgraded")


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_a_resume_mid_stream_then_the_live_events_make_the_whole_text(
    server: ChatrunServer, tab_factory: TabFactory, transport: str
) -> None:
    runner = await tab_factory()
    ack = await runner.call("run", {"session_id": "snap", "input": "go"})
    await runner.wait_for(lambda _: len(runner.named("message.delta")) >= 20)
    late = await tab_factory(transports=TRANSPORTS[transport])
    seq = (await late.call("resume", {"session_id": "snap"}))["seq"]
    resumed = late.named("resumed")[0]
    assert resumed["seq"] == seq and resumed["isWorking"] is True
    await late.wait_event("run.completed", run_id=ack["run_id"])
    view = Transcript(resumed)
    view.apply(late.events, "snap")  # fails on a gap
    assert view.text_by_run[ack["run_id"]] == "".join(TOKENS)
    assert contiguous(late, "snap", seq + 1)


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
async def test_a_replay_after_a_disconnect_sends_exactly_the_missed_events(
    server: ChatrunServer, tab_factory: TabFactory, transport: str
) -> None:
    first = await tab_factory(transports=TRANSPORTS[transport])
    ack = await first.call("run", {"session_id": "replay", "input": "go"})
    await first.wait_for(lambda _: len(first.named("message.delta")) >= 20)
    await first.close()
    last_seq = max(first.seqs("replay"))
    assert contiguous(first, "replay")
    back = await tab_factory(transports=TRANSPORTS[transport])
    assert await back.call("resume", {"session_id": "replay", "last_seq": last_seq}) == {
        "ok": True,
        "seq": last_seq,
    }
    assert back.named("resumed")[0]["replay"] is True
    await back.wait_event("run.completed", run_id=ack["run_id"])
    assert contiguous(back, "replay", last_seq + 1)
    assert first.text(ack["run_id"]) + back.text(ack["run_id"]) == "".join(TOKENS)


async def test_healthz_says_whether_the_shortcuts_are_in_use(
    server: ChatrunServer, make_server: ServerFactory, hermes: FakeHermes
) -> None:
    assert (await server.health())["socket_shortcuts"] is server.settings.socket_shortcuts
    assert Settings().socket_shortcuts is True  # on unless turned off
    on = await make_server(upstream_url=hermes.url, socket_shortcuts=True)
    assert (await on.health())["socket_shortcuts"] is True
    off = await make_server(upstream_url=hermes.url, socket_shortcuts=False)
    assert (await off.health())["socket_shortcuts"] is False


def test_test_servers_follow_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(SHORTCUTS_ENV, "0")
    assert make_settings(tmp_path, "http://127.0.0.1:1").socket_shortcuts is False
    monkeypatch.setenv(SHORTCUTS_ENV, "1")
    assert make_settings(tmp_path, "http://127.0.0.1:1").socket_shortcuts is True
    monkeypatch.delenv(SHORTCUTS_ENV)
    assert make_settings(tmp_path, "http://127.0.0.1:1").socket_shortcuts is True


class WithoutPrivateSend:
    """Stands in for a python-socketio ``AsyncServer`` of a version without the private
    ``_send_eio_packet``: everything else is a real server's."""

    def __init__(self) -> None:
        real = socketio.AsyncServer(async_mode="aiohttp")
        self.manager = real.manager
        self.eio = real.eio


def test_the_guard_names_a_missing_private_attribute(caplog: pytest.LogCaptureFixture) -> None:
    assert shortcuts.problems(socketio.AsyncServer(async_mode="aiohttp")) == []
    stand_in = WithoutPrivateSend()
    assert shortcuts.problems(stand_in) == ["AsyncServer._send_eio_packet is missing"]
    with caplog.at_level(logging.WARNING, logger="chatrun.transport"):
        assert shortcuts.install(stand_in, enabled=True) is False
    assert "AsyncServer._send_eio_packet is missing" in caplog.text
    assert "the libraries' own path is used" in caplog.text
