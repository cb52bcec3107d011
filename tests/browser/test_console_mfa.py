"""Two-factor authentication in the browser console, in real Chromium on a real HQ.

A director under the default policy (``[auth] mfa_required = ["director"]``) is led into the set-up
right after its password; it enters the password again, reads the key from the page, and the set-up
completes only with a valid code (computed here with pyotp from that key, as the phone's app would).
Then the `Authentication code` field at login: a wrong code, a code, a recovery code once, and the
login limits. Any other agent may set up a factor of its own accord, keyboard only, 375 px wide.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Callable

import pyotp
import pytest
from playwright.async_api import expect

from ..support import PASSWORD, HQServer
from .conftest import OpenConsole
from .console_page import Console

MFA_POLICY = {"mfa_required": ["director"]}
RECOVERY_CODE = re.compile(r"^[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4}){3}$")


def wrong_code(totp: pyotp.TOTP) -> str:
    """Six digits that are none of the codes HQ accepts right now (previous, current, next step)."""
    now = time.time()
    accepted = {totp.at(now + offset) for offset in (-60, -30, 0, 30, 60)}
    return next(code for code in ("000000", "123456", "999999", "424242", "314159", "271828")
                if code not in accepted)


async def page_text(console: Console) -> str:
    """Everything the page holds as text (hidden parts too), to check what is no longer there."""
    return await console.page.evaluate("document.documentElement.outerHTML")


@pytest.fixture
def mfa_hq(hq_factory: Callable[..., HQServer]) -> HQServer:
    """An HQ with the default policy (directors must use a second factor), its login limit 3 per codename."""
    return hq_factory(agents={"dora": "director", "fox": "field-operative"}, auth=MFA_POLICY,
                      limits={"login_failures_per_codename": 3})


async def test_a_director_sets_up_its_factor_at_first_login_then_logs_in_with_codes(
        mfa_hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(mfa_hq)
    page = console.page

    # The password alone leads into the set-up screen (HQ's enrolment-only login): nothing else is shown.
    await console.log_in("dora", wait=False)
    setup = console.setup_section
    await expect(setup).to_be_visible()
    await expect(setup).to_contain_text("Your role must log in with two-factor authentication")
    await expect(console.status).to_have_text("Not connected: set up two-factor authentication first")
    await expect(console.login_button).to_be_hidden()
    await expect(console.channels).to_be_hidden()
    await expect(console.logout_button).to_be_visible()
    await expect(setup.get_by_role("button", name="Cancel")).to_have_count(0)  # required: no way around it

    # A reload during the set-up comes back to it (the enrolment-only cookie is still there).
    await page.reload()
    await expect(console.setup_section).to_be_visible()
    current_password = setup.get_by_label("Current password", exact=True)
    await expect(current_password).to_be_focused()

    # The password again: a wrong one is refused in words; the right one shows the QR code and the key.
    await current_password.fill("not the password at all")
    await current_password.press("Enter")
    await expect(console.alert).to_have_text(re.compile(r"^Wrong password\."))
    await expect(current_password).to_be_focused()
    await current_password.fill(PASSWORD)
    await current_password.press("Enter")
    scan = setup.get_by_role("group", name="Scan the QR code", exact=True)
    await expect(scan).to_be_focused()
    assert await console.alert.text_content() == ""
    secret = await console.shown_secret()
    totp = pyotp.TOTP(secret)
    qr = scan.get_by_role("img", name=re.compile("QR code"))
    await expect(qr).to_have_attribute("src", re.compile(r"^data:image/svg\+xml"))
    # Drawn (the page's Content-Security-Policy lets data: images through), 180 px as HQ made it.
    assert await qr.evaluate("(img) => img.complete && img.naturalWidth") == 180
    link = scan.get_by_role("link", name="Open in an authenticator app on this device")
    assert await link.get_attribute("href") == totp.provisioning_uri(name="dora", issuer_name="HQ")

    # The set-up completes only with a valid code.
    code_field = setup.get_by_label("Code from the app", exact=True)
    await code_field.fill(wrong_code(totp))
    await code_field.press("Enter")
    await expect(console.alert).to_have_text(re.compile(r"^That code does not match\."))
    await expect(console.recovery_group).to_be_hidden()
    await expect(code_field).to_be_focused()
    await code_field.fill(totp.now())
    await code_field.press("Enter")
    codes = await console.shown_recovery_codes()
    assert len(codes) == 10 and len(set(codes)) == 10 and all(RECOVERY_CODE.match(c) for c in codes), codes
    await expect(console.recovery_group).to_be_focused()
    await expect(setup).to_contain_text("Two-factor authentication is on.")
    assert await console.alert.text_content() == ""
    assert secret not in (await page_text(console)).replace(" ", "")  # the key left the page

    # Continue: the console, on the full session the set-up ended in.
    await console.recovery_group.get_by_role("button", name="Continue", exact=True).click()
    await console.wait_connected()
    await expect(setup).to_have_count(0)
    html = await page_text(console)
    assert not [c for c in codes if c in html]  # shown once: gone from the page
    await expect(console.two_factor_card).to_contain_text("On: every login asks for a code from your app. "
                                                          "10 recovery codes left.")
    await expect(console.two_factor_card.get_by_role("button")).to_have_count(0)
    cookies = await console.cookies()
    assert cookies["jwt"]["httpOnly"] and cookies["hq_refresh"]["httpOnly"]
    assert cookies["jwt"]["value"] not in html

    # From now on the password alone is not enough: HQ asks, and the `Authentication code` field appears.
    await console.logout_button.click()
    await expect(console.login_button).to_be_visible()
    await expect(console.otp).to_be_hidden()
    await console.log_in("dora", wait=False)
    await expect(console.otp).to_be_visible()
    await expect(console.otp).to_be_focused()
    assert await console.alert.text_content() == ""  # asked, not refused: the field's description says why
    assert await page.get_by_label("Password", exact=True).input_value() == PASSWORD
    await console.otp.fill(wrong_code(totp))
    await console.otp.press("Enter")
    await expect(console.alert).to_have_text(re.compile(r"^That authentication code is not valid"))
    await expect(console.otp).to_be_focused()
    # The step the set-up used is spent; the next step's code is accepted (a phone clock a little ahead).
    await console.otp.fill(totp.at(time.time() + 30))
    await console.otp.press("Enter")
    await console.wait_connected()
    assert await console.alert.text_content() == ""

    # A recovery code in the same field works once.
    await console.logout_button.click()
    await console.log_in_with_code("dora", codes[0].upper())  # any case, as README says
    await expect(console.two_factor_card).to_contain_text("9 recovery codes left.")
    await console.logout_button.click()
    await console.log_in_with_code("dora", codes[0], wait=False)
    await expect(console.alert).to_have_text(re.compile(r"^That authentication code is not valid"))

    # Wrong codes count like wrong passwords: at the limit (3 here) even a right code is refused.
    for _ in range(2):
        await console.otp.fill(wrong_code(totp))
        await console.otp.press("Enter")
        await expect(console.alert).to_have_text(re.compile(r"^That authentication code is not valid"))
        await console.alert.evaluate("(alert) => { alert.textContent = ''; }")
    await console.otp.fill(codes[1])
    await console.otp.press("Enter")
    await expect(console.alert).to_have_text(re.compile(r"^Too many failed attempts\. Try again in "))
    await expect(console.status).to_have_text("Not logged in")

    factors = [line.get("factor") for line in mfa_hq.audit_lines() if line.get("event") == "login_succeeded"
               and line.get("codename") == "dora"]
    assert factors == ["password", "totp", "totp", "recovery_code"], factors  # set-up login, its end, code, recovery


async def test_any_agent_sets_up_a_factor_from_its_console_keyboard_only_375_px(
        mfa_hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(mfa_hq, width=375, height=740)
    page = console.page
    await console.log_in("fox")
    card = console.two_factor_card
    await expect(card).to_contain_text("Off: logging in needs only your password.")
    set_up = card.get_by_role("button", name="Set up two-factor authentication", exact=True)

    # Cancel leaves things as they were.
    await set_up.click()
    await expect(console.setup_section).to_be_visible()
    await console.setup_section.get_by_role("button", name="Cancel", exact=True).click()
    await expect(console.setup_section).to_have_count(0)
    await expect(set_up).to_be_focused()

    # Keyboard only from here: the button is reached with Tab from the top of the page.
    await page.locator("body").focus()
    await page.evaluate("document.activeElement.blur()")
    for _ in range(40):
        await page.keyboard.press("Tab")
        if await set_up.evaluate("(button) => button === document.activeElement"):
            break
    await expect(set_up).to_be_focused()
    await page.keyboard.press("Enter")
    setup = console.setup_section
    await expect(setup).to_contain_text("every login also asks for a six-digit code")
    await expect(setup.get_by_label("Current password", exact=True)).to_be_focused()
    assert not await console.scrolls_sideways()
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await expect(setup.get_by_role("group", name="Scan the QR code", exact=True)).to_be_focused()
    assert not await console.scrolls_sideways()
    totp = pyotp.TOTP(await console.shown_secret())
    await page.keyboard.press("Tab")  # the otpauth:// link (for an app on this very phone)
    await expect(setup.get_by_role("link")).to_be_focused()
    await page.keyboard.press("Tab")
    await expect(setup.get_by_label("Code from the app", exact=True)).to_be_focused()
    await page.keyboard.type(totp.now())
    await page.keyboard.press("Enter")
    codes = await console.shown_recovery_codes()
    assert len(codes) == 10
    await expect(console.recovery_group).to_be_focused()
    assert not await console.scrolls_sideways()
    await page.keyboard.press("Tab")
    await expect(console.recovery_group.get_by_role("button", name="Continue", exact=True)).to_be_focused()
    await page.keyboard.press("Enter")

    # Back in the same console (never disconnected), the card says it is on.
    await expect(setup).to_have_count(0)
    await expect(card).to_contain_text("10 recovery codes left.")
    await expect(card.get_by_role("heading", name="Two-factor authentication")).to_be_focused()
    assert (await console.status.text_content() or "").startswith("Connected")
    assert await console.same_document()

    # Its next login asks for a code.
    await console.logout_button.click()
    await console.log_in_with_code("fox", totp.at(time.time() + 30))
    assert not await console.scrolls_sideways()


async def test_a_set_up_login_that_runs_out_sends_the_agent_back_to_log_in(
        hq_factory: Callable[..., HQServer], open_console: OpenConsole) -> None:
    # The enrolment-only login lives as long as an access token (here 2 s, no leeway), never more than 10 min.
    hq = hq_factory(agents={"dora": "director"}, auth={**MFA_POLICY, "access_ttl": 2, "leeway": 0})
    console = await open_console(hq)
    await console.log_in("dora", wait=False)
    current_password = console.setup_section.get_by_label("Current password", exact=True)
    await expect(current_password).to_be_focused()
    await asyncio.sleep(3)
    await current_password.fill(PASSWORD)
    await current_password.press("Enter")
    await expect(console.alert).to_have_text(re.compile(r"^The time for the set-up ran out"))
    await expect(console.setup_section).to_have_count(0)
    await expect(console.login_button).to_be_visible()
    await expect(console.status).to_have_text("Not connected")


async def test_logging_out_of_the_set_up_ends_that_login_and_clears_the_key(
        mfa_hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(mfa_hq)
    await console.log_in("dora", wait=False)
    setup = console.setup_section
    await setup.get_by_label("Current password", exact=True).fill(PASSWORD)
    await setup.get_by_role("button", name="Start set-up", exact=True).click()
    secret = await console.shown_secret()
    assert "jwt" in await console.cookies()
    await console.logout_button.click()
    await expect(console.status).to_have_text("Logged out")
    await expect(setup).to_have_count(0)
    await expect(console.login_button).to_be_visible()
    assert secret not in (await page_text(console)).replace(" ", "")
    assert "jwt" not in await console.cookies()
    assert [line for line in mfa_hq.audit_lines() if line.get("event") == "session_revoked"
            and line.get("codename") == "dora" and line.get("reason") == "logged_out"]
    # Nothing was confirmed: the next login leads into the set-up again.
    await console.log_in("dora", wait=False)
    await expect(console.setup_section.get_by_label("Current password", exact=True)).to_be_focused()
