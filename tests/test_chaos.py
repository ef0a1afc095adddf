"""Chaos: seeded random trials of clients that disconnect, refresh and replay at random moments,
second tabs, aborts and queue cancels at random times, and an upstream that drops, fails and
stalls — then invariants checked against the database and what the upstream sent.

``CHATRUN_CHAOS_SEED`` and ``CHATRUN_CHAOS_TRIALS`` (default 150) reproduce or lengthen a run
(a soak: ``CHATRUN_CHAOS_TRIALS=2000``).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from typing import Any

import pytest

from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import ChatrunServer, ServerFactory, Tab, TabFactory, until, until_async

SEED = int(os.environ.get("CHATRUN_CHAOS_SEED", "20261122"))
TRIALS = int(os.environ.get("CHATRUN_CHAOS_TRIALS", "150"))
TERMINALS = ("run.completed", "run.failed", "run.cancelled")


class Upstream:
    """The fake's behaviour per run, drawn from the trial's random source."""

    def __init__(self) -> None:
        self.plans: dict[str, tuple[list[str], str, float]] = {}  # input -> (tokens, end, delay)
        self.faults: Counter[str] = Counter()

    def plan(self, rng: random.Random, key: str) -> None:
        tokens = [f"<{key}:{i}>" for i in range(rng.randint(3, 25))]
        end = rng.choices(["complete", "drop", "fail", "stall"], weights=[70, 10, 12, 8])[0]
        self.plans[key] = (tokens, end, rng.choice([0.0, 0.001, 0.004]))

    async def script(self, run: FakeRun) -> None:
        tokens, end, delay = self.plans[str(run.body["input"])]
        cut = len(tokens) // 2 if end != "complete" else len(tokens)
        for token in tokens[:cut]:
            await run.delta(token)
            if delay:
                await asyncio.sleep(delay)
        self.faults[end] += 1
        if end == "complete":
            await run.complete()
        elif end == "drop":
            await run.drop()
        elif end == "fail":
            await run.fail("injected failure")
        else:
            await asyncio.sleep(30)  # silent: the idle timeout ends it (or an abort)


class Client:
    """A browser tab that may disconnect and come back (replay) or refresh (snapshot)."""

    def __init__(self, url: str, session_id: str) -> None:
        self.url = url
        self.session_id = session_id
        self.tabs: list[tuple[Tab, int | None]] = []  # (tab, last_seq it resumed from)
        self.last_seq = 0

    async def open(self, replay: bool) -> None:
        tab = Tab(self.url)
        await tab.connect()
        since = self.seen() if replay and self.tabs else None
        self.tabs.append((tab, since))
        payload: dict[str, Any] = {"session_id": self.session_id}
        if since is not None:
            payload["last_seq"] = since
        ack = await tab.call("resume", payload)
        assert ack["ok"], ack

    def seen(self) -> int:
        tab = self.tabs[-1][0]
        seqs = [d["seq"] for n, d in tab.events if d.get("session_id") == self.session_id]
        seqs += [self.tabs[-1][1] or 0]
        return int(max(seqs))

    async def close(self) -> None:
        if self.tabs:
            await self.tabs[-1][0].close()

    def transcript(self) -> dict[str, str]:
        """What this client shows: each snapshot resets it, events apply in seq order."""
        text: dict[str, str] = {}
        last = 0
        for tab, since in self.tabs:
            for name, data in tab.events:
                if data.get("session_id") != self.session_id:
                    continue
                if name == "resumed":
                    if data.get("replay"):
                        assert since is not None and last >= since
                        continue
                    text = {}
                    for m in data["messages"]:
                        if m["role"] == "assistant" and m.get("run_id"):
                            text[m["run_id"]] = m["content"]
                    last = data["seq"]
                    continue
                seq = data.get("seq")
                if seq is None or seq <= last:
                    continue
                assert seq == last + 1, f"gap or duplicate: {last} -> {seq}"
                last = seq
                if name == "message.delta":
                    text[data["run_id"]] = text.get(data["run_id"], "") + data["delta"]
        return text


async def trial(
    rng: random.Random, srv: ChatrunServer, upstream: Upstream, witness: Tab, probe: Tab, n: int
) -> Counter[str]:
    session = f"chaos-{n}"
    runs = rng.randint(1, 3)
    keys = [f"{n}.{i}" for i in range(runs)]
    for key in keys:
        upstream.plan(rng, key)
    acks = []
    for i, key in enumerate(keys):
        ack = await witness.call("run", {"session_id": session, "input": key, "queue_id": f"q{i}"})
        assert ack["ok"], ack
        acks.append(ack)
    client = Client(srv.url, session)
    actions: Counter[str] = Counter()

    async def flaky() -> None:
        await client.open(replay=False)
        for _ in range(rng.randint(0, 3)):
            await asyncio.sleep(rng.uniform(0, 0.05))
            await client.close()
            replay = rng.random() < 0.6
            actions["replay" if replay else "refresh"] += 1
            await client.open(replay=replay)

    async def meddle() -> None:
        await asyncio.sleep(rng.uniform(0, 0.04))
        if len(acks) > 1 and rng.random() < 0.3:
            actions["cancel_queued"] += 1
            await witness.call(
                "cancel_queued_run", {"session_id": session, "queue_id": acks[-1]["queue_id"]}
            )
        await asyncio.sleep(rng.uniform(0, 0.04))
        if rng.random() < 0.3:
            actions["abort"] += 1
            await witness.call("abort", {"session_id": session})

    await asyncio.gather(flaky(), meddle())

    async def settled() -> bool:
        """The session works on nothing and queues nothing (a resume says so), every run the
        witness saw start has ended, and the database holds the end of every run."""
        await probe.call("resume", {"session_id": session})
        resumed = probe.named("resumed", session)[-1]
        await probe.call("leave", {"session_id": session})
        if resumed["isWorking"] or resumed["queueLength"]:
            return False
        ended = {d.get("run_id") for e, d in witness.events if e in TERMINALS}
        started = {d["run_id"] for e, d in witness.events if e == "run.started"}
        unsettled = "SELECT id FROM runs WHERE session_id = ? AND status IN ('running', 'queued')"
        return started <= ended and not srv.query(unsettled, session)

    await until_async(settled, timeout=20, what=f"trial {n} never settled")
    # the last events reach the flaky tab, and the last flush the database
    last = max(witness.seqs(session), default=0)
    await until(lambda: client.seen() >= last, what=f"trial {n}: the flaky tab lags")
    await until(
        lambda: stored_answers(srv, session).items() >= witnessed_answers(witness, session).items(),
        what=f"trial {n}: the last flush never came",
    )
    check(srv, upstream, witness, client, session, acks)
    await client.close()
    return actions


def stored_answers(srv: ChatrunServer, session: str) -> dict[str, str]:
    """The answers of the session's runs as the database holds them."""
    return {
        r["run_id"]: r["content"]
        for r in srv.query(
            "SELECT run_id, content FROM messages WHERE session_id = ? AND role = 'assistant'",
            session,
        )
    }


