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
