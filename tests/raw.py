"""Raw Engine.IO v4 / Socket.IO v5 clients for tests that send what real clients never would."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from yarl import URL


class RawWebSocket:
    """A websocket client that speaks the wire protocol by hand and answers PINGs itself."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.frames: list[str] = []
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, url: str, token: str | None = None,
                   auth: dict[str, Any] | None = None) -> "RawWebSocket":
        """Open a websocket, read the OPEN packet and (with a token or auth) connect to namespace ``/``."""
        ws = await http.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
        raw = cls(ws)
        await raw.wait_frame(lambda f: f.startswith("0{"))
        if token is not None or auth is not None:
            await raw.send("40" + json.dumps(auth if auth is not None else {"token": token}))
            answer = await raw.wait_frame(lambda f: f.startswith(("40", "44")))
            assert answer.startswith("40{"), answer
        return raw

    async def _read(self) -> None:
        try:
            async for msg in self.ws:
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    continue
                if msg.data == "2":
                    await self.ws.send_str("3")
                    continue
                self.frames.append(msg.data)
        finally:
            self.closed.set()

    async def send(self, frame: str) -> None:
        """Send one frame exactly as given."""
        await self.ws.send_str(frame)

    async def wait_frame(self, match: Any, timeout: float = 10) -> str:
        """The first received frame for which ``match(frame)`` is true."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for frame in self.frames:
                if match(frame):
                    return frame
            if self.closed.is_set() or asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no matching frame; got {self.frames!r}")
            await asyncio.sleep(0.01)

    async def call(self, event: str, data: Any, ack_id: int) -> Any:
        """Emit ``event`` with an ack id and return the ack's payload."""
        await self.send(f"42{ack_id}" + json.dumps([event, data]))
        frame = await self.wait_frame(lambda f: f.startswith(f"43{ack_id}["))
        return json.loads(frame[len(f"43{ack_id}"):])[0]

    def events(self, name: str) -> list[Any]:
        """Payloads of server events ``name`` received so far."""
        found = []
        for frame in self.frames:
            if frame.startswith("42["):
                event = json.loads(frame[2:])
                if event[0] == name:
                    found.append(event[1] if len(event) > 1 else None)
        return found

    async def wait_closed(self, timeout: float = 10) -> None:
        """Wait until the server has closed the websocket."""
        await asyncio.wait_for(self.closed.wait(), timeout)

    async def close(self) -> None:
        """Close from this side."""
        await self.ws.close()
        self._reader.cancel()


class RawPoller:
    """A long-polling client: one POST per send, one GET per receive (URLs sent exactly as given)."""

    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.base = f"{url}/socket.io/?EIO=4&transport=polling"
        self.sid = ""

    async def open(self) -> dict[str, Any]:
        """The handshake; returns the OPEN packet's data."""
        async with self.http.get(URL(self.base, encoded=True)) as r:
            assert r.status == 200
            opened: dict[str, Any] = json.loads((await r.text())[1:])
        self.sid = opened["sid"]
        return opened

    async def post(self, body: str | bytes, timeout: float = 10) -> int:
        """POST a payload; returns the HTTP status."""
        async with self.http.post(URL(f"{self.base}&sid={self.sid}", encoded=True), data=body,
                                  headers={"Content-Type": "text/plain"},
                                  timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            await r.read()
            return r.status

    async def get(self, timeout: float = 60) -> tuple[int, list[str]]:
        """One poll: the HTTP status and the packets."""
        async with self.http.get(URL(f"{self.base}&sid={self.sid}", encoded=True),
                                 timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            return r.status, (await r.text()).split("\x1e")

    async def connect(self, token: str) -> str:
        """Connect to namespace ``/``; returns the answer packet."""
        assert await self.post("40" + json.dumps({"token": token})) == 200
        return (await self.get())[1][0]