def witnessed_answers(witness: Tab, session: str) -> dict[str, str]:
    """The answers of the runs the witness saw start, as it saw them."""
    started = [d["run_id"] for d in witness.named("run.started", session)]
    return {run_id: witness.text(run_id) for run_id in started}


def check(
    srv: ChatrunServer,
    upstream: Upstream,
    witness: Tab,
    client: Client,
    session: str,
    acks: list[dict[str, Any]],
) -> None:
    mine = [(e, d) for e, d in witness.events if d.get("session_id") == session]
    seqs = [d["seq"] for _, d in mine if "seq" in d]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "witness saw a gap or a repeat"
    started = [d["run_id"] for e, d in mine if e == "run.started"]
    terminals = Counter(d["run_id"] for e, d in mine if e in TERMINALS)
    for run_id in started:
        assert terminals[run_id] == 1, f"run {run_id}: {terminals[run_id]} terminal events"
    rows = {
        r["id"]: r
        for r in srv.query(
            "SELECT id, status, input, started_at FROM runs WHERE session_id = ?", session
        )
    }
    assert not [r for r in rows.values() if r["status"] in ("running", "queued")]
    # FIFO: runs left the queue in the order they were accepted (the ones cancelled while
    # queued never did); each that left it ended exactly once, started upstream or not
    accepted = [a["run_id"] for a in acks if rows[a["run_id"]]["started_at"] is not None]
    left: list[str] = []
    for e, d in mine:
        if (e == "run.started" or e in TERMINALS) and d["run_id"] not in left:
            left.append(d["run_id"])
    assert left == accepted
    assert all(terminals[run_id] == 1 for run_id in accepted)
    answers = stored_answers(srv, session)
    shown = client.transcript()
    for run_id in started:
        sent = "".join(upstream.plans[rows[run_id]["input"].strip('"')][0])
        stored = answers[run_id]
        seen = witness.text(run_id)
        assert stored == seen, f"run {run_id}: stored text differs from what the client saw"
        assert sent.startswith(stored), f"run {run_id}: stored text is not what was sent"
        if rows[run_id]["status"] == "completed":
            assert stored == sent
        assert shown.get(run_id, "") == stored, f"run {run_id}: the flaky tab shows other text"


@pytest.mark.timeout(600)
async def test_chaos(
    make_server: ServerFactory, hermes: FakeHermes, tab_factory: TabFactory
) -> None:
    rng = random.Random(SEED)
    upstream = Upstream()
    hermes.script = upstream.script
    srv = await make_server(
        upstream_url=hermes.url, upstream_idle_timeout_s=0.3, abort_grace_ms=300
    )
    witness, probe = await tab_factory(srv), await tab_factory(srv)
    actions: Counter[str] = Counter()
    for n in range(TRIALS):
        actions += await trial(rng, srv, upstream, witness, probe, n)
    await witness.close()
    await srv.stop()
    assert srv.stored.integrity() == "ok"
    print(
        f"\nchaos: seed {SEED}, {TRIALS} trials, upstream endings {dict(upstream.faults)}, "
        f"client actions {dict(actions)}, failures 0"
    )
