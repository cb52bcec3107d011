"""``python -m hq serve --workers N``: a supervisor and N worker processes on one port.

Each test runs a real supervisor on a fresh PostgreSQL database and a private ``redis-server`` (the
machine's Redis on 6379 is shared and never stopped). Which worker serves a connection is read from
``/proc``: the worker that owns the server end of the client's TCP connection.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import asyncpg
import pytest

from .services import create_database, drop_database
from .sio import RecordingClient
from .support import PASSWORD, base_config, free_port, write_config
from .services import PrivateRedis

# Several nodes, outages or worker processes: `make test` runs it, `make test-fast` does not.
pytestmark = pytest.mark.cluster

FIRST_AGENT = re.compile(r"HQ created the first agent: codename '([^']+)', password '([^']+)'")
CLIENTS = 16  # sockets per check: the chance that the kernel puts them all on one of 2 workers is 2**-15


@dataclass
class Supervised:
    """A running ``python -m hq serve --workers N`` (the supervisor) on its own config."""

    workdir: Path
    port: int
    config: Path
    database: str
    process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return (self.workdir / "server.log").read_text()

    def start(self, workers: int = 2, timeout: float = 30) -> "Supervised":
        """Start and wait until the supervisor says every worker serves."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")}
        with open(self.workdir / "server.log", "a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "hq", "serve", "--workers", str(workers), "--config", str(self.config)],
                cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
        deadline = time.monotonic() + timeout
        while "HQ listening on" not in self.log:
            assert self.process.poll() is None, f"exited {self.process.returncode}:\n{self.log}"
            assert time.monotonic() < deadline, f"did not start:\n{self.log}"
            time.sleep(0.05)
        return self

    def workers(self) -> list[int]:
        """Pids of the supervisor's live child processes."""
        assert self.process is not None
        return _children(self.process.pid)

    async def wait_workers(self, count: int, other_than: set[int] = frozenset(), timeout: float = 20) -> list[int]:
        """Wait until ``count`` workers run, none of them in ``other_than``, and the log says all serve."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.workers()
            if len(pids) == count and not set(pids) & other_than and all(
                    re.search(rf"\[worker \d+\] INFO hq.ops.workers: serving \(pid {pid}\)", self.log) for pid in pids):
                return pids
            assert time.monotonic() < deadline, f"workers {pids}:\n{self.log}"
            await asyncio.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, float]:
        """Signal the supervisor and wait for it: its exit code and how long it took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                for pid in self.workers():
                    os.kill(pid, signal.SIGKILL)
                self.process.kill()
                self.process.wait()
        return code, time.monotonic() - started


def _children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces or parentheses, so split after the last ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
            pids.append(int(entry.name))
    return sorted(pids)


def _server_ends(pid: int, port: int) -> set[int]:
    """Remote ports of the established connections that process ``pid`` accepted on ``port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    remote_ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == "01" and inode in inodes and int(local.rsplit(":", 1)[1], 16) == port:
                remote_ports.add(int(remote.rsplit(":", 1)[1], 16))
    return remote_ports


def _serving_worker(client: RecordingClient, workers: list[int], port: int) -> int:
    """The worker pid whose end of ``client``'s websocket it is."""
    local_port = client.sio.eio.ws.get_extra_info("sockname")[1]
    owners = [pid for pid in workers if local_port in _server_ends(pid, port)]
    assert len(owners) == 1, (local_port, owners)
    return owners[0]


async def _connect(hq: Supervised, token: str, count: int = CLIENTS) -> list[RecordingClient]:
    clients = [RecordingClient() for _ in range(count)]
    await asyncio.gather(*(c.connect(hq.url, token, transports=["websocket"]) for c in clients))
    return clients


async def _close(clients: list[RecordingClient]) -> None:
    await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


async def _login(hq: Supervised, codename: str, password: str = PASSWORD) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{hq.url}/api/auth/login", json={"username": codename, "password": password}) as reply:
            assert reply.status == 200, await reply.text()
            return (await reply.json())["access_token"]


def _director(hq: Supervised) -> tuple[str, str]:
    created = FIRST_AGENT.findall(hq.log)
    assert len(created) == 1, hq.log
    return created[0]


@pytest.fixture
async def cluster(tmp_path: Path, private_redis: PrivateRedis) -> AsyncIterator[Supervised]:
    """``serve --workers 2`` on an empty database and a private Redis, stopped and dropped afterwards."""
    url = await create_database()
    hq: Supervised | None = None
    try:
        hq = start_supervised(tmp_path, url, storage={"url": url}, cluster={"redis_url": private_redis.url})
        yield hq
    finally:
        if hq is not None and hq.process is not None and hq.process.poll() is None:
            hq.stop()
        await drop_database(url)


def start_supervised(workdir: Path, database: str, attempts: int = 5, **sections: dict[str, Any]) -> Supervised:
    """``serve --workers 2`` with ``sections``, started. It needs a fixed port (with port 0 each
    worker would bind one of its own), so a free one is chosen here; should another process (an
    xdist worker) bind it first, the supervisor exits naming EADDRINUSE and a new port is tried."""
    config = workdir / "config.toml"
    for attempt in range(attempts):
        port = free_port()
        write_config(config, base_config(port, **sections))
        (workdir / "server.log").unlink(missing_ok=True)
        hq = Supervised(workdir, port, config, database)
        try:
            return hq.start()
        except AssertionError:
            if "already in use" not in hq.log.lower() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def test_two_workers_share_the_port_and_deliver_across_workers(cluster: Supervised) -> None:
    # Both workers started together on an empty database: one director, created by the supervisor.
    codename, password = _director(cluster)
    conn = await asyncpg.connect(cluster.database)
    try:
        assert [r["codename"] for r in await conn.fetch("SELECT codename FROM agents")] == [codename]
    finally:
        await conn.close()
    assert cluster.log.count("HQ listening on") == 1

    workers = await cluster.wait_workers(2)
    clients = await _connect(cluster, await _login(cluster, codename, password))
    try:
        served_by = [_serving_worker(c, workers, cluster.port) for c in clients]
        assert set(served_by) == set(workers), served_by  # the kernel spread them over both
        for client in clients:
            assert (await client.call("join", {"channel": "missions"}))["ok"]
        sender = clients[0]
        ack = await sender.call("message", {"channel": "missions", "text": "across workers"})
        assert ack["ok"], ack
        others = [c for c, pid in zip(clients, served_by) if pid != served_by[0]]
        assert others
        for client in clients[1:]:
            received = await client.wait_for("message", timeout=5)
            assert [m["text"] for m in received] == ["across workers"]
    finally:
        await _close(clients)


async def test_a_killed_worker_is_started_again_and_the_port_keeps_serving(cluster: Supervised) -> None:
    codename, password = _director(cluster)
    token = await _login(cluster, codename, password)
    first, second = await cluster.wait_workers(2)
    os.kill(first, signal.SIGKILL)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        # The survivor serves the port alone until the replacement is up: no request fails.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            async with http.get(f"{cluster.url}/healthz") as reply:
                assert reply.status == 200
    workers = await cluster.wait_workers(2, other_than={first})
    assert second in workers
    assert re.search(rf"worker 1 \(pid {first}\) was killed by SIGKILL; starting it again", cluster.log), cluster.log
    clients = await _connect(cluster, token)
    try:
        assert {_serving_worker(c, workers, cluster.port) for c in clients} == set(workers)
    finally:
        await _close(clients)


async def test_sighup_restarts_the_workers_one_at_a_time(cluster: Supervised) -> None:
    old = await cluster.wait_workers(2)
    codename, password = _director(cluster)
    clients = await _connect(cluster, await _login(cluster, codename, password), count=4)
    outcomes: list[tuple[float, bool]] = []
    done = asyncio.Event()

    async def probe() -> None:
        # A new connection each time, so that the kernel picks a listener for every request.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                         timeout=aiohttp.ClientTimeout(total=2)) as http:
            while not done.is_set():
                try:
                    async with http.get(f"{cluster.url}/healthz") as reply:
                        outcomes.append((time.monotonic(), reply.status == 200))
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    outcomes.append((time.monotonic(), False))
                await asyncio.sleep(0.005)

    prober = asyncio.create_task(probe())
    try:
        await asyncio.sleep(0.2)
        assert cluster.process is not None
        cluster.process.send_signal(signal.SIGHUP)
        new = await cluster.wait_workers(2, other_than=set(old))
        deadline = time.monotonic() + 10
        while "rolling restart done" not in cluster.log:
            assert time.monotonic() < deadline, cluster.log
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
    finally:
        done.set()
        await prober
    failures = [at for at, ok in outcomes if not ok]
    print(f"\nSIGHUP rolling restart: {len(outcomes)} requests on new connections, {len(failures)} failed")
    assert len(outcomes) > 50 and len(failures) <= 2, (len(outcomes), failures)
    # One at a time: the new worker 1 served before the old one was told to stop, then worker 2.
    log = cluster.log
    order = [log.index(f"worker 1 serving (pid {new[0]}); stopping pid {old[0]}"),
             log.index("worker 2 started (pid", log.index("SIGHUP")),
             log.index(f"worker 2 serving (pid {new[1]}); stopping pid {old[1]}")]
    assert order == sorted(order), log
    # Sockets of a stopped worker were closed; a new connection lands on a new worker.
    for client in clients:
        await client.wait_disconnected(timeout=5)
    await _close(clients)
    again = await _connect(cluster, await _login(cluster, codename, password), count=1)
    assert _serving_worker(again[0], new, cluster.port) in new
    await _close(again)


async def test_sigterm_stops_every_worker_and_exits_0(cluster: Supervised) -> None:
    workers = await cluster.wait_workers(2)
    codename, password = _director(cluster)
    clients = await _connect(cluster, await _login(cluster, codename, password), count=4)
    try:
        code, took = cluster.stop(signal.SIGTERM)
    finally:
        await _close(clients)
    print(f"\nSIGTERM with {len(clients)} live sockets: exit {code} after {took:.2f} s")
    assert code == 0, cluster.log
    assert took < 5, took
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    assert "Traceback" not in cluster.log, cluster.log


async def test_workers_end_with_a_killed_supervisor(cluster: Supervised) -> None:
    workers = await cluster.wait_workers(2)
    assert cluster.process is not None
    cluster.process.kill()
    cluster.process.wait()
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _state(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers outlived their supervisor"
        await asyncio.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _serve(config: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "hq", "serve", *args, "--config", str(config)], cwd=config.parent,
                            capture_output=True, text=True, timeout=30, env=env)
    return result, time.monotonic() - started


@pytest.mark.parametrize("sections, missing", [
    ({}, "[storage] url on PostgreSQL and [cluster] redis_url"),
    ({"cluster": {"redis_url": "redis://127.0.0.1:1/0"}}, "[storage] url on PostgreSQL"),
    ({"storage": {"url": "postgresql://hq:a-password@127.0.0.1:1/hq"}}, "[cluster] redis_url"),
])
def test_several_workers_need_postgresql_and_redis(tmp_path: Path, sections: dict, missing: str) -> None:
    config = tmp_path / "config.toml"
    write_config(config, base_config(free_port(), **sections))
    result, took = _serve(config, "--workers", "2")
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"hq: --workers 2 needs {missing}"), result.stderr
    assert "a-password" not in result.stderr
    assert took < 5 and not (tmp_path / "hq.sqlite3").exists()  # refused before anything was made


def test_workers_must_be_at_least_one(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    write_config(config, base_config(free_port()))
    result, _ = _serve(config, "--workers", "0")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "--workers" in result.stderr


def test_several_workers_need_a_fixed_port(tmp_path: Path) -> None:
    """``[server] port = 0`` would give each worker a port of its own: refused in one line, before anything starts."""
    config = tmp_path / "config.toml"
    write_config(config, base_config(0, storage={"url": "postgresql://hq:a-password@127.0.0.1:1/hq"},
                                     cluster={"redis_url": "redis://127.0.0.1:1/0"}))
    result, _ = _serve(config, "--workers", "2")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("hq: --workers needs a fixed port"), result.stderr
