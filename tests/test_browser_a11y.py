"""The page for keyboards and screen readers, in Chromium: no WCAG 2.1 AA violations axe can
find on any screen (light and dark), a streaming answer updated in place and announced once,
and a keyboard-only walk through everything a chat offers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from tests.a11y import axe_violations, describe
from tests.fakes.hermes import FakeHermes, FakeRun
from tests.helpers import TOKEN, ChatrunServer
from tests.pages import last_assistant, send, shot, signed_in_page, words

pytestmark = pytest.mark.timeout(150)

ACTIVE = """() => {
  const a = document.activeElement;
  return a ? {tag: a.tagName, id: a.id, fkey: a.dataset.fkey || '', testid: a.dataset.testid || '',
              label: a.getAttribute('aria-label') || '', text: (a.textContent || '').trim()}
           : null;
}"""


# the first element of the page that Tab reaches (document order, tabindex >= 0, shown)
FIRST_TAB_STOP = """() => {
  const all = [...document.querySelectorAll('a[href], button, input, textarea, [tabindex]')];
  const first = all.find((n) => n.tabIndex >= 0 && !n.disabled && n.getClientRects().length > 0
                                && !n.closest('[inert]'));
  return first ? first.dataset.testid || first.id : null;
}"""


async def active(page: Page) -> dict[str, Any]:
    """What has the focus; never the page itself."""
    info: dict[str, Any] = await page.evaluate(ACTIVE)
    assert info and info["tag"] not in ("BODY", "HTML"), f"focus fell to the page: {info}"
    return info


async def press(page: Page, key: str) -> dict[str, Any]:
    await page.keyboard.press(key)
    return await active(page)


async def until_true(page: Page, function: str, timeout: float = 15.0) -> None:
    """Wait until a JS function returns true (polled: the page's CSP forbids eval, which
    ``wait_for_function`` relies on)."""
    for _ in range(int(timeout / 0.05)):
        if await page.evaluate(function):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never true: {function}")


async def focus_on(page: Page, condition: str) -> dict[str, Any]:
    """Wait until the focused element ``a`` meets a JS ``condition`` (after an action that
    answers asynchronously: a rename saved, a chat deleted)."""
    await until_true(
        page, f"() => {{ const a = document.activeElement; return Boolean(a && ({condition})); }}"
    )
    return await active(page)


async def shift_tab_until(page: Page, found: Any, limit: int = 40) -> dict[str, Any]:
    """Shift+Tab until ``found(active)``; every stop on the way is an element, not the page."""
    for _ in range(limit):
        info = await press(page, "Shift+Tab")
        if found(info):
            return info
    raise AssertionError("never reached by Shift+Tab")


async def assert_clean(page: Page, screen: str) -> None:
    violations = await axe_violations(page)
    assert violations == [], f"{screen}:\n{describe(violations)}"


def gated() -> tuple[asyncio.Event, Any]:
    """A script that streams a little and waits for the gate; "fail" fails."""
    gate = asyncio.Event()

    async def script(run: FakeRun) -> None:
        if run.body["input"] == "fail":
            await run.delta("Partial")
            await run.fail("model crashed")
            return
        await run.delta(f"answer to **{run.body['input']}** ")
        await gate.wait()
        await run.complete()

    return gate, script


@pytest.mark.parametrize("scheme", ["light", "dark"])
async def test_no_axe_violations_on_any_screen(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser, scheme: str
) -> None:
    gate, hermes.script = gated()
    context = await browser.new_context(
        viewport={"width": 1280, "height": 800}, color_scheme=scheme
    )
    page = await context.new_page()
    await page.goto(server.url + "/")
    await expect(page.get_by_test_id("token-input")).to_be_visible()
    await assert_clean(page, "signed out")
    await page.get_by_test_id("token-input").fill(TOKEN)
    await page.get_by_test_id("sign-in").click()
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "connected"
    )
    await assert_clean(page, "empty")
    await send(page, "hello")
    await expect(last_assistant(page)).to_contain_text("answer to hello")
    await assert_clean(page, "streaming")
    await shot(page, f"a11y-{scheme}-streaming")
    await send(page, "later")
    await expect(page.get_by_test_id("queued-item")).to_have_count(1)
    await assert_clean(page, "queued")
    await shot(page, f"a11y-{scheme}-queued")
    gate.set()
    await expect(page.get_by_test_id("queued-item")).to_have_count(0)
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    await send(page, "fail")
    await expect(last_assistant(page)).to_have_attribute("data-status", "failed")
    await expect(page.get_by_test_id("retry")).to_be_visible()
    await assert_clean(page, "failed")
    await shot(page, f"a11y-{scheme}-failed")
    await page.get_by_test_id("composer").focus()
    await assert_clean(page, "message box focused")
    await page.set_viewport_size({"width": 390, "height": 800})
    await page.get_by_test_id("sidebar-toggle").click()
    await expect(page.locator("#sidebar")).to_have_attribute("aria-modal", "true")
    await page.wait_for_timeout(300)  # the slide-in transition
    await assert_clean(page, "narrow, drawer open")
    await shot(page, f"a11y-{scheme}-narrow-drawer")
    await context.close()


async def test_message_box_focus_ring_is_clearly_visible(
    server: ChatrunServer, browser: Browser
) -> None:
    page, _ = await signed_in_page(browser, server)
    await page.get_by_test_id("composer").focus()
    ring = await page.evaluate(
        """() => {
          const s = getComputedStyle(document.querySelector('.composer-box'));
          return {width: parseFloat(s.outlineWidth), style: s.outlineStyle, color: s.outlineColor,
                  page: getComputedStyle(document.querySelector('.composer')).backgroundColor};
        }"""
    )
    assert ring["width"] >= 2 and ring["style"] == "solid", ring
    assert contrast(ring["color"], ring["page"]) >= 3, ring


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two ``rgb(r, g, b)`` colours."""

    def luminance(css: str) -> float:
        parts = [float(x) for x in css[css.index("(") + 1 : css.index(")")].split(",")[:3]]
        linear = [
            c / 255 / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4
            for c in parts
        ]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


