"""A real Chromium page speaking to HQ with ``new WebSocket(...)`` and the ``jwt`` cookie (contract §8):
served on an allowed origin it is admitted and served; a page on another origin of the same site
(another port: the browser sends the cookie along) is closed 4003 before its cookie is looked at.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from playwright.async_api import Browser, Page

from ..support import PASSWORD, HQServer
from .console_page import WAIT_MS

#: Runs in the page: opens the socket, sends ``frames`` one by one (each waits for its ack), then
#: closes; resolves with the frames received and how the socket closed.
TALK = """async ({url, frames, timeout}) => {
  const ws = new WebSocket(url);
  const received = [];
  const closed = new Promise(resolve => { ws.onclose = e => resolve({code: e.code, reason: e.reason}); });
  const waiters = [];
  ws.onmessage = e => { const frame = JSON.parse(e.data); received.push(frame); waiters.forEach(w => w()); };
  const opened = await Promise.race([new Promise(r => { ws.onopen = () => r(true); }), closed.then(() => false)]);
  if (opened) {
    for (const frame of frames) {
      ws.send(JSON.stringify(frame));
      const answered = () => received.some(f => f.type === "ack" && f.ref === frame.ref);
      await Promise.race([new Promise(r => { const check = () => answered() && r(); waiters.push(check); check(); }),
                          closed]);
    }
    if (ws.readyState === WebSocket.OPEN) ws.close(1000, "done");
  }
  const timer = new Promise(r => setTimeout(() => r({code: null, reason: "timed out"}), timeout));
  return {received, close: await Promise.race([closed, timer])};
}"""


async def log_in(page: Page, hq: HQServer) -> None:
    """Log in from the page, as the console does: HQ sets the HttpOnly ``jwt`` cookie."""
    status = await page.evaluate("""async ({url, password}) => {
      const r = await fetch(url + "/api/auth/login", {method: "POST", headers: {"Content-Type": "application/json"},
                            body: JSON.stringify({username: "hank", password}), credentials: "include"});
      return r.status;
    }""", {"url": hq.url, "password": PASSWORD})
    assert status == 200


async def talk(page: Page, url: str, frames: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(TALK, {"url": url, "frames": frames, "timeout": WAIT_MS})
    return result


async def test_a_page_on_an_allowed_origin_talks_with_its_cookie(browser: Browser, shared_hq: HQServer) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{shared_hq.url}/")  # HQ's own origin, in [server] allowed_origins
    await log_in(page, shared_hq)
    assert "jwt" in {cookie["name"] for cookie in await context.cookies()}
    ws_url = shared_hq.url.replace("http://", "ws://") + "/ws/hq"
    result = await talk(page, ws_url, [{"type": "message", "ref": "m1", "channel": "hq", "text": "from a page"},
                                       {"type": "history", "ref": "h1", "channel": "hq", "limit": 1}])
    acks = {frame["ref"]: frame for frame in result["received"] if frame["type"] == "ack"}
    assert acks[None]["ok"] is True and acks[None]["channel"] == "hq"  # /ws/hq joined on open
    assert acks["m1"]["ok"] is True and isinstance(acks["m1"]["id"], int)
    assert acks["h1"]["messages"][0]["text"] == "from a page" and acks["h1"]["messages"][0]["from"] == "hank"
    assert result["close"]["code"] == 1000  # closed by the page, not by HQ
    await context.close()


async def test_a_page_on_a_foreign_origin_is_closed_4003_without_riding_the_cookie(
        browser: Browser, shared_hq: HQServer, aiohttp_server: Any) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{shared_hq.url}/")
    await log_in(page, shared_hq)  # the browser now holds hank's cookie for HQ's host
    # Another port of the same host: the same site, so Chromium sends HQ's cookie with the upgrade,
    # but the Origin is not an allowed one.
    async def page_elsewhere(request: web.Request) -> web.Response:
        return web.Response(text="<!doctype html><title>elsewhere</title>", content_type="text/html")
    elsewhere = web.Application()
    elsewhere.router.add_get("/", page_elsewhere)
    foreign_server = await aiohttp_server(elsewhere, host="127.0.0.1")
    foreign = str(foreign_server.make_url("")).rstrip("/")
    await page.goto(f"{foreign}/")
    ws_url = shared_hq.url.replace("http://", "ws://") + "/ws"
    result = await talk(page, ws_url, [{"type": "join", "ref": 1, "channel": "hq"}])
    assert result["close"] == {"code": 4003, "reason": "Forbidden: Origin Not Allowed"}
    assert not [frame for frame in result["received"] if frame.get("ok")]  # nothing was served
    refused = [line for line in shared_hq.audit_lines() if line["event"] == "connection_refused"]
    assert refused[-1]["code"] == "origin_not_allowed" and refused[-1]["origin"] == foreign
    assert refused[-1]["transport"] == "plain_websocket"
    await context.close()
