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

from .addresses import AddressResolver
from .audit import AuditLog

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


def refuse_foreign_origins(allowed: tuple[str, ...], audit: AuditLog, addresses: AddressResolver,
                           path_prefix: str = "/socket.io") -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware refusing Engine.IO requests from browser origins outside ``allowed``.

    python-engineio makes the same check with the same list; doing it here first lets the refusal
    be audited (engineio would only log it once per origin). Requests without ``Origin``
    (non-browser clients) pass.
    """
    allowed_set = frozenset(allowed)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or origin in allowed_set or not request.path.startswith(path_prefix):
            return await handler(request)
        transport = request.query.get("transport", "unknown")
        audit.record("connection_refused", code="origin_not_allowed", address=addresses.client_address(request),
                     transport=transport if transport in ("polling", "websocket") else "unknown",
                     user_agent=request.headers.get(hdrs.USER_AGENT, ""), origin=origin)
        return web.json_response({"error": {"code": "origin_not_allowed",
                                            "message": "this origin is not allowed"}}, status=400)

    return middleware
