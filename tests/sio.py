"""A python-socketio client that records what it receives, for tests that wait on events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import socketio


class RecordingClient:
    """Wraps ``socketio.AsyncClient``; every server event lands in ``events`` with its arrival time."""

    def __init__(self, ssl_context: Any = None) -> None:
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context)) if ssl_context else None
        self.sio = socketio.AsyncClient(reconnection=False, http_session=self.session)
        self.events: list[tuple[str, Any, float]] = []
        self.connect_error: Any = None
        self.disconnected_at: float | None = None
        self.sio.on("*", self._record)
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on("disconnect", self._on_disconnect)

    async def _record(self, event: str, data: Any = None) -> None:
        self.events.append((event, data, time.monotonic()))

    async def _on_connect_error(self, data: Any) -> None:
        self.connect_error = data

    async def _on_disconnect(self, *args: Any) -> None:
        self.disconnected_at = time.monotonic()

    async def connect(self, url: str, token: str | None = None, **kwargs: Any) -> "RecordingClient":
        """Connect with ``auth={"token": token}`` (if given); raises ``socketio.exceptions.ConnectionError``."""
        auth = {"token": token} if token is not None else None
        await self.sio.connect(url, auth=auth, wait_timeout=10, **kwargs)
        return self

    async def call(self, event: str, data: Any = None) -> Any:
        """Emit with an acknowledgement and return it."""
        return await self.sio.call(event, data, timeout=10)

    def received(self, event: str) -> list[Any]:
        """Payloads of ``event`` received so far."""
        return [data for name, data, _ in self.events if name == event]

    async def wait_for(self, event: str, count: int = 1, timeout: float = 10) -> list[Any]:
        """Wait until ``count`` ``event``s have arrived; raises AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while len(self.received(event)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout}s for {count} {event!r}; got {self.events!r}")
            await asyncio.sleep(0.02)
        return self.received(event)

    async def wait_disconnected(self, timeout: float = 10) -> float:
        """Wait until the server has closed the socket; returns the monotonic time it happened."""
        deadline = time.monotonic() + timeout
        while self.disconnected_at is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still connected after {timeout}s; events {self.events!r}")
            await asyncio.sleep(0.02)
        return self.disconnected_at

    async def close(self) -> None:
        """Disconnect and release the HTTP session."""
        if self.sio.connected:
            await self.sio.disconnect()
        if self.session is not None:
            await self.session.close()
