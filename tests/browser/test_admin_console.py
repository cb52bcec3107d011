"""A director's console (contract §7, §2 "Directors' API") in real headless Chromium against a real HQ.

The director adds, disables, re-enables agents, changes roles, resets passwords and ends sessions
from the `Agents` and `Sessions` sections; the agents concerned are real browser tabs (in their
own browser profiles) or python-socketio clients. Other agents never get those sections, and a
page of another origin in the director's own browser cannot use the director's cookie to change
anything. One HQ serves the whole module; each test works on agents of its own.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.error
import urllib.request
from typing import Any, AsyncIterator, Iterator

import pyotp
import pytest
from aiohttp import web
from playwright.async_api import Page, Response, expect

from ..sio import RecordingClient
from ..support import PASSWORD, HQServer
from ..threaded_hq import make_in_process_server
from .conftest import OpenConsole
from .console_page import WAIT_MS, Console

# Beyond the standard four: agents a test uses alone (tests must not disturb each other's rows).
EXTRA_AGENTS = {"kite": "handler", "lark": "field-operative"}


@pytest.fixture(scope="module")
def admin_hq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HQServer]:
    """One HQ for the module with the standard agents and a few of the tests' own (added over the API: quicker)."""
    server = make_in_process_server(tmp_path_factory.mktemp("admin")).start()
    for codename, role in EXTRA_AGENTS.items():
        status, body = api(server, "/api/agents", "POST", {"codename": codename, "role": role, "password": PASSWORD})
        assert status == 201, body
    yield server
    server.stop()


def api(hq: HQServer, path: str, method: str = "GET", body: Any = None, codename: str = "dora") -> tuple[int, Any]:
    """Call the directors' API with a Bearer token (as a script would); status and parsed body."""
    token = hq.login(codename)["access_token"]
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{hq.url}{path}", method=method, data=data,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def agents_by_name(hq: HQServer) -> dict[str, dict[str, Any]]:
    status, agents = api(hq, "/api/agents")
    assert status == 200, agents
    return {agent["codename"]: agent for agent in agents}


def login_status(hq: HQServer, codename: str, password: str) -> tuple[int, str | None]:
    """HTTP status of a login (and the error code when refused)."""
    try:
        hq.login(codename, password)
        return 200, None
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())["error"]["code"]


def enrol(hq: HQServer, codename: str) -> pyotp.TOTP:
    """Give ``codename`` a confirmed second factor over the directors' API; its authenticator."""
    status, enrollment = api(hq, f"/api/agents/{codename}/mfa", "POST")
    assert status == 200, enrollment
    totp = pyotp.TOTP(enrollment["secret"])
    status, confirmed = api(hq, f"/api/agents/{codename}/mfa/confirm", "POST", {"code": totp.now()})
    assert status == 200, confirmed
    return totp


async def director(hq: HQServer, open_console: OpenConsole, **size: int) -> Console:
    console = await open_console(hq, **size)
    await console.log_in("dora")
    await expect(console.agent_row("dora")).to_have_count(1)
    return console


async def cell_texts(row: Any) -> list[str]:
    return [text.strip() for text in await row.get_by_role("cell").all_text_contents()]


