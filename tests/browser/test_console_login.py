"""The console's login form keeps what was typed (or autofilled) while start-up was still running.

A password manager fills the form as soon as it appears, before the page has heard back from
``/api/auth/me`` whether a saved session exists. Playwright holds that answer back
(``page.route``) so the form is filled exactly in that window, as an autofill would.
"""

from __future__ import annotations

import asyncio

from playwright.async_api import Page, Route, expect

from ..support import PASSWORD, HQServer
from .conftest import OpenConsole
from .console_page import WAIT_MS, Console


class HeldAnswer:
    """Holds back HQ's answers to ``/api/auth/me`` until :meth:`release`."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self._released = asyncio.Event()

    async def install(self, page: Page) -> None:
        await page.route("**/api/auth/me", self._hold)

    async def _hold(self, route: Route) -> None:
        self.asked.set()
        await self._released.wait()
        await route.continue_()

    def release(self) -> None:
        self._released.set()


async def open_held(hq: HQServer, open_console: OpenConsole) -> tuple[Console, HeldAnswer]:
    """A console whose start-up is waiting for ``/api/auth/me``."""
    held = HeldAnswer()
    console = await open_console(hq, prepare=held.install)
    await asyncio.wait_for(held.asked.wait(), WAIT_MS / 1000)
    await expect(console.status).to_have_text("Checking for a session…")
    return console, held


async def test_a_form_filled_during_start_up_logs_in(shared_hq: HQServer, open_console: OpenConsole) -> None:
    console, held = await open_held(shared_hq, open_console)
    codename = console.page.get_by_label("Codename", exact=True)
    password = console.page.get_by_label("Password", exact=True)
    await codename.fill("fox")
    await password.fill(PASSWORD)
    await password.focus()  # the person is about to press Enter in the password field
    held.release()
    # Start-up finds no saved session and shows the form: what was typed stays, focus stays put.
    await expect(console.status).to_have_text("Not logged in")
    await expect(codename).to_have_value("fox")
    await expect(password).to_have_value(PASSWORD)
    await expect(password).to_be_focused()
    await console.login_button.click()
    await console.wait_connected()
    assert await console.alert.text_content() == ""


async def test_a_login_submitted_during_start_up_is_not_undone(shared_hq: HQServer,
                                                               open_console: OpenConsole) -> None:
    console, held = await open_held(shared_hq, open_console)
    await console.page.get_by_label("Codename", exact=True).fill("fox")
    await console.page.get_by_label("Password", exact=True).fill(PASSWORD)
    await console.login_button.click()  # before start-up has decided anything
    held.release()
    await console.wait_connected()
    # Start-up's own answer (no session when it asked) arrives late and must not show the form again.
    await asyncio.sleep(0.5)
    await expect(console.login_button).to_be_hidden()
    assert await console.status.text_content() == "Connected as fox"
