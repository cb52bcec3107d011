"""The origin allow-list: Engine.IO requests from browser origins HQ does not serve, refused before python-engineio.

The plain WebSocket endpoints (``/ws``, ``/ws/{channel}``, ``/missions``) check the same
``[server] allowed_origins`` themselves (hq/realtime/plainws/endpoint.py): they complete the
upgrade and close ``4003 Forbidden: Origin Not Allowed``, a refusal a browser can read (an HTTP
status answered to a WebSocket upgrade reaches a page only as an unexplained 1006).
"""

from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import hdrs, web

from ..addresses import AddressResolver
from ..audit import AuditLog
from ..errors import RequestError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def refuse_foreign_origins(allowed: tuple[str, ...], audit: AuditLog, addresses: AddressResolver,
                           path_prefix: str = "/socket.io") -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware refusing Engine.IO requests from browser origins outside ``allowed``.

    python-engineio makes the same check with the same list; doing it here first lets the refusal
    be audited (engineio would only log it once per origin). Requests without ``Origin``
    (non-browser clients) pass. The refusal is raised: :mod:`hq.http.boundary` answers it (400).
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
        raise RequestError("this origin is not allowed", "origin_not_allowed")

    return middleware
