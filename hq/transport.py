"""Engine.IO transport tuning, done at aiohttp's public extension points.

python-engineio opens aiohttp WebSockets with aiohttp's default, per-message deflate accepted
whenever the client offers it (every browser and socket.io-client does). That costs a zlib
compressor per connection (~90 KB) and a separate compression of every frame for every recipient.
HQ's messages are small, so HQ declines the extension unless ``server.websocket_compression`` is
on: the middleware hides the client's offer from the WebSocket handshake.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import hdrs, web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def decline_websocket_compression(path_prefix: str = "/socket.io") -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware that removes ``Sec-WebSocket-Extensions`` from WebSocket upgrades under ``path_prefix``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if hdrs.SEC_WEBSOCKET_EXTENSIONS in request.headers and request.path.startswith(path_prefix):
            headers = request.headers.copy()
            del headers[hdrs.SEC_WEBSOCKET_EXTENSIONS]
            request = request.clone(headers=headers)
        return await handler(request)

    return middleware
