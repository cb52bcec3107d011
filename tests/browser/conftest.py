"""Fixtures for the browser tests: headless Chromium and a console tab on a real HQ."""

from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from ..support import HQServer
from .console_page import ARTIFACTS, WAIT_MS, Console, launch

expect.set_options(timeout=WAIT_MS)

OpenConsole = Callable[..., Awaitable[Console]]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A fresh headless Chromium per test (launching takes well under a second)."""
    async with async_playwright() as playwright:
        chromium = await launch(playwright)
        yield chromium
        await chromium.close()


@pytest.fixture
async def open_console(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[OpenConsole]:
    """``await open_console(hq)``: a new browser profile with the console open; JS errors fail the test."""
    consoles: list[Console] = []

    async def open_one(hq: HQServer, width: int = 1100, height: int = 720,
                       context: BrowserContext | None = None,
                       prepare: Callable[[Page], Awaitable[object]] | None = None) -> Console:
        """A console tab; pass ``context`` for another tab of the same browser profile (shared cookies),
        ``prepare`` to set the page up (e.g. ``page.route``) before the console loads."""
        if context is None:
            context = await browser.new_context(viewport={"width": width, "height": height})
            context.set_default_timeout(WAIT_MS)
        console = Console(await context.new_page(), hq.url)
        consoles.append(console)
        if prepare is not None:
            await prepare(console.page)
        return await console.open()

    yield open_one
    for index, console in enumerate(consoles):
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            await console.page.screenshot(path=str(ARTIFACTS / f"{request.node.name}-{index}.png"))
        except Exception:
            pass  # a closed page has nothing to show
        await console.page.close()
    for context in {id(c.page.context): c.page.context for c in consoles}.values():
        await context.close()
    assert not [e for c in consoles for e in c.errors], [e for c in consoles for e in c.errors]
