"""The browser console: ``GET /`` and its static files, plus ``GET /api/channels`` it lists channels with
and ``GET /api/roles`` (the clearance levels a director's page offers when adding an agent or changing a role).

The files live in the installed package (``hq/web``), read through :mod:`importlib.resources`, so
an HQ installed with ``pip install .`` serves them; ``socket.io-client``'s ESM build is committed in
``hq/web/vendor`` (from npm through package-lock.json, kept in step by tests/test_packaging.py;
never fetched from a CDN). Only the
files named here are served, so no request path can reach anything else.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from typing import Awaitable, Callable, Iterable

from aiohttp import web

from ..auth.clearance import ClearancePolicy
from ..auth.identity import Authenticator
from ..errors import HQError
from .guards import identify_request
from .headers import NO_STORE

# URL path -> (file under hq/web, content type)
STATIC_FILES = {
    "/": ("index.html", "text/html"),
    "/console.js": ("console.js", "text/javascript"),
    "/requests.js": ("requests.js", "text/javascript"),
    "/dom.js": ("dom.js", "text/javascript"),
    "/channels.js": ("channels.js", "text/javascript"),
    "/directors.js": ("directors.js", "text/javascript"),
    "/mfa.js": ("mfa.js", "text/javascript"),
    "/console.css": ("console.css", "text/css"),
    "/vendor/socket.io.esm.min.js": ("vendor/socket.io.esm.min.js", "text/javascript"),
}

# The page runs only its own scripts and styles and talks only to its own origin.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                                "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Always revalidate so an upgraded HQ never runs a stale console.
    "Cache-Control": "no-cache",
}


def web_root() -> Traversable:
    """The folder of the console's files inside the installed ``hq`` package."""
    return resources.files("hq").joinpath("web")


class Console:
    """Serves the console's files and tells a logged-in agent which channels it may use."""

    def __init__(self, authenticator: Authenticator, policy: ClearancePolicy, channels: Iterable[str],
                 root: Traversable | None = None) -> None:
        self._auth = authenticator
        self._policy = policy
        self._channels = list(channels)
        self._root = root if root is not None else web_root()

    def routes(self) -> list[web.RouteDef]:
        """The console's routes: its files, ``GET /api/channels`` and ``GET /api/roles``."""
        files = [web.get(path, self._static(name, content_type), allow_head=True)
                 for path, (name, content_type) in STATIC_FILES.items()]
        return files + [web.get("/api/channels", self.channels), web.get("/api/roles", self.roles)]

    def _static(self, name: str, content_type: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def serve(request: web.Request) -> web.StreamResponse:
            target = self._root.joinpath(name)
            if not target.is_file():
                # Only the vendored client could be missing (a package built without it).
                raise HQError(f"{name} is missing from the HQ package; reinstall HQ", "not_installed")
            return web.Response(body=target.read_bytes(), content_type=content_type, charset="utf-8",
                                headers=SECURITY_HEADERS)
        return serve

    async def channels(self, request: web.Request) -> web.Response:
        """``GET /api/channels``: every channel with whether the caller's stored role may read and write it."""
        principal = await identify_request(self._auth, request)
        role = principal.role
        return web.json_response([
            {"name": name, "read": self._policy.may_read(role, name), "write": self._policy.may_write(role, name)}
            for name in self._channels
        ], headers=NO_STORE)

    async def roles(self, request: web.Request) -> web.Response:
        """``GET /api/roles``: the configured clearance levels, lowest first, to any logged-in agent."""
        await identify_request(self._auth, request)
        return web.json_response(list(self._policy.levels), headers=NO_STORE)