WATCH = """() => {
  window.__seen = {added: 0, removed: 0, busy: [], said: []};
  const list = document.getElementById('messages');
  new MutationObserver((records) => {
    for (const r of records) {
      for (const n of r.addedNodes) if (n.nodeName === 'ARTICLE') window.__seen.added++;
      for (const n of r.removedNodes) if (n.nodeName === 'ARTICLE') window.__seen.removed++;
    }
  }).observe(list, {childList: true});
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.target.dataset.role !== 'assistant') continue;
      window.__seen.busy.push(r.target.getAttribute('aria-busy'));
    }
  }).observe(list, {attributes: true, subtree: true, attributeFilter: ['aria-busy']});
  const said = document.getElementById('announcer');
  new MutationObserver(() => {
    const text = said.textContent.trim();
    if (text) window.__seen.said.push(text);
  }).observe(said, {childList: true, characterData: true, subtree: true});
}"""


async def test_a_streaming_answer_is_updated_in_place_and_announced_once(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    hermes.script = words(60, 0.02)
    page, watch = await signed_in_page(browser, server)
    assert await page.locator("#messages").get_attribute("aria-live") is None
    await page.evaluate(WATCH)
    await send(page, "stream please")
    answer = last_assistant(page)
    await expect(answer).to_have_attribute("aria-busy", "true")
    await expect(answer).to_contain_text("word20")
    await expect(answer).to_have_attribute("data-status", "complete", timeout=15000)
    await expect(answer).to_have_attribute("aria-busy", "false")
    seen = await page.evaluate("window.__seen")
    # the question and the answer went in once each; nothing was taken out or put back
    assert seen["added"] == 2 and seen["removed"] == 0, seen
    assert seen["busy"][-1] == "false" and "true" not in seen["busy"][-1:], seen
    await expect(page.get_by_test_id("announcer")).to_have_text("Answer complete.")
    assert seen["said"] == ["Answer complete."], seen
    await send(page, "once more")
    await expect(page.locator('[data-testid="message"][data-role="assistant"]')).to_have_count(2)
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete", timeout=15000)
    await page.wait_for_function("window.__seen.said.length >= 2")
    seen = await page.evaluate("window.__seen")
    assert seen["said"] == ["Answer complete.", "Answer complete."], seen
    assert seen["added"] == 4 and seen["removed"] == 0, seen
    assert watch.errors == []


async def test_keyboard_only_walk(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    async def script(run: FakeRun) -> None:
        if run.body["input"] == "first":
            async for _ in _forever():
                await run.delta("more ")
                if run.stop_requested.is_set():
                    await run.cancelled()
                    return
        await run.delta(f"answer to {run.body['input']}")
        await run.complete()

    hermes.script = script
    hermes.ignore_stop = False
    page = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
    await page.goto(server.url + "/")
    # sign in: the token box has the focus; after sign-in the message box has it
    assert (await active(page))["id"] == "token"
    await page.keyboard.type(TOKEN)
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "connected"
    )
    assert (await active(page))["id"] == "composer"
    # the skip link is the first Tab stop (before the chat list) and leads to the message box
    await shift_tab_until(page, lambda a: a["testid"] == "new-chat")
    info = await press(page, "Shift+Tab")
    assert info["testid"] == "skip-link" and info["text"] == "Skip to message box"
    assert await page.evaluate(FIRST_TAB_STOP) == "skip-link"
    assert (await press(page, "Enter"))["id"] == "composer"

    # send, then queue two more while the answer streams
    await page.keyboard.type("first")
    await page.keyboard.press("Enter")
    await expect(last_assistant(page)).to_contain_text("more")
    for text in ("second", "third"):
        await page.keyboard.type(text)
        assert (await press(page, "Enter"))["id"] == "composer"
    queued = page.get_by_test_id("queued-item")
    await expect(queued).to_have_count(2)
    await expect(queued.nth(1)).to_have_attribute("data-status", "queued")

    # cancel the last queued message: right before the message box
    info = await press(page, "Shift+Tab")
    assert info["testid"] == "queued-cancel" and "third" in info["label"], info
    await page.keyboard.press("Enter")
    await expect(queued).to_have_count(1)
    assert (await active(page))["id"] == "composer"

    # stop the streaming answer: right after the message box
    assert (await press(page, "Tab"))["id"] == "stop"
    await page.keyboard.press("Enter")
    await expect(
        page.locator('[data-testid="message"][data-role="assistant"]').first
    ).to_have_attribute("data-status", "aborted")
    await expect(last_assistant(page)).to_contain_text("answer to second")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    assert (await active(page))["id"] == "composer"

    # a second chat, from the "New chat" button
    info = await shift_tab_until(page, lambda a: a["testid"] == "new-chat")
    assert (await press(page, "Enter"))["id"] == "composer"
    await page.keyboard.type("chat two")
    await page.keyboard.press("Enter")
    await expect(last_assistant(page)).to_contain_text("answer to chat two")
    items = page.get_by_test_id("session-item")
    await expect(items).to_have_count(2)

    # the chat list is one Tab stop: the open chat
    info = await shift_tab_until(page, lambda a: a["fkey"].endswith(":open"))
    assert "chat two" in info["text"]
    assert (await press(page, "Shift+Tab"))["testid"] == "new-chat"  # one stop, not two
    info = await press(page, "Tab")
    assert "chat two" in info["text"]
    info = await press(page, "ArrowDown")
    assert info["text"].startswith("first"), info
    assert "chat two" in (await press(page, "Home"))["text"]
    assert (await press(page, "End"))["text"].startswith("first")
    assert (await press(page, "ArrowUp"))["text"].startswith("chat two")

    # switch chats: Enter on a chat opens it, and the message box takes the focus
    await press(page, "ArrowDown")
    await page.keyboard.press("Enter")
    await page.wait_for_function("document.activeElement.id === 'composer'")
    await expect(page.locator("#chat-title")).to_have_text("first")

    # rename: Right arrow to the Rename button, Enter, type, Enter: back on the chat
    info = await shift_tab_until(page, lambda a: a["fkey"].endswith(":open"))
    assert info["text"].startswith("first")
    info = await press(page, "ArrowRight")
    assert info["label"] == "Rename chat first"
    info = await press(page, "Enter")
    assert info["tag"] == "INPUT"
    await page.keyboard.type("Keyboard chat")
    await page.keyboard.press("Enter")
    info = await focus_on(
        page, "a.dataset.fkey.endsWith(':open') && a.textContent === 'Keyboard chat'"
    )
    await expect(page.locator("#chat-title")).to_have_text("Keyboard chat")
    # Escape leaves the title as it was, and the focus on the chat
    await press(page, "ArrowRight")
    await press(page, "Enter")
    await page.keyboard.type("not this")
    await page.keyboard.press("Escape")
    await focus_on(page, "a.dataset.fkey.endsWith(':open') && a.textContent === 'Keyboard chat'")

    # delete: the confirmation waits for a keyboard user; Escape cancels it
    await press(page, "ArrowRight")
    info = await press(page, "ArrowRight")
    assert info["label"] == "Delete chat Keyboard chat"
    info = await press(page, "Enter")
    assert info["label"] == "Confirm: delete chat Keyboard chat", info
    await page.wait_for_timeout(4600)  # longer than the confirmation lasts without focus
    info = await active(page)
    assert info["label"] == "Confirm: delete chat Keyboard chat", info
    info = await press(page, "Escape")
    assert info["label"] == "Delete chat Keyboard chat", info
    await press(page, "Enter")
    await page.keyboard.press("Enter")
    await expect(items).to_have_count(1)
    await focus_on(page, "a.dataset.fkey.endsWith(':open') && a.textContent === 'chat two'")
    assert server.query("SELECT title FROM sessions")[0]["title"] == "chat two"
    # F2 renames and Delete deletes the chat in focus
    await press(page, "F2")
    assert (await active(page))["tag"] == "INPUT"
    await page.keyboard.press("Escape")
    await focus_on(page, "a.dataset.fkey.endsWith(':open')")
    info = await press(page, "Delete")
    assert info["label"].startswith("Confirm: delete chat")
    info = await press(page, "Escape")
    assert info["label"].startswith("Delete chat")
    await page.close()


async def _forever() -> Any:
    while True:
        await asyncio.sleep(0.03)
        yield None


async def test_the_drawer_keeps_the_focus_and_gives_it_back(
    server: ChatrunServer, hermes: FakeHermes, browser: Browser
) -> None:
    page, _ = await signed_in_page(browser, server, width=390, height=800)
    await send(page, "hello from a phone")
    await expect(last_assistant(page)).to_have_attribute("data-status", "complete")
    await page.get_by_test_id("composer").focus()
    info = await shift_tab_until(page, lambda a: a["testid"] == "sidebar-toggle")
    info = await press(page, "Enter")
    await expect(page.locator("#sidebar")).to_have_attribute("aria-modal", "true")
    assert info["fkey"].endswith(":open"), info  # the open chat, in the drawer
    inside = "() => document.getElementById('sidebar').contains(document.activeElement)"
    for key in ["Tab"] * 6 + ["Shift+Tab"] * 8:
        await press(page, key)
        assert await page.evaluate(inside), await active(page)
    info = await press(page, "Escape")
    assert info["testid"] == "sidebar-toggle"
    await expect(page.locator("#sidebar")).not_to_have_attribute("aria-modal", "true")
    await shot(page, "a11y-narrow-closed")
