"""Take the README's screenshots of the browser console (docs/console-*.png) at fixed viewports.

Run it by hand after changing how the console looks:

    .venv/bin/python docs/screenshots.py

It starts a throwaway HQ (tests/support.py) in a temporary folder, gives it a few agents and
messages, and drives headless Chromium (Debian's package, as the browser tests do) through the
login form, the channels, and a director's Agents and Sessions sections. A second throwaway HQ,
with HQ's default second-factor policy, shows a director's first login: the two-factor set-up
screen (QR code and key), then the login form asking for the authentication code (codes computed
with pyotp from the key the page shows, as the phone's app would). CI never runs it, so the
committed images change only when someone decides they should.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import pyotp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.async_api import async_playwright, expect  # noqa: E402

from tests.browser.console_page import Console, launch  # noqa: E402
from tests.sio import RecordingClient  # noqa: E402
from tests.support import PASSWORD, HQServer, make_server  # noqa: E402

DOCS = ROOT / "docs"
WIDE = {"width": 1100, "height": 760}
NARROW = {"width": 375, "height": 740}
AGENTS = {"dora": "director", "hank": "handler", "fox": "field-operative", "kite": "handler", "ana": "analyst"}

MISSIONS = [("dora", "Asset ORCHID confirmed in Vienna."),
            ("dora", "Extraction window opens 02:00 UTC. Team Bravo leads."),
            ("kite", "Bravo in position near the Prater gate."),
            ("hank", "Copy. Keep radio silence until 01:45.")]
HQ_CHANNEL = [("fox", "Safehouse reached, all quiet."), ("fox", "Need fresh papers for ORCHID by Friday.")]


async def agent(hq: HQServer, codename: str, *channels: str) -> RecordingClient:
    """A python-socketio client logged in as ``codename`` and joined to ``channels``."""
    client = await RecordingClient().connect(hq.url, hq.login(codename)["access_token"], transports=["websocket"])
    for channel in channels:
        assert (await client.call("join", {"channel": channel}))["ok"]
    return client


async def say(client: RecordingClient, channel: str, text: str) -> None:
    ack = await client.call("message", {"channel": channel, "text": text})
    assert ack["ok"], ack


async def take(hq: HQServer) -> list[Path]:
    """Every screenshot, written into docs/; returns their paths."""
    written: list[Path] = []
    senders = {codename: await agent(hq, codename, "missions") for codename in ("dora", "kite", "fox")}
    for codename, text in MISSIONS:
        if codename != "hank":
            await say(senders[codename], "missions", text)
    async with async_playwright() as playwright:
        browser = await launch(playwright)

        async def console(size: dict[str, int]) -> Console:
            context = await browser.new_context(viewport=size, color_scheme="light")
            return await Console(await context.new_page(), hq.url).open()

        hank = await console(WIDE)
        await expect(hank.status).to_have_text("Not logged in")
        await hank.page.get_by_label("Codename", exact=True).fill("hank")
        await hank.page.get_by_label("Password", exact=True).fill("correct horse battery staple")
        written.append(DOCS / "console-login.png")
        await hank.page.screenshot(path=str(written[-1]))

        await hank.page.get_by_label("Password", exact=True).press("Enter")
        await hank.wait_connected()
        await hank.send(MISSIONS[-1][1], to="missions")
        for codename, text in HQ_CHANNEL:
            await say(senders[codename], "hq", text)
        await expect(hank.channel_entry("hq")).to_have_accessible_name("hq 2 unread")
        await expect(hank.online.get_by_role("listitem")).to_have_count(4)
        await hank.message.fill("Bravo moving out")
        written.append(DOCS / "console-channels.png")
        await hank.page.screenshot(path=str(written[-1]))

        dora = await console(WIDE)
        await dora.log_in("dora")
        await expect(dora.agent_row("ana")).to_have_count(1)
        await dora.agent_row("ana").get_by_role("button", name="Disable", exact=True).click()
        await expect(dora.agent_row("ana").get_by_role("cell").nth(1)).to_have_text("Disabled")
        await dora.add_agent("wren", "field-operative")
        await dora.agents_section.get_by_label("Filter agents", exact=True).focus()
        written.append(DOCS / "console-agents.png")
        await dora.agents_section.screenshot(path=str(written[-1]))

        await expect(dora.session_rows("hank")).to_have_count(1)
        await dora.sessions_section.get_by_role("button", name="Refresh", exact=True).click()
        written.append(DOCS / "console-sessions.png")
        await dora.sessions_section.screenshot(path=str(written[-1]))

        phone = await console(NARROW)
        await phone.log_in("kite")
        await say(senders["fox"], "hq", "Papers are on their way.")
        await expect(phone.channel_entry("hq")).to_have_accessible_name("hq 1 unread")  # older ones: history
        written.append(DOCS / "console-mobile.png")
        await phone.page.screenshot(path=str(written[-1]))
        await browser.close()
    for client in senders.values():
        await client.close()
    return written


async def take_two_factor(hq: HQServer) -> list[Path]:
    """The two-factor set-up a director is led into at its first login, and the code at its next."""
    written: list[Path] = []
    async with async_playwright() as playwright:
        browser = await launch(playwright)
        context = await browser.new_context(viewport=WIDE, color_scheme="light")
        dora = await Console(await context.new_page(), hq.url).open()
        await dora.log_in("dora", wait=False)
        setup = dora.setup_section
        await setup.get_by_label("Current password", exact=True).fill(PASSWORD)
        await setup.get_by_role("button", name="Start set-up", exact=True).click()
        totp = pyotp.TOTP(await dora.shown_secret())
        await setup.get_by_label("Code from the app", exact=True).fill(totp.now())
        written.append(DOCS / "console-2fa-setup.png")
        await dora.page.screenshot(path=str(written[-1]), full_page=True)

        await setup.get_by_label("Code from the app", exact=True).press("Enter")
        await dora.shown_recovery_codes()
        await dora.recovery_group.get_by_role("button", name="Continue", exact=True).click()
        await dora.wait_connected()
        await dora.logout_button.click()
        await dora.log_in("dora", wait=False)
        await expect(dora.otp).to_be_focused()
        await dora.otp.fill(totp.at(time.time() + 30))
        written.append(DOCS / "console-2fa-login.png")
        await dora.page.screenshot(path=str(written[-1]))
        await browser.close()
    return written


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="hq-screenshots-") as folder:
        hq = make_server(Path(folder) / "hq", AGENTS).start()
        try:
            for path in asyncio.run(take(hq)):
                print(path.relative_to(ROOT))
        finally:
            hq.stop()
        # HQ's default policy: directors must use a second factor (tests/support.py turns it off).
        hq = make_server(Path(folder) / "hq-2fa", {"dora": "director"}, auth={"mfa_required": ["director"]}).start()
        try:
            for path in asyncio.run(take_two_factor(hq)):
                print(path.relative_to(ROOT))
        finally:
            hq.stop()


if __name__ == "__main__":
    main()
