"""The browser client in a real Chromium (Debian's), against the real server and fake upstream.

Screenshots of the main states go to ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from playwright.async_api import Browser, expect

from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import TOKEN, ChatrunServer, ServerFactory, free_port, until_async
from tests.pages import last_assistant, raw_text, send, shot, signed_in_page, words

pytestmark = pytest.mark.timeout(90)


async def test_wrong_token_is_refused_with_a_clear_message(
    server: ChatrunServer, browser: Browser
) -> None:
    page = await browser.new_page()
    await page.goto(server.url + "/")
    await page.get_by_test_id("token-input").fill("not-the-token")
    await page.get_by_test_id("sign-in").click()
    error = page.get_by_test_id("sign-in-error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("refused")
    await shot(page, "sign-in-refused")
    assert await page.evaluate("localStorage.getItem('chatrun_token')") is None


async def test_send_and_watch_the_stream(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    hermes.script = words(30, 0.02)
    page, watch = await signed_in_page(browser, server)
    await send(page, "Tell me something <b>bold</b>")
    message = last_assistant(page)
    await expect(message).to_have_attribute("data-status", "streaming")
    await shot(page, "streaming")
    await expect(message).to_have_attribute("data-status", "complete", timeout=10000)
    assert await raw_text(page) == "".join(f"word{i} " for i in range(30))
    user = page.locator('[data-testid="message"][data-role="user"]').last
    await expect(user).to_contain_text("Tell me something <b>bold</b>")  # escaped, not HTML
    await expect(page.get_by_test_id("session-item")).to_have_count(1)
    await expect(page.get_by_test_id("usage-gauge")).to_be_visible()
    await shot(page, "completed")
    assert watch.errors == []


async def test_refresh_mid_stream_shows_exactly_the_upstream_text(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    hermes.script = words(80, 0.03)
    page, watch = await signed_in_page(browser, server)
    await send(page, "stream a long answer")
    await expect(last_assistant(page)).to_contain_text("word10")
    await page.reload()
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "connected"
    )
    await expect(last_assistant(page)).to_have_attribute("data-status", "streaming")
    await shot(page, "after-refresh-mid-stream")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete", timeout=15000)
    run = next(iter(hermes.runs.values()))
    assert await raw_text(page) == run.sent_text
    assert watch.errors == []


async def test_second_tab_follows_the_same_stream_live(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    hermes.script = words(60, 0.03)
    page, _ = await signed_in_page(browser, server)
    await send(page, "for both tabs")
    await expect(last_assistant(page)).to_contain_text("word3")
    second = await page.context.new_page()  # same storage: already signed in
    await second.goto(page.url)
    await expect(last_assistant(second)).to_have_attribute("data-status", "complete", timeout=15000)
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    run = next(iter(hermes.runs.values()))
    assert await raw_text(second) == run.sent_text == await raw_text(page)
    await shot(second, "second-tab")


async def test_queue_two_messages_and_cancel_one(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    gate = asyncio.Event()

    async def script(run: FakeRun) -> None:
        await run.delta(f"answer to {run.body['input']}")
        if run.body["input"] == "first":
            await gate.wait()
        await run.complete()

    hermes.script = script
    page, watch = await signed_in_page(browser, server)
    await send(page, "first")
    await expect(last_assistant(page)).to_contain_text("answer to first")
    await send(page, "second")
    await send(page, "third")
    queued = page.get_by_test_id("queued-item")
    await expect(queued).to_have_count(2)
    await expect(queued.nth(0)).to_contain_text("second")
    await shot(page, "queued")
    await queued.nth(0).get_by_test_id("queued-cancel").click()
    await expect(queued).to_have_count(1)
    await expect(queued.nth(0)).to_contain_text("third")
    gate.set()
    await expect(queued).to_have_count(0)
    await expect(last_assistant(page)).to_contain_text("answer to third")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    users = page.locator('[data-testid="message"][data-role="user"]')
    await expect(users).to_have_count(2)
    assert [b["input"] for b in hermes.requests] == ["first", "third"]
    assert watch.errors == []


async def test_stop_mid_stream_keeps_the_partial_answer(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    hermes.script = words(10_000, 0.02)
    hermes.ignore_stop = False
    page, watch = await signed_in_page(browser, server)
    await send(page, "never ending")
    await expect(last_assistant(page)).to_contain_text("word5")
    await page.get_by_test_id("stop").click()
    await expect(last_assistant(page)).to_have_attribute("data-status", "aborted")
    await expect(page.get_by_test_id("stop")).to_be_hidden()
    partial = await raw_text(page)
    assert partial.startswith("word0 word1 ") and len(partial) > 30
    await shot(page, "stopped")
    await page.reload()
    await expect(last_assistant(page)).to_have_attribute("data-status", "aborted")
    assert await raw_text(page) == partial
    assert watch.errors == []


async def test_failed_run_shows_its_error_in_place(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    async def script(run: FakeRun) -> None:
        await run.delta("Starting")
        await run.fail("model crashed: out of memory")

    hermes.script = script
    page, _ = await signed_in_page(browser, server)
    await send(page, "please fail")
    message = last_assistant(page)
    await expect(message).to_have_attribute("data-status", "failed")
    await expect(message).to_contain_text("Error: model crashed: out of memory")
    await shot(page, "failed")


async def test_narrow_screen_has_a_sidebar_toggle(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    page, _ = await signed_in_page(browser, server, width=390, height=800)
    await send(page, "hello from a phone")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    toggle = page.get_by_test_id("sidebar-toggle")
    await expect(toggle).to_be_visible()
    await shot(page, "narrow")
    await toggle.click()
    await expect(page.get_by_test_id("new-chat")).to_be_in_viewport()
    await page.wait_for_timeout(400)  # the slide-in transition
    await shot(page, "narrow-sidebar")


async def test_page_is_served_with_security_headers(server: ChatrunServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(server.url + "/") as resp:
        assert resp.status == 200
        csp = resp.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "default-src 'self'" in csp
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        body = await resp.text()
    assert "<script>" not in body and "style=" not in body
    async with aiohttp.ClientSession() as http, http.get(server.url + "/static/app.js") as resp:
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers.get("ETag") or resp.headers.get("Last-Modified")


async def test_shift_enter_adds_a_line_and_enter_sends(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    page, _ = await signed_in_page(browser, server)
    composer = page.get_by_test_id("composer")
    await composer.type("line one")
    await composer.press("Shift+Enter")
    await composer.type("line two")
    assert await composer.input_value() == "line one\nline two"
    assert hermes.requests == []
    await composer.press("Enter")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    assert hermes.requests[0]["input"] == "line one\nline two"
    assert await composer.input_value() == ""


async def test_reconnect_after_a_server_restart_resumes_the_session(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    page, _ = await signed_in_page(browser, server)
    await send(page, "before the restart")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    await server.stop()
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "reconnecting"
    )
    await shot(page, "reconnecting")
    await server.start()
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "connected", timeout=15000
    )
    await send(page, "after the restart")
    await expect(page.locator('[data-testid="message"][data-role="assistant"]')).to_have_count(2)
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    assert [b["input"] for b in hermes.requests] == ["before the restart", "after the restart"]


async def test_rename_and_delete_from_the_sidebar(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    page, watch = await signed_in_page(browser, server)
    await send(page, "to be renamed")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    item = page.get_by_test_id("session-item").first
    await item.hover()
    await item.get_by_role("button", name="Rename chat to be renamed").click()
    field = item.locator("input")
    await field.fill("Renamed chat")
    await field.press("Enter")
    await expect(page.get_by_test_id("session-item").first).to_contain_text("Renamed chat")
    assert server.query("SELECT title FROM sessions")[0]["title"] == "Renamed chat"
    item = page.get_by_test_id("session-item").first
    await item.hover()
    await item.get_by_role("button", name="Delete chat Renamed chat").click()
    await item.get_by_role("button", name="Confirm: delete chat Renamed chat").click()
    await expect(page.get_by_test_id("session-item")).to_have_count(0)
    assert server.query("SELECT id FROM sessions") == []
    assert watch.errors == []


async def wait_upstream(server: ChatrunServer, state: str, timeout: float = 15.0) -> None:
    """Until ``GET /api/me`` (what the page is told) reports the upstream in ``state``."""

    async def reported() -> bool:
        status, body = await server.request("GET", "/api/me", token=TOKEN)
        assert status == 200, body
        return bool(body.get("upstream")) and body["upstream"]["state"] == state

    await until_async(reported, timeout, f"upstream never {state}", interval=0.1)


async def test_unreachable_upstream_is_announced_before_the_first_message(
    make_server: ServerFactory, browser: Browser
) -> None:
    port = free_port()  # nothing listens here (yet)
    server = await make_server(
        upstream_url=f"http://127.0.0.1:{port}", upstream_probe_max_backoff_s=1.0
    )
    hermes = FakeHermes()
    try:
        await wait_upstream(server, "unreachable")
        page, watch = await signed_in_page(browser, server)
        notice = page.get_by_test_id("upstream-notice")
        await expect(notice).to_be_visible()
        await expect(page.get_by_test_id("upstream-text")).to_contain_text(
            f"“default” (hermes at http://127.0.0.1:{port}) cannot be reached"
        )
        await expect(page.get_by_test_id("upstream-detail")).not_to_be_empty()
        await expect(page.get_by_test_id("upstream-hint")).to_contain_text("CHATRUN_UPSTREAM_URL")
        # announced: it sits in a polite live region, above the message box
        region = page.locator('[role="status"]', has=notice)
        await expect(region).to_have_count(1)
        notice_box = await notice.bounding_box()
        composer_box = await page.get_by_test_id("composer").bounding_box()
        assert notice_box and composer_box and notice_box["y"] < composer_box["y"]
        await expect(page.get_by_test_id("message")).to_have_count(0)
        await shot(page, "upstream-unreachable")
        assert watch.errors == []

        # The upstream comes up; on reconnect the page asks again and the notice goes.
        await hermes.start(port)
        await wait_upstream(server, "ready")
        await server.stop()
        await expect(page.get_by_test_id("connection-state")).not_to_have_attribute(
            "data-state", "connected"
        )
        await server.start()
        await expect(page.get_by_test_id("connection-state")).to_have_attribute(
            "data-state", "connected", timeout=15000
        )
        await expect(notice).to_be_hidden()
        await send(page, "hello")
        await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    finally:
        await server.stop()  # before the upstream it talks to
        await hermes.close()
