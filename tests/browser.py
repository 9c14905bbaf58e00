"""A real browser for end-to-end tests: Debian's headless Chromium (`make test` installs it through
scripts/ensure-chromium), driven by Playwright's Python API. Playwright's own browser downloads are never
used (`playwright install` is not needed): the tests launch /usr/bin/chromium, and fail, not skip, when it
is missing, so CI cannot pass without them.

Every page a test opens is watched for Content-Security-Policy violations and script errors (an inline
script or style that crept in would be blocked by the CSP and show up here), and screenshots go to
test-artifacts/screenshots/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Error, Page, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # noqa: ASYNC240 - one stat, before anything runs
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (scripts/ensure-chromium); to run "
                    "pytest directly, run scripts/ensure-chromium (or apt-get install -y chromium) first. "
                    "The console's browser tests must run", pytrace=False)
    async with async_playwright() as pw:
        # --no-sandbox: Chromium's sandbox refuses to run as root (CI containers).
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                           args=["--no-sandbox"])
        try:
            yield browser
        finally:
            await browser.close()


class Problems:
    """CSP violations and uncaught script errors seen on a page."""

    def __init__(self, page: Page) -> None:
        self.seen: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", self._error)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and ("Content Security Policy" in message.text
                                        or "Refused to" in message.text):
            self.seen.append(message.text)

    def _error(self, error: Error) -> None:
        self.seen.append(f"uncaught: {error.message}")


@asynccontextmanager
async def new_page(browser: Browser, *, timeout_ms: float = 10_000, width: int | None = None,
                   timezone_id: str | None = None) -> AsyncIterator[tuple[Page, Problems]]:
    """A page in a context of its own; `width`: the viewport's (CSS pixels), `timezone_id`: the browser's
    time zone (an IANA name), for the tests of the console's layout and local times."""
    context = await (browser.new_context(viewport={"width": width, "height": 900}, timezone_id=timezone_id)
                     if width else browser.new_context(timezone_id=timezone_id))
    page = await context.new_page()
    page.set_default_timeout(timeout_ms)
    try:
        yield page, Problems(page)
    finally:
        await context.close()


async def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
