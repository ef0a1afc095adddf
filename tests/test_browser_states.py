"""Every state a chat can be in, honestly shown, in Chromium: a chat deleted or renamed in
another tab, the context gauge across a refresh, a long message read in parts, long messages
collapsed, failures that say what is wrong and can be retried, empty input, touch keyboards,
and an error that is cleared once what failed is done."""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import Browser, Page, expect

from tests.a11y import axe_violations, describe
from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import TOKEN, ChatrunServer, ServerFactory
from tests.pages import last_assistant, raw_text, send, shot, signed_in_page, words

pytestmark = pytest.mark.timeout(120)

USERS = '[data-testid="message"][data-role="user"]'


async def open_second_tab(page: Page) -> Page:
    second = await page.context.new_page()  # same storage: signed in
    await second.goto(page.url)
    await expect(second.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "connected"
    )
    return second


async def test_a_chat_deleted_in_another_tab_leaves_this_one_at_once(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    page, watch = await signed_in_page(browser, server)
    await send(page, "soon deleted")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    doomed = (await page.evaluate("window.chatrun.state"))["sessionId"]
    other = await open_second_tab(page)
    await expect(last_assistant(other)).to_have_attribute("data-status", "complete")
    await other.get_by_test_id("new-chat").click()  # the other tab shows another chat
    item = other.get_by_test_id("session-item").first
    await item.hover()
    await item.get_by_role("button", name="Delete chat soon deleted").click()
    await item.get_by_role("button", name="Confirm: delete chat soon deleted").click()
    await expect(other.get_by_test_id("session-item")).to_have_count(0)
    # the first tab is told at once, leaves the chat and says so
    notice = page.get_by_test_id("chat-notice-text")
    await expect(notice).to_have_text("The chat “soon deleted” was deleted in another tab.")
    await expect(page.get_by_test_id("session-item")).to_have_count(0)
    await expect(page.get_by_test_id("message")).to_have_count(0)
    await expect(page.locator("#chat-title")).to_have_text("Chatrun")
    assert doomed not in page.url
    await shot(page, "deleted-elsewhere")
    violations = await axe_violations(page)
    assert violations == [], describe(violations)
    # the tab that deleted it says nothing about another tab
    await expect(other.get_by_test_id("chat-notice-text")).to_have_text("")
    # a message sent now starts a new chat; the deleted one is not made again
    await send(page, "a new start")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    ids = [r["id"] for r in server.query("SELECT id FROM sessions")]
    assert len(ids) == 1 and doomed not in ids
    # history back to the deleted chat does not bring it back either
    await page.goto(f"{server.url}/#{doomed}")
    await expect(page.get_by_test_id("chat-notice-text")).to_have_text("That chat was deleted.")
    await send(page, "still not there")
    await expect(page.locator(USERS)).to_have_count(1)
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    assert doomed not in [r["id"] for r in server.query("SELECT id FROM sessions")]
    assert watch.errors == []


async def test_a_chat_renamed_in_another_tab_is_renamed_here_too(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    page, watch = await signed_in_page(browser, server)
    await send(page, "old name")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    other = await open_second_tab(page)
    item = other.get_by_test_id("session-item").first
    await item.hover()
    await item.get_by_role("button", name="Rename chat old name").click()
    await item.locator("input").fill("New name")
    await item.locator("input").press("Enter")
    await expect(page.locator("#chat-title")).to_have_text("New name")
    await expect(page.get_by_test_id("session-item").first).to_contain_text("New name")
    await expect(page.get_by_test_id("chat-notice-text")).to_have_text(
        "The chat “old name” was renamed to “New name” in another tab."
    )
    await expect(other.get_by_test_id("chat-notice-text")).to_have_text("")
    await page.get_by_role("button", name="Dismiss the notice").click()
    await expect(page.get_by_test_id("chat-notice-text")).to_have_text("")
    assert watch.errors == []


async def gauge(page: Page) -> tuple[str, str | None, str]:
    return (
        await page.locator("#usage-tokens").inner_text(),
        await page.locator("#context-bar").get_attribute("aria-valuenow"),
        await page.locator("#context-text").inner_text(),
    )


async def test_the_gauge_is_the_same_after_a_refresh_and_the_current_runs_while_streaming(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    page, watch = await signed_in_page(browser, server)
    await send(page, "first question")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    await expect(page.locator("#usage-context")).to_be_visible()
    before = await gauge(page)
    assert before[0].endswith("out") and before[1] and "/" in before[2], before
    await page.reload()
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    await expect(page.locator("#usage-context")).to_be_visible()
    assert await gauge(page) == before
    # a new answer streams: the previous run's totals are not shown as this one's
    gate = asyncio.Event()

    async def slow(run: FakeRun) -> None:
        await run.delta("a much longer answer " * 20)
        await gate.wait()
        await run.complete()

    hermes.script = slow
    await send(page, "second question")
    await expect(last_assistant(page)).to_have_attribute("data-status", "streaming")
    await expect(page.locator("#usage-tokens")).to_be_hidden()
    await expect(page.locator("#usage-context")).to_be_visible()  # the history's weight stays
    await page.reload()  # the same mid-stream
    await expect(last_assistant(page)).to_have_attribute("data-status", "streaming")
    await expect(page.locator("#usage-tokens")).to_be_hidden()
    await expect(page.locator("#usage-context")).to_be_visible()
    gate.set()
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    await expect(page.locator("#usage-tokens")).to_be_visible()
    after = await gauge(page)
    assert after != before and after[0].endswith("out"), (before, after)
    assert watch.errors == []


def report(fruit: str = "") -> str:
    lines = [f"Line {i} of the report talks about weather and roads." for i in range(120)]
    if fruit:
        lines[70] = f"Line 70 says the shop sold a {fruit} on Tuesday."
    return "\n".join(lines) + "\n\nWhich fruit did the shop sell?"


SMALL_WINDOW = dict(context_limit=400, context_reserve_tokens=100, chunk_concurrency=1)


async def test_reading_a_long_message_in_parts_shows_its_progress(
    make_server: ServerFactory, hermes: FakeHermes, browser: Browser
) -> None:
    server = await make_server(upstream_url=hermes.url, **SMALL_WINDOW)
    parts_gate = asyncio.Event()
    read = 0

    async def extract(run: FakeRun) -> None:
        nonlocal read
        if read >= 1:
            await parts_gate.wait()
        read += 1
        part = run.body["input"]
        await run.delta("the shop sold a banana" if "banana" in part else "NONE")
        await run.complete()

    hermes.extract_script = extract
    page, watch = await signed_in_page(browser, server)
    await send(page, report("banana"))
    text = page.get_by_test_id("chunking-text")
    await expect(text).to_have_text(re.compile(r"^Reading your message in parts: 1 of \d+ done$"))
    total = int((await text.inner_text()).split(" of ")[1].split()[0])
    assert total > 3
    bar = page.get_by_role("progressbar", name="Reading your message in parts: 1 of")
    await expect(bar).to_have_attribute("value", "1")
    await expect(bar).to_have_attribute("max", str(total))
    await shot(page, "reading-in-parts")
    violations = await axe_violations(page)
    assert violations == [], describe(violations)
    await page.reload()  # the progress so far, after a refresh
    await expect(text).to_have_text(f"Reading your message in parts: 1 of {total} done")
    parts_gate.set()
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    await expect(text).to_have_text("")
    await expect(page.get_by_role("progressbar")).to_have_count(0)
    assert watch.errors == []


async def test_a_message_too_large_says_so_and_can_be_retried(
    make_server: ServerFactory, hermes: FakeHermes, browser: Browser
) -> None:
    server = await make_server(upstream_url=hermes.url, **SMALL_WINDOW)
    page, watch = await signed_in_page(browser, server)
    await send(page, "word " * 2000)
    answer = last_assistant(page)
    await expect(answer).to_have_attribute("data-status", "failed")
    error = answer.get_by_test_id("run-error")
    await expect(error).to_have_attribute("data-code", "input_too_large")
    await expect(error).to_contain_text("too large for the model's context window")
    await page.reload()  # the same words after a refresh
    await expect(last_assistant(page).get_by_test_id("run-error")).to_contain_text(
        "too large for the model's context window"
    )
    await expect(page.get_by_test_id("announcer")).to_have_text("")
    await page.get_by_test_id("retry").click()
    await expect(page.locator(USERS)).to_have_count(2)
    await expect(last_assistant(page)).to_have_attribute("data-status", "failed")
    assert watch.errors == []


async def test_retry_sends_the_same_message_as_a_new_run(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    async def flaky(run: FakeRun) -> None:
        if len(hermes.requests) == 1:
            await run.fail("model crashed")
        else:
            await run.delta("fine now")
            await run.complete()

    hermes.script = flaky
    page, watch = await signed_in_page(browser, server)
    await send(page, "please work")
    await expect(last_assistant(page)).to_have_attribute("data-status", "failed")
    await expect(last_assistant(page)).to_contain_text("Error: model crashed")
    await expect(page.get_by_test_id("announcer")).to_have_text("The answer failed. model crashed")
    await page.get_by_test_id("retry").click()
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    assert await raw_text(page) == "fine now"
    assert [b["input"] for b in hermes.requests] == ["please work", "please work"]
    await expect(page.get_by_test_id("retry")).to_have_count(0)  # the last answer is fine
    assert watch.errors == []


async def test_long_messages_are_collapsed_with_a_toggle(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    paste = "\n".join(f"pasted line {i} " + "x" * 180 for i in range(1100))  # ~200 KB

    async def long_answer(run: FakeRun) -> None:
        await run.delta("\n\n".join(f"Paragraph {i}. " + "y" * 200 for i in range(60)))
        await run.complete()

    async def nothing_relevant(run: FakeRun) -> None:  # the paste is read in parts
        await run.delta("NONE")
        await run.complete()

    hermes.script = long_answer
    hermes.extract_script = nothing_relevant
    page, watch = await signed_in_page(browser, server)
    await page.get_by_test_id("composer").fill(paste)
    await page.get_by_test_id("send").click()
    user = page.locator(USERS).last
    await expect(user).to_be_visible()
    box = await user.bounding_box()
    assert box and box["height"] < 600, box
    toggle = user.get_by_test_id("collapse-toggle")
    await expect(toggle).to_have_attribute("aria-expanded", "false")
    await expect(toggle).to_contain_text("Show all")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    # an answer watched while it streamed stays open; it can be collapsed
    answer_toggle = last_assistant(page).get_by_test_id("collapse-toggle")
    await expect(answer_toggle).to_have_attribute("aria-expanded", "true")
    await answer_toggle.click()
    await expect(answer_toggle).to_have_attribute("aria-expanded", "false")
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    await expect(toggle).to_have_text("Show less")
    box = await user.bounding_box()
    assert box and box["height"] > 10_000, box
    await toggle.click()
    await expect(toggle).to_have_attribute("aria-expanded", "false")
    # after a refresh both are collapsed
    await page.reload()
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    for toggle in await page.get_by_test_id("collapse-toggle").all():
        await expect(toggle).to_have_attribute("aria-expanded", "false")
    for scheme in ("light", "dark"):
        await page.emulate_media(color_scheme=scheme)
        await page.wait_for_timeout(300)  # buttons fade to the new colours
        violations = await axe_violations(page)
        assert violations == [], f"{scheme}: {describe(violations)}"
    stored = server.query("SELECT content FROM messages WHERE role = 'user'")[0]["content"]
    assert stored == paste  # collapsed on screen, kept whole
    assert watch.errors == []


async def test_empty_token_and_empty_message_are_answered_visibly(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    page = await browser.new_page()
    await page.goto(server.url + "/")
    await page.get_by_test_id("token-input").fill("   ")
    await page.get_by_test_id("sign-in").click()
    error = page.get_by_test_id("sign-in-error")
    await expect(error).to_have_text("Enter your access token to sign in.")
    await expect(error).to_have_attribute("role", "alert")
    await expect(page.get_by_test_id("token-input")).to_have_attribute("aria-invalid", "true")
    await expect(page.get_by_test_id("token-input")).to_be_focused()
    await page.get_by_test_id("token-input").fill(TOKEN)
    await page.get_by_test_id("sign-in").click()
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "connected"
    )
    composer = page.get_by_test_id("composer")
    await composer.fill("   \n  ")
    await composer.press("Enter")
    note = page.get_by_test_id("composer-note")
    await expect(note).to_have_text("Only spaces: type a message to send.")
    await expect(composer).to_have_attribute("aria-invalid", "true")
    assert "composer-note" in (await composer.get_attribute("aria-describedby") or "")
    await composer.fill("")
    await page.get_by_test_id("send").click()
    await expect(note).to_have_text("Type a message to send.")
    await composer.type("real")
    await expect(note).to_have_text("")
    await composer.press("Enter")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    assert [b["input"] for b in hermes.requests] == ["real"]


async def test_on_a_touch_screen_enter_is_a_new_line_and_the_button_sends(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    context = await browser.new_context(
        viewport={"width": 390, "height": 800}, has_touch=True, is_mobile=True
    )
    page = await context.new_page()
    await page.goto(server.url + "/")
    assert await page.evaluate("() => matchMedia('(pointer: coarse)').matches")
    await page.get_by_test_id("token-input").fill(TOKEN)
    await page.get_by_test_id("sign-in").tap()
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "connected"
    )
    composer = page.get_by_test_id("composer")
    await composer.type("line one")
    await composer.press("Enter")
    await composer.type("line two")
    assert await composer.input_value() == "line one\nline two"
    assert hermes.requests == []
    await page.get_by_test_id("send").tap()
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    assert hermes.requests[0]["input"] == "line one\nline two"
    await context.close()


async def test_a_rename_that_could_not_reach_the_server_is_saved_on_reconnect(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    page, _ = await signed_in_page(browser, server)
    await send(page, "offline rename")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    await server.stop()
    await expect(page.get_by_test_id("connection-state")).not_to_have_attribute(
        "data-state", "connected"
    )
    item = page.get_by_test_id("session-item").first
    await item.hover()
    await item.get_by_role("button", name="Rename chat offline rename").click()
    await item.locator("input").fill("Renamed while away")
    await item.locator("input").press("Enter")
    banner = page.get_by_test_id("error-banner")
    await expect(banner).to_contain_text("Not renamed yet: The server cannot be reached.")
    await expect(banner).to_contain_text("saved as soon as the connection is back")
    await expect(page.get_by_test_id("session-item").first).to_contain_text("offline rename")
    await server.start()
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "connected", timeout=15000
    )
    await expect(banner).to_be_hidden()
    await expect(page.get_by_test_id("session-item").first).to_contain_text("Renamed while away")
    assert server.query("SELECT title FROM sessions")[0]["title"] == "Renamed while away"


async def test_a_stream_of_words_still_reads_whole(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    """The in-place update keeps the exact text (the renderer no longer rebuilds articles)."""
    hermes.script = words(120, 0.005)
    page, _ = await signed_in_page(browser, server)
    await send(page, "many words")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    run = next(iter(hermes.runs.values()))
    assert await raw_text(page) == run.sent_text
