"""A plain WebSocket client for tests (aiohttp's ``ws_connect``): JSON frames, acks by ``ref``, pushes kept."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import aiohttp

#: No test waits longer than this for one frame; a missing frame fails the test, it never hangs it.
FRAME_WAIT = 10.0


class PlainClient:
    """One plain WebSocket: ``call`` sends an event and returns its ack; pushed events land in ``pushed``."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.pushed: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []
        self._refs = itertools.count(1)

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, **kwargs: Any) -> "PlainClient":
        """Connect to ``url`` (``ws://.../ws...``)."""
        return cls(await http.ws_connect(url, **kwargs))

    async def send(self, frame: Any) -> None:
        """Send ``frame`` as JSON text (or a ``str`` as it is)."""
        await self.ws.send_str(frame if isinstance(frame, str) else json.dumps(frame))

    async def call(self, event: str, **payload: Any) -> dict[str, Any]:
        """Send ``{"type": event, "ref": n, ...payload}`` and return the ack whose ref is n."""
        ref = next(self._refs)
        await self.send({"type": event, "ref": ref, **payload})
        return await self.ack(ref)

    async def ack(self, ref: Any) -> dict[str, Any]:
        """The ack carrying ``ref`` (frames before it are kept)."""
        while True:
            for ack in self.acks:
                if ack["ref"] == ref:
                    self.acks.remove(ack)
                    return ack
            await self._read()

    async def next_push(self, event: str) -> dict[str, Any]:
        """The first not-yet-taken pushed ``event`` (waits for it)."""
        while True:
            for frame in self.pushed:
                if frame["type"] == event:
                    self.pushed.remove(frame)
                    return frame
            await self._read()

    async def closed(self) -> tuple[int | None, str]:
        """Read until the server closes; returns the close code and reason (other frames are kept)."""
        while True:
            msg = await self.ws.receive(timeout=FRAME_WAIT)
            if msg.type is aiohttp.WSMsgType.CLOSE:  # the server's close frame: its code and reason
                return int(msg.data), msg.extra or ""
            if msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                return self.ws.close_code, ""
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._keep(json.loads(msg.data))

    async def _read(self) -> None:
        msg = await self.ws.receive(timeout=FRAME_WAIT)
        if msg.type is not aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"expected a text frame, got {msg.type!r} {msg.data!r} {msg.extra!r}")
        self._keep(json.loads(msg.data))

    def _keep(self, frame: dict[str, Any]) -> None:
        (self.acks if frame.get("type") == "ack" else self.pushed).append(frame)

    async def close(self) -> None:
        """Close from the client's side."""
        await self.ws.close()


async def gather_pushes(client: PlainClient, event: str, count: int) -> list[dict[str, Any]]:
    """``count`` pushed ``event`` frames, in arrival order."""
    return [await asyncio.wait_for(client.next_push(event), FRAME_WAIT) for _ in range(count)]
