"""Driving the browser client's page in Chromium: signing in, sending, reading the last answer,
screenshots (to ``test-artifacts/``) and console errors. The ``browser`` fixture is in
``tests/conftest.py``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from playwright.async_api import Browser, Locator, Page, expect

from tests.fakes.hermes import FakeRun, Script
from tests.helpers import TOKEN, ChatrunServer

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


class Watch:
    """Collects console errors and page errors; a clean page has none."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(str(e)))


async def signed_in_page(
    browser: Browser, server: ChatrunServer, *, width: int = 1280, height: int = 800
) -> tuple[Page, Watch]:
    context = await browser.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    watch = Watch(page)
    await page.goto(server.url + "/")
    await page.get_by_test_id("token-input").fill(TOKEN)
    await page.get_by_test_id("sign-in").click()
    await expect(page.get_by_test_id("connection-state")).to_have_attribute(
        "data-state", "connected"
    )
    return page, watch


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def last_assistant(page: Page) -> Locator:
    return page.locator('[data-testid="message"][data-role="assistant"]').last


async def send(page: Page, text: str) -> None:
    await page.get_by_test_id("composer").fill(text)
    await page.get_by_test_id("composer").press("Enter")


def words(n: int, delay: float) -> Script:
    """A script streaming ``word0 word1 …`` one word every ``delay`` seconds."""

    async def script(run: FakeRun) -> None:
        for i in range(n):
            await run.delta(f"word{i} ")
            await asyncio.sleep(delay)
        await run.complete()

    return script


async def raw_text(page: Page) -> str:
    value = await last_assistant(page).get_by_test_id("message-content").get_attribute("data-raw")
    return value or ""
