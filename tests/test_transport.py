"""Per-message deflate is declined by default and accepted when configured."""

from __future__ import annotations

import aiohttp

from .support import HQServer


async def negotiated_compression(hq: HQServer) -> int:
    url = f"{hq.url}/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, compress=15) as ws:
            assert (await ws.receive_str()).startswith("0{")  # the Engine.IO open packet still arrives
            return ws.compress


async def test_websocket_compression_is_declined_by_default(hq: HQServer) -> None:
    assert await negotiated_compression(hq) == 0


async def test_websocket_compression_can_be_enabled(hq_factory) -> None:
    hq = hq_factory(server={"websocket_compression": True})
    assert await negotiated_compression(hq) == 15


async def test_foreign_origin_is_refused_and_audited(hq: HQServer) -> None:
    url = f"{hq.url}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers={"Origin": "https://evil.example"}) as response:
            assert response.status == 400
            assert (await response.json())["error"]["code"] == "origin_not_allowed"
        async with session.get(url, headers={"Origin": f"http://127.0.0.1:{hq.port}"}) as response:
            assert response.status == 200
        async with session.get(url) as response:
            assert response.status == 200
    refused = [line for line in hq.audit_lines() if line["event"] == "connection_refused"]
    assert [(r["code"], r["origin"], r["transport"]) for r in refused] == [
        ("origin_not_allowed", "https://evil.example", "polling")]