async def test_a_director_adds_an_agent_who_logs_in_then_disables_enables_and_resets_it(
        admin_hq: HQServer, open_console: OpenConsole) -> None:
    console = await director(admin_hq, open_console)
    password = await console.add_agent("wren", "field-operative")
    assert password and len(password) >= 12
    row = console.agent_row("wren")
    assert (await cell_texts(row))[:2] == ["field-operative", "Enabled"]
    assert agents_by_name(admin_hq)["wren"]["role"] == "field-operative"  # really stored by HQ
    await console.agents_section.get_by_role("button", name="Done", exact=True).click()
    await expect(console.agents_section.locator("code.secret")).to_have_text("")  # shown once, then gone

    # The new agent logs in with that password in a browser profile of its own and sees its console.
    wren = await open_console(admin_hq)
    await wren.log_in("wren", password)
    assert await wren.options(wren.channel) == ["missions"]
    await expect(wren.page.get_by_role("region", name="Agents")).to_have_count(0)
    # The director sees it arrive: its live socket in the table, and online in the open channel.
    await expect(console.online.get_by_role("listitem").filter(has_text="wren")).to_have_count(1)
    await expect(row.get_by_role("cell").nth(5)).to_have_text("1")
    await expect(row.get_by_role("cell").nth(4)).not_to_have_text("Never")  # last login

    # Disable: the agent's page says its session ended; the button turns into Enable and keeps focus.
    await row.get_by_role("button", name="Disable", exact=True).click()
    await expect(wren.alert).to_have_text("This agent has been disabled. Your session has ended.")
    await expect(wren.login_button).to_be_visible()
    await expect(row.get_by_role("cell").nth(1)).to_have_text("Disabled")
    enable = row.get_by_role("button", name="Enable", exact=True)
    await expect(enable).to_be_focused()
    assert login_status(admin_hq, "wren", password) == (403, "agent_disabled")

    await enable.click()
    await expect(row.get_by_role("cell").nth(1)).to_have_text("Enabled")
    assert login_status(admin_hq, "wren", password) == (200, None)

    # Reset password: a new one, shown once; the old one no longer works.
    await row.get_by_role("button", name="Reset password", exact=True).click()
    fresh = await console.one_time_password("wren")
    assert fresh and fresh != password
    await expect(console.agents_section.get_by_role("group", name=re.compile("password for wren"))).to_be_focused()
    assert login_status(admin_hq, "wren", password) == (401, "invalid_credentials")
    assert login_status(admin_hq, "wren", fresh) == (200, None)
    await console.agents_section.get_by_role("button", name="Done", exact=True).press("Enter")
    await expect(row.get_by_role("button", name="Reset password", exact=True)).to_be_focused()

    # Each change went through HQ's one path for agent changes, audited as the director at the console.
    actions = [(line["action"], line["actor"], line["interface"]) for line in admin_hq.audit_lines()
               if line["event"] == "admin_action" and line.get("target") == "wren"]
    assert actions == [(action, "dora", "console") for action in ("add", "disable", "enable", "passwd")], actions
    assert await console.alert.text_content() == ""


async def test_refusals_are_said_in_words(admin_hq: HQServer, open_console: OpenConsole) -> None:
    console = await director(admin_hq, open_console)
    section = console.agents_section
    await section.get_by_role("button", name="Add agent", exact=True).click()
    await expect(console.alert).to_have_text("Enter a codename for the new agent.")
    await expect(section.get_by_label("New codename", exact=True)).to_be_focused()

    await section.get_by_label("New codename", exact=True).fill("FOX")
    await section.get_by_role("button", name="Add agent", exact=True).click()
    await expect(console.alert).to_have_text(
        "An agent named FOX already exists (codenames are unique regardless of case).")

    await section.get_by_label("New codename", exact=True).fill("shrike")
    await section.get_by_label("Password", exact=True).fill("too short")
    await section.get_by_role("button", name="Add agent", exact=True).click()
    await expect(console.alert).to_have_text(re.compile(r"^HQ refused that: .*12"))
    await expect(console.agent_row("shrike")).to_have_count(0)
    assert "shrike" not in agents_by_name(admin_hq)

    # The filter box narrows the table (codename, role or state) and says how many rows are shown.
    total = len(agents_by_name(admin_hq))
    search = console.agents_section.get_by_role("searchbox", name="Filter agents", exact=True)
    await search.fill("HAN")
    await expect(console.agent_row("hank")).to_be_visible()
    await expect(console.agent_row("fox")).to_be_hidden()
    await expect(console.agents_section.get_by_text(re.compile(r"^Showing \d+ of \d+ agents\.$"))).to_have_text(
        re.compile(rf"of {total} agents"))
    await search.fill("")
    await expect(console.agent_row("fox")).to_be_visible()


async def test_a_director_ends_a_session(admin_hq: HQServer, open_console: OpenConsole) -> None:
    kite = await RecordingClient().connect(admin_hq.url, admin_hq.login("kite")["access_token"],
                                           transports=["websocket"])
    console = await director(admin_hq, open_console)
    sessions = console.session_rows("kite")
    await expect(sessions).to_have_count(1)
    connection = await cell_texts(sessions.get_by_role("row").first)
    assert "127.0.0.1" in connection and "websocket" in connection, connection

    await sessions.get_by_role("button", name="End session", exact=True).click()
    (ended,) = await kite.wait_for("session_ended")
    assert ended == {"reason": "revoked"}
    await kite.wait_disconnected()
    await expect(sessions).to_have_count(0)
    # Focus moves on to the next session's button (or the heading when none is left), never lost.
    focused = await console.page.evaluate(
        "document.activeElement && document.activeElement.closest('#sessions-section') !== null")
    assert focused
    assert await console.alert.text_content() == ""
    await kite.close()


