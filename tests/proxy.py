"""A TCP load balancer for tests: what a simple operator puts in front of several HQ nodes.

Each new client connection goes to the next upstream in turn (round robin); an upstream that
refuses the connection (a dead node) is skipped for the next one. Bytes are copied both ways
unchanged (layer 4: no HTTP parsing, no sticky sessions), and when either side closes or resets,
so does the other, as with HAProxy in ``mode tcp`` or socat. For the tests it remembers, per
connection, the upstream chosen and the first line the client sent (``GET /socket.io/?...``), and
it can hold new connections back for a while (a balancer that is slow to find a live node).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass
class ProxiedConnection:
    """One client connection: the upstream it went to and the client's first line."""

    upstream: int
    first_line: str
    open: bool = True

    @property
    def is_websocket(self) -> bool:
        """An Engine.IO websocket (the console connects by websocket only)."""
        return self.first_line.startswith("GET /socket.io/") and "transport=websocket" in self.first_line


class RoundRobinProxy:
    """Listens on ``127.0.0.1:port`` (0: any free port, known once started) and spreads connections
    over ``upstreams`` (host, port)."""

    def __init__(self, port: int, upstreams: list[tuple[str, int]]) -> None:
        self.port = port
        self.upstreams = upstreams
        self.connections: list[ProxiedConnection] = []
        self._next = 0
        self._admitting = asyncio.Event()
        self._admitting.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "RoundRobinProxy":
        """Listen."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]  # port 0: the one the kernel picked
        return self

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def hold(self) -> None:
        """New connections are accepted but wait before reaching an upstream."""
        self._admitting.clear()

    def release(self) -> None:
        """Let held and new connections through again."""
        self._admitting.set()

    def open_websockets(self) -> list[ProxiedConnection]:
        """The Engine.IO websockets that are open now."""
        return [c for c in self.connections if c.open and c.is_websocket]

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Tracked so that close() can end them; each is one client connection's whole life.
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            await self._admitting.wait()
            first = await reader.read(65536)  # HTTP clients speak first
            if not first:
                return
            for _ in self.upstreams:
                index = self._next
                self._next = (self._next + 1) % len(self.upstreams)
                try:
                    upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstreams[index])
                    break
                except OSError:  # refused: that node is down, try the next one
                    continue
            else:
                return  # every upstream is down: the client sees the connection close
            record = ProxiedConnection(index, first.split(b"\r\n", 1)[0].decode("latin-1"))
            self.connections.append(record)
            upstream_writer.write(first)
            try:
                await asyncio.gather(_copy(reader, upstream_writer), _copy(upstream_reader, writer))
            finally:
                record.open = False
        finally:
            for side in (writer, upstream_writer):
                if side is not None:
                    side.close()


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error on either side, then close ``writer`` (which ends the other copy)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
