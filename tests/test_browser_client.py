"""More of the browser client in Chromium: tools and markdown, resumes, other tabs, offline."""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Browser, expect

from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import ChatrunServer, TabFactory
from tests.pages import last_assistant, raw_text, send, shot, signed_in_page, words

pytestmark = pytest.mark.timeout(90)


async def test_tools_reasoning_and_markdown(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    async def script(run: FakeRun) -> None:
        await run.reasoning("I should list the files first.")
        await run.delta("Let me check.")
        await run.tool_started("terminal", "ls -la")
        await asyncio.sleep(0.2)
        await run.tool_completed("terminal", 0.2)
        await run.delta(
            "Here:\n\n```python\nprint('<b>hi</b>')\n```\n\n"
            "Use `x < y` and **bold** <img src=x onerror=alert(1)>\n\n- one\n- two"
        )
        await run.complete()

    hermes.script = script
    page, watch = await signed_in_page(browser, server)
    await send(page, "<script>alert(1)</script> tools please")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    tool = page.locator('[data-testid="message"][data-role="tool"]')
    await expect(tool).to_have_count(1)
    await expect(tool).to_contain_text("terminal")
    await expect(tool).to_contain_text("ls -la")
    content = last_assistant(page).get_by_test_id("message-content")
    await expect(content.locator("pre code")).to_have_text("print('<b>hi</b>')")
    await expect(content.locator("p code")).to_have_text("x < y")
    await expect(content.locator("strong")).to_have_text("bold")
    await expect(content.locator("li")).to_have_count(2)
    assert await page.locator("img").count() == 0
    assert await page.locator("#messages script").count() == 0
    reasoning = page.locator("details.reasoning")
    await expect(reasoning).to_have_count(1)
    await reasoning.locator("summary").click()
    await expect(reasoning).to_contain_text("I should list the files first.")
    await shot(page, "x-tools")
    # after a reload (snapshot): same structure
    await page.reload()
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    await expect(page.locator('[data-testid="message"][data-role="tool"]')).to_have_count(1)
    await expect(page.locator('[data-testid="message"][data-role="tool"]')).to_contain_text(
        "ls -la"
    )
    assert watch.errors == []


async def test_visibility_resumes_mid_stream_without_duplicates(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    hermes.script = words(120, 0.01)
    page, watch = await signed_in_page(browser, server)
    await send(page, "long")
    await expect(last_assistant(page)).to_contain_text("word3")
    for _ in range(25):
        await page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
        await page.wait_for_timeout(30)
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete", timeout=15000)
    run = next(iter(hermes.runs.values()))
    assert await raw_text(page) == run.sent_text
    state = await page.evaluate("window.chatrun.state")
    assert state["lastAppliedSeq"] > 100 and state["sessionId"].startswith("s_")
    assert watch.errors == []


async def test_run_sent_from_another_tab_shows_up(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    hermes.script = words(20, 0.02)
    page, watch = await signed_in_page(browser, server)
    await send(page, "from page one")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    second = await page.context.new_page()
    await second.goto(page.url)
    await expect(last_assistant(second)).to_have_attribute("data-status", "complete")
    await send(second, "from page two")
    await expect(page.locator('[data-testid="message"][data-role="user"]')).to_have_count(2)
    await expect(page.locator('[data-testid="message"][data-role="user"]').last).to_contain_text(
        "from page two"
    )
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete", timeout=10000)
    runs = list(hermes.runs.values())
    assert await raw_text(page) == runs[1].sent_text == await raw_text(second)
    assert await page.locator('[data-testid="message"]').count() == 4
    assert watch.errors == []


async def test_message_typed_while_offline_is_sent_on_reconnect(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    page, _ = await signed_in_page(browser, server)
    await send(page, "first")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    await server.stop()
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "reconnecting"
    )
    await send(page, "typed offline")
    await expect(page.get_by_test_id("queued-item")).to_have_count(1)
    await expect(page.get_by_test_id("error-banner")).to_be_visible()
    await shot(page, "x-offline")
    await server.start()
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "connected", timeout=15000
    )
    await expect(page.get_by_test_id("queued-item")).to_have_count(0)
    await expect(page.locator('[data-testid="message"][data-role="assistant"]')).to_have_count(2)
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    assert [b["input"] for b in hermes.requests] == ["first", "typed offline"]


async def test_restart_mid_stream_shows_interrupted_text(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    hermes.script = words(10_000, 0.02)
    page, _ = await signed_in_page(browser, server)
    await send(page, "forever")
    await expect(last_assistant(page)).to_contain_text("word5")
    await server.stop()
    await server.start()
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "connected", timeout=15000
    )
    await expect(last_assistant(page)).to_have_attribute("data-status", "interrupted")
    stored = server.query("SELECT content FROM messages WHERE role='assistant'")[0]["content"]
    assert await raw_text(page) == stored
    await expect(page.get_by_test_id("stop")).to_be_hidden()
    await shot(page, "x-interrupted")


async def test_sessions_paginate(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser, tab_factory: TabFactory
) -> None:
    tab = await tab_factory()
    for i in range(55):
        ack = await tab.call(
            "run", {"session_id": f"bulk{i}", "input": f"chat {i}", "queue_id": "q"}
        )
        assert ack["ok"], ack
    await tab.wait_for(
        lambda evs: len([e for e, _ in evs if e == "run.completed"]) >= 55, timeout=30
    )
    page, watch = await signed_in_page(browser, server)
    items = page.get_by_test_id("session-item")
    await expect(items).to_have_count(50)
    await items.last.scroll_into_view_if_needed()
    await page.locator("#sessions-scroll").evaluate("el => el.scrollTop = el.scrollHeight")
    await expect(items).to_have_count(55)
    await items.nth(54).locator("a").click()
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    assert "bulk0" in page.url
    assert watch.errors == []


async def test_cancel_then_stop_and_queue_continue(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    hermes.script = words(10_000, 0.02)
    hermes.ignore_stop = False
    page, watch = await signed_in_page(browser, server)
    await send(page, "one")
    await expect(last_assistant(page)).to_contain_text("word3")
    hermes.script = words(5, 0.01)
    await send(page, "two")
    await expect(page.get_by_test_id("queued-item")).to_have_count(1)
    await expect(page.get_by_test_id("queued-item")).to_have_attribute("data-status", "queued")
    await page.get_by_test_id("stop").click()
    await expect(
        page.locator('[data-testid="message"][data-role="assistant"]').first
    ).to_have_attribute("data-status", "aborted")
    await expect(page.get_by_test_id("queued-item")).to_have_count(0)
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    await expect(last_assistant(page)).to_contain_text("word4")
    assert watch.errors == []


async def test_signout_rename_escape_and_navigation(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    page, watch = await signed_in_page(browser, server)
    await send(page, "chat one")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    first_url = page.url
    await page.get_by_test_id("new-chat").click()
    await expect(page.get_by_test_id("message")).to_have_count(0)
    await send(page, "chat two")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    await expect(page.get_by_test_id("session-item")).to_have_count(2)
    # rename with Escape keeps the title
    item = page.get_by_test_id("session-item").first
    await item.hover()
    await item.get_by_role("button", name="Rename").click()
    await item.locator("input").fill("nope")
    await item.locator("input").press("Escape")
    await expect(page.get_by_test_id("session-item").first).to_contain_text("chat two")
    # back goes to the first chat (replay resume of a view we had)
    await page.go_back()
    assert page.url == first_url
    await expect(
        page.locator('[data-testid="message"][data-role="user"] [data-testid="message-content"]')
    ).to_have_text(["chat one"])
    state = await page.evaluate("window.chatrun.state")
    assert state["lastAppliedSeq"] > 0
    # clicking the other session in the list
    await page.get_by_test_id("session-item").first.locator("a").click()
    await expect(
        page.locator('[data-testid="message"][data-role="user"] [data-testid="message-content"]')
    ).to_have_text(["chat two"])
    await page.get_by_test_id("sign-out").click()
    await expect(page.get_by_test_id("token-input")).to_be_visible()
    assert await page.evaluate("localStorage.getItem('chatrun_token')") is None
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "disconnected"
    )
    await page.reload()
    await expect(page.get_by_test_id("token-input")).to_be_visible()
    assert watch.errors == []
