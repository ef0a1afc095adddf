"""Events about a session itself: every tab of its owner learns at once that it was deleted or
renamed (``session.deleted``, ``session.renamed``, outside the numbered log); ``resumed``
repeats the context gauge; titles and previews are plain text; a failed answer keeps its code."""

from __future__ import annotations

from typing import Any

from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import BOB_TOKEN, TOKEN, ChatrunServer, Tab, TabFactory


def about(tab: Tab, name: str, session_id: str) -> list[dict[str, Any]]:
    return tab.named(name, session_id)


async def test_a_delete_reaches_every_tab_of_the_owner_once_and_unnumbered(
    server: ChatrunServer, tab_factory: TabFactory
) -> None:
    showing = await tab_factory()  # shows the chat (in its room)
    other = await tab_factory()  # the same user, another chat open
    bob = await tab_factory(token=BOB_TOKEN)
    await showing.run_to_end("doomed", "hello")
    await other.run_to_end("kept", "hi")
    status, body = await server.request("DELETE", "/api/sessions/doomed", token=TOKEN)
    assert status == 200, body
    for t in (showing, other):
        event = await t.wait_event("session.deleted", session_id="doomed")
        assert event == {"event": "session.deleted", "session_id": "doomed"}  # no seq
    await showing.run_to_end("kept2", "after")  # later events come after the delete's
    assert len(about(showing, "session.deleted", "doomed")) == 1  # in both rooms, told once
    assert len(about(other, "session.deleted", "doomed")) == 1
    assert about(bob, "session.deleted", "doomed") == []
    # the room is closed: a new session under the same id is not shown to the old tab
    await other.run_to_end("doomed", "a new chat with an old id")
    assert len(about(showing, "run.started", "doomed")) == 1


async def test_a_rename_reaches_every_tab_and_does_not_take_a_seq(
    server: ChatrunServer, tab_factory: TabFactory
) -> None:
    showing = await tab_factory()
    other = await tab_factory()
    await showing.run_to_end("named", "first question")
    before = showing.seqs("named")
    status, body = await server.request(
        "PATCH", "/api/sessions/named", token=TOKEN, body={"title": "  A better name "}
    )
    assert status == 200 and body["session"]["title"] == "A better name"
    for t in (showing, other):
        event = await t.wait_event("session.renamed", session_id="named")
        assert event == {
            "event": "session.renamed",
            "session_id": "named",
            "title": "A better name",
        }
    await showing.run_to_end("named", "second question")
    seqs = showing.seqs("named")
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > len(before)
    mark = len(other.events)
    ack = await other.call("resume", {"session_id": "named", "last_seq": 0})
    assert ack["ok"] and ack["seq"] == 0  # a replay of the whole log
    replayed = [(e, d) for e, d in other.events[mark:] if d.get("session_id") == "named"]
    assert replayed[0][0] == "resumed" and replayed[0][1]["replay"] is True
    assert [d["seq"] for _, d in replayed[1:]] == seqs  # the rename is not in the log
    assert "session.renamed" not in [e for e, _ in replayed]


async def test_another_users_rename_or_delete_is_refused_and_untold(
    server: ChatrunServer, tab_factory: TabFactory
) -> None:
    alice = await tab_factory()
    await alice.run_to_end("mine", "hello")
    status, _ = await server.request(
        "PATCH", "/api/sessions/mine", token=BOB_TOKEN, body={"title": "x"}
    )
    assert status == 403
    status, _ = await server.request("DELETE", "/api/sessions/mine", token=BOB_TOKEN)
    assert status == 403
    await alice.run_to_end("mine", "still here")
    assert about(alice, "session.renamed", "mine") == []
    assert about(alice, "session.deleted", "mine") == []


async def test_resumed_repeats_the_context_gauge(server: ChatrunServer, tab: Tab) -> None:
    await tab.run_to_end("gauge", "how big is the context?")
    usage = tab.named("usage.updated", "gauge")[-1]
    assert usage["contextTokens"] > 0 and usage["contextLimit"] > 0
    await tab.call("resume", {"session_id": "gauge"})
    resumed = tab.named("resumed", "gauge")[-1]
    assert resumed["contextTokens"] == usage["contextTokens"]
    assert resumed["contextLimit"] == usage["contextLimit"]
    assert resumed["inputTokens"] == usage["inputTokens"]
    await tab.call("resume", {"session_id": "nothing-here"})
    unknown = tab.named("resumed", "nothing-here")[-1]
    assert "contextTokens" not in unknown and "contextLimit" not in unknown


async def test_titles_and_previews_are_plain_text(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def markdown_answer(run: FakeRun) -> None:
        await run.delta("## Answer\n\nUse **`pip install`** and see [the docs](http://x.test).")
        await run.complete()

    hermes.script = markdown_answer
    await tab.run_to_end("md", "# Why does `ls` show *hidden* files?\n\n```sh\nls -a\n```")
    status, body = await server.request("GET", "/api/sessions", token=TOKEN)
    assert status == 200
    (session,) = body["sessions"]
    assert session["title"] == "Why does ls show hidden files? ls -a"
    assert session["preview"] == "Answer Use pip install and see the docs."
    status, body = await server.request(
        "PATCH", "/api/sessions/md", token=TOKEN, body={"title": "**kept** as typed"}
    )
    assert body["session"]["title"] == "**kept** as typed"  # a rename is taken as it is


async def test_a_failed_answer_keeps_its_code_after_a_refresh(
    server: ChatrunServer, hermes: FakeHermes, tab: Tab
) -> None:
    async def failing(run: FakeRun) -> None:
        await run.delta("partial")
        await run.fail("model crashed")

    hermes.script = failing
    _, name, failed = await tab.run_to_end("broken", "go")
    assert name == "run.failed"
    await tab.call("resume", {"session_id": "broken"})
    messages = tab.named("resumed", "broken")[-1]["messages"]
    answer = [m for m in messages if m["role"] == "assistant"][-1]
    assert answer["error"] == failed["error"] and answer["error_code"] == failed["code"]
    question = [m for m in messages if m["role"] == "user"][-1]
    assert "error_code" not in question