async def test_a_director_resets_an_agents_second_factor(admin_hq: HQServer, open_console: OpenConsole) -> None:
    """`Reset two-factor` (only on rows with a factor) removes it through HQ's MFA path: the agent's live
    console is ended, the row says Off, the agent logs in with its password alone. HQ unreachable: in words."""
    status, body = api(admin_hq, "/api/agents", "POST", {"codename": "tern", "role": "field-operative",
                                                        "password": PASSWORD})
    assert status == 201, body
    totp = enrol(admin_hq, "tern")
    tern = await open_console(admin_hq)
    await tern.log_in_with_code("tern", totp.at(time.time() + 30))  # the confirming code's step is spent

    console = await director(admin_hq, open_console)
    row, fox = console.agent_row("tern"), console.agent_row("fox")
    reset = row.get_by_role("button", name="Reset two-factor", exact=True)
    await expect(row.get_by_role("cell").nth(2)).to_have_text("On")
    await expect(fox.get_by_role("cell").nth(2)).to_have_text("Off")
    await expect(fox.get_by_role("button", name="Reset two-factor", exact=True)).to_have_count(0)
    await expect(console.agents_section.get_by_role("columnheader", name="Two-factor", exact=True)).to_have_count(1)

    await reset.click()
    await expect(tern.alert).to_have_text("HQ revoked your session (for example after a password change). "
                                          "Log in again.")
    await expect(tern.login_button).to_be_visible()
    await expect(row.get_by_role("cell").nth(2)).to_have_text("Off")
    await expect(reset).to_have_count(0)
    await expect(row.get_by_role("button", name="Reset password", exact=True)).to_be_focused()
    await expect(console.agents_section.get_by_text(re.compile(r"^Two-factor authentication of tern is reset"))
                 ).to_have_count(1)
    assert await console.alert.text_content() == ""
    assert agents_by_name(admin_hq)["tern"]["mfa"] is False
    assert login_status(admin_hq, "tern", PASSWORD) == (200, None)  # a field operative needs no code now
    actions = [(line["action"], line["actor"], line["interface"]) for line in admin_hq.audit_lines()
               if line["event"] == "admin_action" and line.get("target") == "tern"]
    assert actions == [("add", "dora", "api"), ("mfa_enroll", "dora", "api"), ("mfa_confirm", "dora", "api"),
                       ("mfa_reset", "dora", "console")], actions

    # With HQ unreachable the button says so in words and nothing changes (HQ restarts, same data).
    enrol(admin_hq, "tern")
    await console.sessions_section.get_by_role("button", name="Refresh", exact=True).click()
    await expect(reset).to_have_count(1)
    await asyncio.to_thread(admin_hq.stop)
    try:
        await reset.click()
        await expect(console.alert).to_have_text("HQ is unreachable. Check the connection and try again.")
    finally:
        await asyncio.to_thread(admin_hq.start)
    assert agents_by_name(admin_hq)["tern"]["mfa"] is True


async def test_a_director_resets_its_own_second_factor_and_is_logged_out(
        admin_hq: HQServer, open_console: OpenConsole) -> None:
    """The lost-phone case: a director's own row has `Reset two-factor` too; its console ends at once."""
    status, body = api(admin_hq, "/api/agents", "POST", {"codename": "heron", "role": "director",
                                                        "password": PASSWORD})
    assert status == 201, body
    totp = enrol(admin_hq, "heron")
    console = await open_console(admin_hq)
    await console.log_in_with_code("heron", totp.at(time.time() + 30))
    row = console.agent_row("heron")
    await expect(row.get_by_role("cell").nth(2)).to_have_text("On")
    await row.get_by_role("button", name="Reset two-factor", exact=True).click()
    await expect(console.login_button).to_be_visible()
    await expect(console.alert).to_have_text("HQ revoked your session (for example after a password change). "
                                             "Log in again.")
    await expect(console.agents_section).to_have_count(0)
    assert agents_by_name(admin_hq)["heron"]["mfa"] is False


