"""A machine-readable description served as JSON (the OpenAPI and AsyncAPI documents)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class ServedDocument:
    """Serves one document, built once, at ``GET path`` (``Cache-Control: no-cache``: a client may
    keep it, but asks again whether it changed with the server)."""

    def __init__(self, path: str, document: dict[str, Any]) -> None:
        self.path = path
        self._document = document

    @property
    def document(self) -> dict[str, Any]:
        """The document (shared: do not change it)."""
        return self._document

    def routes(self) -> list[web.RouteDef]:
        """The document's route."""
        return [web.get(self.path, self.serve)]

    async def serve(self, request: web.Request) -> web.Response:
        """``GET path``: the document."""
        return web.json_response(self._document, headers={"Cache-Control": "no-cache"})
