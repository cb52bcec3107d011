"""The browser console (contract §7) in real headless Chromium against a real HQ process.

A python-socketio client plays the other agents. Nothing is mocked: the page loads
socket.io-client from HQ, logs in with the HttpOnly cookie and talks Socket.IO to HQ.
"""

from __future__ import annotations

import asyncio
import re
import urllib.request

from playwright.async_api import expect

from ..sio import RecordingClient
from ..support import HQServer
from .conftest import OpenConsole
from .console_page import WAIT_MS


async def agent(hq: HQServer, codename: str, *channels: str) -> RecordingClient:
    """Another agent, connected with the Python client and joined to ``channels``."""
    client = await RecordingClient().connect(hq.url, hq.login(codename)["access_token"], transports=["websocket"])
    for channel in channels:
        assert (await client.call("join", {"channel": channel}))["ok"]
    return client


async def say(client: RecordingClient, channel: str, text: str) -> int:
    ack = await client.call("message", {"channel": channel, "text": text})
    assert ack["ok"], ack
    return ack["id"]


async def test_a_field_operative_sees_a_handlers_message_and_reports_back(shared_hq: HQServer,
                                                                          open_console: OpenConsole) -> None:
    console = await open_console(shared_hq)
    await console.log_in("fox")
    assert await console.status.text_content() == "Connected as fox"
    # Only what fox may read, and only where fox may write.
    assert await console.options(console.channel) == ["missions"]
    assert await console.options(console.send_to) == ["hq"]

    hank = await agent(shared_hq, "hank", "hq")
    await say(hank, "missions", "Proceed to the safehouse at dawn")
    await console.expect_message("hank", "Proceed to the safehouse at dawn")

    await console.message.fill("Safehouse reached, all quiet")
    await console.message.press("Enter")  # Enter sends
    (received,) = await hank.wait_for("message")
    assert (received["channel"], received["from"], received["text"]) == ("hq", "fox", "Safehouse reached, all quiet")
    await expect(console.page.get_by_text(re.compile(r"^Sent to hq \(#\d+\)\.$"))).to_be_visible()
    await hank.close()


async def test_history_on_channel_switch_and_the_screenshot(shared_hq: HQServer, open_console: OpenConsole) -> None:
    dora = await agent(shared_hq, "dora")
    for text in ("Asset ORCHID confirmed in Vienna", "Extraction window opens 02:00 UTC"):
        await say(dora, "missions", text)
    await say(dora, "hq", "Budget review moved to Friday")

    console = await open_console(shared_hq)
    await console.log_in("hank")
    await console.expect_message("dora", "Extraction window opens 02:00 UTC")  # history on arrival
    assert await console.options(console.channel) == ["missions", "hq"]

    await console.channel.select_option("hq")
    await console.expect_message("dora", "Budget review moved to Friday")
    assert "Asset ORCHID confirmed in Vienna" not in await console.feed_texts()
    await console.channel.select_option("missions")
    await console.expect_message("dora", "Asset ORCHID confirmed in Vienna")

    await console.send("Copy. Team Bravo on standby.", to="missions")
    await console.expect_message("hank", "Copy. Team Bravo on standby.")
    await say(dora, "missions", "Go at 02:15. Good luck.")
    await console.expect_message("dora", "Go at 02:15. Good luck.")
    texts = await console.feed_texts()
    assert texts.index("Copy. Team Bravo on standby.") < texts.index("Go at 02:15. Good luck.")

    await console.message.fill("Bravo moving out")
    await console.screenshot("console.png")  # the console in use (docs/screenshots.py takes the README's)
    await dora.close()