async def test_other_agents_get_no_directors_sections_and_the_api_refuses_them(
        admin_hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(admin_hq)
    await console.log_in("hank")  # a handler: everything below a director
    await expect(console.channels).to_be_visible()
    for name in ("Agents", "Sessions"):
        await expect(console.page.get_by_role("heading", name=name)).to_have_count(0)
    # Not hidden: never built, and the directors' script is not even loaded.
    assert await console.page.evaluate("document.querySelectorAll('#agents-section, #sessions-section').length") == 0
    loaded = await console.page.evaluate("performance.getEntriesByType('resource').map((e) => e.name)")
    assert not [name for name in loaded if name.endswith("/directors.js")], loaded

    answers = await console.page.evaluate("""async () => {
        const send = (path, method, body) => fetch(path, {method, credentials: "include",
            headers: {"X-HQ-Console": "1", "Content-Type": "application/json"},
            body: body === undefined ? undefined : JSON.stringify(body)})
          .then(async (r) => [r.status, (await r.json()).error.code]);
        return [await send("/api/agents", "GET"), await send("/api/sessions", "GET"),
                await send("/api/agents", "POST", {codename: "sneaky", role: "director"}),
                await send("/api/agents/fox", "PATCH", {enabled: false})];
    }""")
    assert answers == [[403, "forbidden"]] * 4
    assert "sneaky" not in agents_by_name(admin_hq) and agents_by_name(admin_hq)["fox"]["enabled"]


async def test_the_channels_list_counts_unread_messages(admin_hq: HQServer, open_console: OpenConsole) -> None:
    console = await open_console(admin_hq)
    await console.log_in("hank")
    await expect(console.channels.get_by_role("button")).to_have_count(2)
    missions, hq = console.channel_entry("missions"), console.channel_entry("hq")
    await expect(missions).to_have_attribute("aria-current", "true")
    await expect(missions).to_have_accessible_name("missions")
    await expect(hq).to_have_accessible_name("hq")

    dora = await RecordingClient().connect(admin_hq.url, admin_hq.login("dora")["access_token"],
                                           transports=["websocket"])
    for text in ("Unread one", "Unread two"):
        assert (await dora.call("message", {"channel": "hq", "text": text}))["ok"]
    await expect(hq).to_have_accessible_name("hq 2 unread")
    assert (await dora.call("message", {"channel": "missions", "text": "Read at once"}))["ok"]
    await console.expect_message("dora", "Read at once")  # the open channel counts nothing
    await expect(missions).to_have_accessible_name("missions")
    assert "Unread one" not in await console.feed_texts()

    await hq.click()  # opening the channel shows what arrived and clears its count
    await expect(hq).to_have_accessible_name("hq")
    await expect(hq).to_have_attribute("aria-current", "true")
    await expect(console.channel).to_have_value("hq")
    await console.expect_message("dora", "Unread two")
    assert (await console.feed_texts())[-2:] == ["Unread one", "Unread two"]

    assert (await dora.call("message", {"channel": "missions", "text": "Meanwhile on missions"}))["ok"]
    await expect(missions).to_have_accessible_name("missions 1 unread")
    await console.channel.select_option("missions")  # the `Channel` selector opens channels too
    await expect(missions).to_have_accessible_name("missions")
    await console.expect_message("dora", "Meanwhile on missions")
    await dora.close()


async def test_what_a_closed_channel_missed_while_away_is_caught_up_and_counted(
        admin_hq: HQServer, open_console: OpenConsole) -> None:
    hq = admin_hq  # restarted below: same port, same data
    console = await open_console(hq)
    await console.log_in("hank")
    dora = await RecordingClient().connect(hq.url, hq.login("dora")["access_token"], transports=["websocket"])
    assert (await dora.call("message", {"channel": "hq", "text": "Before the restart"}))["ok"]
    await expect(console.channel_entry("hq")).to_have_accessible_name("hq 1 unread")
    await dora.close()

    await asyncio.to_thread(hq.restart)
    # Sent while the page is still reconnecting: only the catch-up after the reconnect brings it.
    dora = await RecordingClient().connect(hq.url, hq.login("dora")["access_token"], transports=["websocket"])
    assert (await dora.call("message", {"channel": "hq", "text": "While you were away"}))["ok"]
    await console.wait_connected()
    await expect(console.channel_entry("hq")).to_have_accessible_name("hq 2 unread")
    await console.channel_entry("hq").click()
    await console.expect_message("dora", "While you were away")
    assert (await console.feed_texts())[-2:] == ["Before the restart", "While you were away"]
    assert await console.same_document()
    await dora.close()


async def tab_to(page: Page, description: str, condition: str, presses: int = 60) -> None:
    """Press Tab until ``condition`` (JS, about ``document.activeElement``) holds."""
    for _ in range(presses):
        await page.keyboard.press("Tab")
        if await page.evaluate(f"(() => {{ const el = document.activeElement; return Boolean({condition}); }})()"):
            return
    raise AssertionError(f"Tab never reached {description}")


async def test_keyboard_only_add_an_agent_and_change_its_role(admin_hq: HQServer, open_console: OpenConsole) -> None:
    console = await director(admin_hq, open_console)
    page = console.page
    await tab_to(page, "New codename", "el.id === 'new-codename'")
    await page.keyboard.type("robin")
    await page.keyboard.press("Tab")  # Role
    await expect(console.agents_section.get_by_label("Role", exact=True)).to_be_focused()
    await page.keyboard.press("h")  # type-ahead picks handler
    await expect(console.agents_section.get_by_label("Role", exact=True)).to_have_value("handler")
    await page.keyboard.press("Tab")  # Password: left empty, so HQ generates one
    await page.keyboard.press("Tab")
    add = console.agents_section.get_by_role("button", name="Add agent", exact=True)
    await expect(add).to_be_focused()
    # Keyboard focus is visible.
    assert await add.evaluate("(el) => getComputedStyle(el).outlineStyle") != "none"
    await page.keyboard.press("Enter")
    shown = console.agents_section.get_by_role("group", name=re.compile("Password for robin"))
    await expect(shown).to_be_focused()  # read out at once
    password = await console.one_time_password("robin")
    await page.keyboard.press("Tab")  # Done
    await page.keyboard.press("Space")
    await expect(shown).to_be_hidden()
    await expect(console.agents_section.get_by_label("New codename", exact=True)).to_be_focused()
    assert (await cell_texts(console.agent_row("robin")))[:2] == ["handler", "Enabled"]
    assert login_status(admin_hq, "robin", password) == (200, None)

    # Change role: the row's button opens a dialog; Escape cancels, Save applies; focus comes back.
    await tab_to(page, "robin's Change role",
                 "el.dataset.codename === 'robin' && el.dataset.action === 'role'")
    change = console.agent_row("robin").get_by_role("button", name="Change role", exact=True)
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="Change the role of robin")
    await expect(dialog).to_be_visible()
    new_role = dialog.get_by_label("New role", exact=True)
    await expect(new_role).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(change).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(new_role).to_be_focused()
    await page.keyboard.press("f")  # field-operative
    await expect(new_role).to_have_value("field-operative")
    await page.keyboard.press("Tab")
    await expect(dialog.get_by_role("button", name="Save role", exact=True)).to_be_focused()
    await page.keyboard.press("Enter")
    await expect(dialog).to_be_hidden()
    await expect(console.agent_row("robin").get_by_role("cell").first).to_have_text("field-operative")
    await expect(change).to_be_focused()
    assert agents_by_name(admin_hq)["robin"]["role"] == "field-operative"


