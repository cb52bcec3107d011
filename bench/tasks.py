"""Count the asyncio tasks HQ creates per acknowledged message and per broadcast delivery.

HQ runs in this process, on its own event loop in a thread whose task factory counts every task;
the clients (raw Engine.IO/Socket.IO frames over aiohttp websockets) run on another loop, so
only HQ's tasks are counted. ``--hq-source DIR`` measures another checkout (e.g. a git worktree
of an older commit):

    .venv/bin/python bench/tasks.py
    git worktree add /tmp/hq-before c9c10cc && .venv/bin/python bench/tasks.py --hq-source /tmp/hq-before
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

PASSWORD = secrets.token_urlsafe(16)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class CountingServer(threading.Thread):
    """HQ's aiohttp app on a loop of its own whose task factory counts task creations by coroutine."""

    def __init__(self, config: Path, port: int) -> None:
        super().__init__(daemon=True)
        self.config, self.port = config, port
        self.tasks: Counter[str] = Counter()
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()

    def run(self) -> None:
        from aiohttp import web

        from hq.app import create_app
        from hq.config import load_settings

        def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
            self.tasks[getattr(coro, "__qualname__", "?")] += 1
            return asyncio.Task(coro, loop=loop, **kwargs)

        async def serve() -> None:
            app = create_app(load_settings(self.config), on_first_agent=lambda *_: None)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self.loop.set_task_factory(factory)
            self.ready.set()
            await asyncio.Event().wait()

        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(serve())

    def snapshot(self) -> Counter[str]:
        return Counter(self.tasks)


class Raw:
    """A raw websocket Socket.IO client that answers pings."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.acks, self.events = ws, asyncio.Queue(), 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = msg.data
            if data == "2":
                await self.ws.send_str("3")
            elif data.startswith("43"):
                self.acks.put_nowait(data)
            elif data.startswith("42"):
                self.events += 1

    async def call(self, number: int, event: str, payload: Any) -> str:
        await self.ws.send_str(f"42{number}" + json.dumps([event, payload]))
        return await self.acks.get()


async def open_raw(http: aiohttp.ClientSession, url: str, token: str) -> Raw:
    ws = await http.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
    await ws.receive()  # OPEN
    await ws.send_str("40" + json.dumps({"token": token}))
    await ws.receive()  # CONNECT
    return Raw(ws)


async def measure(server: CountingServer, url: str, messages: int, members: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as http:
        async def login(name: str) -> str:
            async with http.post(f"{url}/api/auth/login", json={"username": name, "password": PASSWORD}) as r:
                return (await r.json())["access_token"]
        sender = await open_raw(http, url, await login("sender"))
        await sender.call(0, "message", {"channel": "hq", "text": "warm-up"})
        before = server.snapshot()
        for number in range(1, messages + 1):
            assert '"ok":true' in await sender.call(number, "message", {"channel": "hq", "text": f"m{number}"})
        acked = server.snapshot() - before
        token = await login("member")
        listeners = [await open_raw(http, url, token) for _ in range(members)]
        for listener in listeners:
            await listener.call(1, "join", {"channel": "missions"})
        before = server.snapshot()
        for number in range(1, messages + 1):
            await sender.call(number, "message", {"channel": "missions", "text": f"b{number}"})
        while sum(listener.events for listener in listeners) < messages * members:
            await asyncio.sleep(0.01)
        broadcast = server.snapshot() - before
    per_ack = sum(acked.values()) / messages
    per_delivery = (sum(broadcast.values()) - per_ack * messages) / (messages * members)
    return {"tasks per acknowledged message": per_ack, "tasks per broadcast delivery": per_delivery,
            "by coroutine (messages)": dict(acked.most_common(6)),
            "by coroutine (broadcasts)": dict(broadcast.most_common(6))}


def start_counting_server(source: Path, prefix: str, agents: dict[str, str], extra_config: str = "") -> CountingServer:
    """A fresh data folder with ``agents`` (made by ``source``'s CLI) and HQ started on it, in-process."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    port = free_port()
    config = work / "config.toml"
    config.write_text(f'[server]\nport = {port}\n[auth]\nbcrypt_rounds = 4\n[audit]\npath = "audit.log"\n'
                      + extra_config)
    env = {**os.environ, "PYTHONPATH": str(source)}
    for name, role in agents.items():
        subprocess.run([sys.executable, "-m", "hq", "agents", "add", name, "--role", role, "--password-stdin",
                        "--config", str(config)], input=PASSWORD + "\n", text=True, check=True, env=env,
                       cwd=work, capture_output=True)
    server = CountingServer(config, port)
    server.start()
    if not server.ready.wait(60):
        raise SystemExit("HQ did not start")
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hq-source", help="a checkout whose hq/ to measure (default: this one)")
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--members", type=int, default=50)
    args = parser.parse_args()
    source = Path(args.hq_source or Path(__file__).resolve().parent.parent)
    sys.path.insert(0, str(source))
    # A handler may write to both channels measured; a director would have to log in with a second factor.
    server = start_counting_server(source, "hq-tasks-", {"sender": "handler", "member": "field-operative"},
                                   '[limits]\nevents_per_second = 1e6\nevents_burst = 1000000\n')
    port = server.port
    result = asyncio.run(measure(server, f"http://127.0.0.1:{port}", args.messages, args.members))
    print(json.dumps({"source": str(source), **result}, indent=2))


if __name__ == "__main__":
    main()