async def test_agent_text_is_shown_as_text_never_run(shared_hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(shared_hq)
    await console.log_in("hank")
    dora = await agent(shared_hq, "dora")
    payload = '<img src=x onerror="window.__pwned = 1"><script>window.__pwned = 2</script>'
    await say(dora, "missions", payload)
    await console.expect_message("dora", payload)
    assert await console.page.evaluate("window.__pwned") is None
    await dora.close()


async def test_wrong_password_and_rate_limit_are_refused_in_words(hq_factory, open_console: OpenConsole) -> None:
    hq = hq_factory(agents={"fox": "field-operative"}, limits={"login_failures_per_codename": 2})
    console = await open_console(hq)
    await console.log_in("fox", "not my password at all", wait=False)
    await expect(console.alert).to_have_text("Wrong codename or password.", timeout=WAIT_MS)
    await console.log_in("nobody", "not my password at all", wait=False)
    await expect(console.alert).to_have_text("Wrong codename or password.", timeout=WAIT_MS)
    await console.log_in("fox", "still not my password", wait=False)
    await expect(console.alert).to_have_text("Wrong codename or password.", timeout=WAIT_MS)
    await console.log_in("fox", wait=False)  # the right password, but fox is locked out for now
    await expect(console.alert).to_have_text(re.compile(r"^Too many failed attempts\. Try again in "), timeout=WAIT_MS)
    assert await console.status.text_content() == "Not logged in"
    assert await console.login_button.is_visible()
    assert "jwt" not in await console.cookies()


async def test_an_analyst_is_told_there_is_nothing_to_read_or_write(shared_hq: HQServer,
                                                                  open_console: OpenConsole) -> None:
    console = await open_console(shared_hq)
    await console.log_in("ana")
    await expect(console.page.get_by_text("No channels: your clearance (analyst) may not read any channel.")
                 ).to_be_visible()
    await expect(console.page.get_by_text("Your clearance (analyst) may not send to any channel.")).to_be_visible()
    await expect(console.channel).to_have_count(0)  # not offered at all
    await expect(console.send_button).to_have_count(0)
    await expect(console.feed).to_have_count(0)


async def test_sending_above_clearance_is_refused_in_words(shared_hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(shared_hq)
    await console.log_in("fox")
    assert "missions" not in await console.options(console.send_to)
    # A stale page offering a channel the agent may not write: HQ itself refuses, the page says so.
    await console.page.evaluate("document.getElementById('send-to').add(new Option('missions', 'missions'))")
    await console.send_to.select_option("missions")
    await console.message.fill("Trying to give orders")
    await console.send_button.click()
    await expect(console.alert).to_have_text("Forbidden: your clearance may not send to missions.", timeout=WAIT_MS)
    assert "Trying to give orders" not in await console.feed_texts()


async def test_no_token_reaches_javascript(shared_hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(shared_hq)
    await console.log_in("hank")
    assert await console.page.evaluate("document.cookie") == ""
    assert await console.page.evaluate("localStorage.length + sessionStorage.length") == 0
    cookies = await console.cookies()
    assert cookies["jwt"]["httpOnly"] and cookies["jwt"]["sameSite"] == "Strict" and cookies["jwt"]["path"] == "/"
    assert cookies["hq_refresh"]["httpOnly"] and cookies["hq_refresh"]["path"] == "/api/auth"
    html = await console.page.content()
    assert cookies["jwt"]["value"] not in html and cookies["hq_refresh"]["value"] not in html


async def test_survives_an_hq_restart_without_a_reload(hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(hq)
    await console.log_in("fox")
    hank = await agent(hq, "hank")
    await say(hank, "missions", "Before the restart")
    await console.expect_message("hank", "Before the restart")
    await hank.close()

    await asyncio.to_thread(hq.restart)
    # Sent while the page is still reconnecting: it must arrive through the catch-up history.
    hank = await agent(hq, "hank")
    await say(hank, "missions", "Right after the restart")
    await console.wait_connected()
    await console.expect_message("hank", "Right after the restart")
    await say(hank, "missions", "Live again")
    await console.expect_message("hank", "Live again")
    assert await console.feed_texts() == ["Before the restart", "Right after the restart", "Live again"]
    assert await console.same_document()
    await console.send("Fox back online", to="hq")
    await hank.close()


async def test_token_refresh_without_a_reload(hq_factory, open_console: OpenConsole) -> None:
    hq = hq_factory(agents={"fox": "field-operative", "hank": "handler"},
                    auth={"access_ttl": 4, "expiry_warning": 2, "leeway": 0})
    console = await open_console(hq)
    await console.log_in("fox")
    first_jwt = (await console.cookies())["jwt"]["value"]

    def refreshes() -> int:
        return sum(1 for line in hq.audit_lines() if line["event"] == "token_refreshed" and line["codename"] == "fox")

    deadline = asyncio.get_running_loop().time() + 30
    while refreshes() < 3:  # three token lifetimes' worth of renewals
        assert asyncio.get_running_loop().time() < deadline, hq.audit_lines()
        await asyncio.sleep(0.2)
    await console.wait_connected()
    assert (await console.cookies())["jwt"]["value"] != first_jwt
    hank = await agent(hq, "hank")
    await say(hank, "missions", "Still with us?")
    await console.expect_message("hank", "Still with us?")
    await console.send("Still here", to="hq")
    assert await console.same_document()
    assert await console.alert.text_content() == ""
    assert not [line for line in hq.audit_lines() if line["event"] == "session_revoked"]
    await hank.close()


async def test_two_tabs_share_one_session_through_refreshes(hq_factory, open_console: OpenConsole) -> None:
    """Both tabs are warned at the same moment; only one may spend the rotating refresh token."""
    hq = hq_factory(agents={"fox": "field-operative", "hank": "handler"},
                    auth={"access_ttl": 4, "expiry_warning": 2, "leeway": 0})
    first = await open_console(hq)
    await first.log_in("fox")
    second = await open_console(hq, context=first.page.context)
    await second.wait_connected()  # resumed from the shared cookie, no second login

    deadline = asyncio.get_running_loop().time() + 30
    while sum(1 for line in hq.audit_lines() if line["event"] == "token_refreshed") < 3:
        assert asyncio.get_running_loop().time() < deadline, hq.audit_lines()
        await asyncio.sleep(0.2)
    events = [line["event"] for line in hq.audit_lines()]
    assert "refresh_refused" not in events and "session_revoked" not in events
    hank = await agent(hq, "hank")
    await say(hank, "missions", "Both tabs, one session")
    for tab in (first, second):
        await tab.wait_connected()
        await tab.expect_message("hank", "Both tabs, one session")
        assert await tab.same_document()
    await hank.close()


async def test_a_refused_reconnect_is_explained(hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(hq)
    await console.log_in("fox")
    await asyncio.to_thread(hq.stop)
    await expect(console.status).to_have_text(re.compile(r"^Reconnecting"))
    # While HQ is down the operator changes fox's password: the session is revoked in the store.
    result = await asyncio.to_thread(hq.cli, "agents", "passwd", "fox", "--password-stdin",
                                     stdin="a brand new password\n")
    assert result.returncode == 0, result.stderr
    await asyncio.to_thread(hq.start)
    await expect(console.alert).to_have_text("Your session was ended (logged out or revoked). Log in again.")
    await expect(console.login_button).to_be_visible()
    refusals = [line for line in hq.audit_lines() if line["event"] == "connection_refused"]
    assert refusals and refusals[-1]["code"] == "token_revoked"
    await console.log_in("fox", "a brand new password")
    assert await console.same_document()


async def test_a_disabled_agent_is_told_its_session_ended(hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(hq)
    await console.log_in("fox")
    assert (await asyncio.to_thread(hq.cli, "agents", "disable", "fox")).returncode == 0
    await expect(console.alert).to_have_text("This agent has been disabled. Your session has ended.",
                                             timeout=WAIT_MS)
    await expect(console.login_button).to_be_visible()
    assert await console.status.text_content() == "Not connected"


async def test_log_out(hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(hq)
    await console.log_in("hank")
    await console.page.reload()  # the session resumes from the cookie
    await console.wait_connected()

    await console.logout_button.click()
    await expect(console.status).to_have_text("Logged out", timeout=WAIT_MS)
    await expect(console.login_button).to_be_visible()
    assert await console.alert.text_content() == ""
    cookies = await console.cookies()
    assert "jwt" not in cookies and "hq_refresh" not in cookies
    assert [line["reason"] for line in hq.audit_lines() if line["event"] == "session_revoked"] == ["logged_out"]
    await console.page.reload()
    await expect(console.login_button).to_be_visible(timeout=WAIT_MS)
    await expect(console.status).to_have_text("Not logged in")  # once start-up found no session


async def test_small_screens_keep_every_control(shared_hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(shared_hq, width=380, height=740)
    await console.log_in("hank")
    for control in (console.channel, console.message, console.send_to, console.send_button, console.logout_button):
        await expect(control).to_be_visible()
        box = await control.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 380
    width = await console.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 380


def test_the_console_is_served_by_hq(shared_hq: HQServer) -> None:
    with urllib.request.urlopen(f"{shared_hq.url}/", timeout=10) as response:
        assert b"HQ console" in response.read()