async def test_375_px_wide_nothing_scrolls_the_page_sideways(admin_hq: HQServer, open_console: OpenConsole) -> None:
    lark = await RecordingClient().connect(admin_hq.url, admin_hq.login("lark")["access_token"],
                                           transports=["websocket"])
    console = await director(admin_hq, open_console, width=375, height=740)
    await expect(console.session_rows("lark")).to_have_count(1)
    assert await console.page.evaluate("document.documentElement.scrollWidth") <= 375
    # The wide tables scroll inside their own box instead.
    for name in ("Agents table", "Sessions table"):
        box = console.page.get_by_role("region", name=name, exact=True)
        assert await box.evaluate("(el) => el.scrollWidth > el.clientWidth"), name
    for control in (console.channel_entry("missions"), console.channel, console.message, console.send_button,
                    console.agents_section.get_by_label("New codename", exact=True),
                    console.agents_section.get_by_role("button", name="Add agent", exact=True)):
        await control.scroll_into_view_if_needed()
        box = await control.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    await lark.close()


# -------------------------------------------------------------------------------------- cross-site

ATTACK_PAGE = """<!doctype html>
<html><body>
<iframe name="sink" id="sink"></iframe>
<form id="form" method="POST" action="{hq}/api/agents" enctype="text/plain" target="sink">
  <input type="hidden" name='{{"codename":"mallory","role":"director","password":"' value='aaaaaaaaaaaaaaaa"}}'>
</form>
<script>
window.results = [];
async function attempt(name, url, init) {{
  try {{ const r = await fetch(url, init); window.results.push([name, r.type, r.status]); }}
  catch (e) {{ window.results.push([name, "refused", String(e)]); }}
}}
(async () => {{
  const hq = "{hq}";
  const json = (body) => JSON.stringify(body);
  await attempt("simple POST add", hq + "/api/agents", {{method: "POST", mode: "no-cors", credentials: "include",
    headers: {{"Content-Type": "text/plain"}}, body: json({{codename: "mallory2", role: "director"}})}});
  await attempt("simple POST reset", hq + "/api/agents/fox/password", {{method: "POST", mode: "no-cors",
    credentials: "include", headers: {{"Content-Type": "text/plain"}}, body: "{{}}"}});
  await attempt("CORS PATCH", hq + "/api/agents/fox", {{method: "PATCH", credentials: "include",
    headers: {{"Content-Type": "application/json", "X-HQ-Console": "1"}}, body: json({{enabled: false}})}});
  await attempt("CORS POST add", hq + "/api/agents", {{method: "POST", credentials: "include",
    headers: {{"Content-Type": "application/json", "X-HQ-Console": "1"}},
    body: json({{codename: "mallory3", role: "director"}})}});
  await attempt("CORS DELETE", hq + "/api/sessions/" + "0".repeat(32), {{method: "DELETE", credentials: "include",
    headers: {{"X-HQ-Console": "1"}}}});
  await attempt("read agents", hq + "/api/agents", {{credentials: "include"}});
  const sink = document.getElementById("sink");
  await new Promise((resolve) => {{
    sink.addEventListener("load", resolve);
    setTimeout(resolve, 3000);
    document.getElementById("form").submit();
  }});
  window.done = true;
}})();
</script>
</body></html>"""


