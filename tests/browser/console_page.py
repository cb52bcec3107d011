"""Drive the HQ browser console in real headless Chromium, by the accessible names of contract §7."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Locator, Page, Playwright, expect

from ..support import PASSWORD, ROOT

CHROMIUM = "/usr/bin/chromium"  # Debian's package (`make browser`); Playwright downloads nothing
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = ROOT / "test-artifacts"
WAIT_MS = 15_000  # generous: the machine may be loaded


async def launch(playwright: Playwright) -> Browser:
    """Headless Chromium from the system package."""
    return await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


class Console:
    """One browser tab on HQ's console, with the steps a person takes in it."""

    def __init__(self, page: Page, url: str) -> None:
        self.page = page
        self.url = url
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    # the page's parts, found the way a screen reader user would ------------------------------
    @property
    def status(self) -> Locator:
        return self.page.get_by_role("status")

    @property
    def alert(self) -> Locator:
        return self.page.get_by_role("alert")

    @property
    def feed(self) -> Locator:
        return self.page.get_by_role("log")

    @property
    def channel(self) -> Locator:
        return self.page.get_by_role("combobox", name="Channel", exact=True)

    @property
    def message(self) -> Locator:
        return self.page.get_by_role("textbox", name="Message", exact=True)

    @property
    def send_to(self) -> Locator:
        return self.page.get_by_role("combobox", name="Send to", exact=True)

    @property
    def send_button(self) -> Locator:
        return self.page.get_by_role("button", name="Send", exact=True)

    @property
    def login_button(self) -> Locator:
        return self.page.get_by_role("button", name="Log in", exact=True)

    @property
    def logout_button(self) -> Locator:
        return self.page.get_by_role("button", name="Log out", exact=True)

    @property
    def channels(self) -> Locator:
        """The list labelled `Channels`: one button per readable channel, with its unread count."""
        return self.page.get_by_role("list", name="Channels", exact=True)

    def channel_entry(self, name: str) -> Locator:
        """The `Channels` entry of ``name`` (its accessible name is "NAME" or "NAME N unread")."""
        return self.channels.get_by_role("button", name=re.compile(rf"^{re.escape(name)}( \d+ unread)?$"))

    @property
    def online(self) -> Locator:
        return self.page.get_by_role("list", name="Online", exact=True)

    # directors' sections --------------------------------------------------------------------------
    @property
    def agents_section(self) -> Locator:
        return self.page.get_by_role("region", name="Agents", exact=True)

    @property
    def sessions_section(self) -> Locator:
        return self.page.get_by_role("region", name="Sessions", exact=True)

    def agent_row(self, codename: str) -> Locator:
        """The Agents table's row of ``codename`` (found by its row header)."""
        return self.agents_section.get_by_role("row").filter(
            has=self.page.get_by_role("rowheader", name=codename, exact=True))

    def session_rows(self, codename: str) -> Locator:
        """The Sessions table's row groups (one per session) of ``codename``."""
        return self.sessions_section.locator("tbody").filter(
            has=self.page.get_by_role("rowheader", name=codename, exact=True))

    async def add_agent(self, codename: str, role: str, password: str = "") -> str | None:
        """Fill the `Agents` form and press `Add agent`; returns the password HQ generated (if any)."""
        section = self.agents_section
        await section.get_by_label("New codename", exact=True).fill(codename)
        await section.get_by_label("Role", exact=True).select_option(role)
        await section.get_by_label("Password", exact=True).fill(password)
        await section.get_by_role("button", name="Add agent", exact=True).click()
        await expect(self.agent_row(codename)).to_have_count(1)
        if password:
            return None
        return await self.one_time_password(codename)

    async def one_time_password(self, codename: str) -> str:
        """The password shown once (after `Add agent` or `Reset password`) for ``codename``."""
        shown = self.agents_section.get_by_role("group", name=re.compile(rf"[Pp]assword for {re.escape(codename)}\b"))
        await expect(shown).to_be_visible()
        return (await shown.locator("code").text_content() or "").strip()

    # two-factor authentication --------------------------------------------------------------------
    @property
    def otp(self) -> Locator:
        """The login form's `Authentication code` field (shown once HQ answers ``mfa_required``)."""
        return self.page.get_by_role("textbox", name="Authentication code", exact=True)

    @property
    def setup_section(self) -> Locator:
        """The `Set up two-factor authentication` screen."""
        return self.page.get_by_role("region", name="Set up two-factor authentication", exact=True)

    @property
    def two_factor_card(self) -> Locator:
        """The agent's own `Two-factor authentication` card in the console."""
        return self.page.get_by_role("region", name="Two-factor authentication", exact=True)

    @property
    def recovery_group(self) -> Locator:
        return self.setup_section.get_by_role("group", name="Save your recovery codes", exact=True)

    async def shown_secret(self) -> str:
        """The TOTP key the set-up screen shows as text (spaces between its groups removed)."""
        secret = self.setup_section.get_by_role("group", name="Scan the QR code", exact=True).locator("code")
        await expect(secret).to_have_text(re.compile(r"\S"))
        return "".join((await secret.text_content() or "").split())

    async def shown_recovery_codes(self) -> list[str]:
        """The recovery codes the set-up screen shows once."""
        await expect(self.recovery_group).to_be_visible()
        return [text.strip() for text in await self.recovery_group.get_by_role("listitem").all_text_contents()]

    async def log_in_with_code(self, codename: str, code: str, password: str = PASSWORD, wait: bool = True) -> None:
        """Log in as an agent with a second factor: the password, HQ asks for the code, the code."""
        await self.log_in(codename, password, wait=False)
        await expect(self.otp).to_be_focused()
        await self.otp.fill(code)
        await self.otp.press("Enter")
        if wait:
            await self.wait_connected()

    async def scrolls_sideways(self) -> bool:
        """Whether the page is wider than the window (it must never be at 375 px)."""
        return bool(await self.page.evaluate(
            "document.documentElement.scrollWidth > document.documentElement.clientWidth"))

    # steps ------------------------------------------------------------------------------------
    async def open(self) -> "Console":
        await self.page.goto(self.url)
        # The page marks itself; a reload would lose the mark (tests check nothing reloads).
        await self.page.evaluate("window.__sameDocument = true")
        return self

    async def log_in(self, codename: str, password: str = PASSWORD, wait: bool = True) -> None:
        """Type the credentials and press Enter, as a keyboard user would."""
        await self.page.get_by_label("Codename", exact=True).fill(codename)
        await self.page.get_by_label("Password", exact=True).fill(password)
        await self.page.get_by_label("Password", exact=True).press("Enter")
        if wait:
            await self.wait_connected()

    async def wait_connected(self) -> None:
        await expect(self.status).to_have_text(re.compile(r"^Connected"), timeout=WAIT_MS)

    async def send(self, text: str, to: str | None = None) -> None:
        if to is not None:
            await self.send_to.select_option(to)
        await self.message.fill(text)
        await self.send_button.click()
        await expect(self.page.get_by_text(re.compile(r"^Sent to "))).to_be_visible(timeout=WAIT_MS)

    async def expect_message(self, sender: str, text: str) -> None:
        """Wait until the live feed shows ``text`` from ``sender``."""
        item = self.feed.get_by_role("listitem").filter(has_text=text)
        await expect(item).to_have_count(1, timeout=WAIT_MS)
        await expect(item.locator(".from")).to_have_text(sender)

    async def feed_texts(self) -> list[str]:
        return await self.feed.locator(".text").all_text_contents()

    async def options(self, select: Locator) -> list[str]:
        return [text.strip() for text in await select.locator("option").all_text_contents()]

    async def same_document(self) -> bool:
        """True while the page has not been reloaded since :meth:`open`."""
        return bool(await self.page.evaluate("window.__sameDocument === true"))

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        await self.page.screenshot(path=str(path))
        return path

    async def cookies(self) -> dict[str, dict[str, Any]]:
        return {cookie["name"]: dict(cookie) for cookie in await self.page.context.cookies()}