@pytest.fixture
async def attacker() -> AsyncIterator[int]:
    """A small web server of another origin (its own port) serving ``ATTACK_PAGE`` at ``/?hq=URL``."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(text=ATTACK_PAGE.format(hq=request.query["hq"]), content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()  # port 0: whichever port the kernel picks
    yield runner.addresses[0][1]
    await runner.cleanup()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"], ids=["same-site", "cross-site"])
async def test_a_page_of_another_origin_cannot_use_the_directors_cookie(
        admin_hq: HQServer, open_console: OpenConsole, attacker: int, host: str) -> None:
    """127.0.0.1:other-port is another origin but the same site, so the browser does send the
    SameSite=Strict cookie: only HQ's X-HQ-Console rule stops it. localhost is another site: no cookie."""
    console = await director(admin_hq, open_console)
    before = agents_by_name(admin_hq)
    answered: list[tuple[str, int, str]] = []  # what HQ answered to the other origin's requests
    reading: list[asyncio.Task[None]] = []

    async def record(response: Response) -> None:
        try:
            code = json.loads(await response.text())["error"]["code"]
        except Exception:
            code = ""
        answered.append((response.request.method, response.status, code))

    def on_response(response: Response) -> None:
        if response.url.startswith(admin_hq.url + "/api/"):
            reading.append(asyncio.ensure_future(record(response)))

    evil = await console.page.context.new_page()
    evil.on("response", on_response)
    await evil.goto(f"http://{host}:{attacker}/?hq={admin_hq.url}")
    await evil.wait_for_function("window.done === true", timeout=WAIT_MS)
    results = await evil.evaluate("window.results")
    await asyncio.gather(*reading)
    await evil.close()

    # The browser refused the requests that need CORS (HQ grants none): they never reached HQ, and
    # the page could read no answer.
    by_name = {name: (kind, detail) for name, kind, detail in results}
    for name in ("CORS PATCH", "CORS POST add", "CORS DELETE", "read agents"):
        assert by_name[name][0] == "refused", results
    assert not [method for method, _, _ in answered if method in ("PATCH", "DELETE")], answered
    # The simple POSTs (two fetches and a form) did reach HQ. On the same site they carried the
    # director's cookie, so HQ knew who it was and refused for want of X-HQ-Console (403
    # forbidden); from another site the browser sent no cookie at all (401 token_missing).
    # (The body of a no-cors answer is opaque even to Playwright; the status and the form's body are not.)
    status, code = (403, "forbidden") if host == "127.0.0.1" else (401, "token_missing")
    posts = [(answer_status, answer_code) for method, answer_status, answer_code in answered if method == "POST"]
    assert len(posts) == 3 and {s for s, _ in posts} == {status} and {c for _, c in posts} <= {code, ""}, answered
    assert code in {c for _, c in posts}, answered
    after = agents_by_name(admin_hq)
    assert not [name for name in after if name.lower().startswith("mallory")], after
    assert after["fox"] == before["fox"] | {"sockets": after["fox"]["sockets"], "last_login": after["fox"]["last_login"]}
    assert login_status(admin_hq, "fox", PASSWORD) == (200, None)
    assert await console.alert.text_content() == ""
