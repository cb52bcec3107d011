"""An HQ cluster on this machine, measured: cross-node delivery and revocation, failover, messages/s
with one and two workers, and idle sockets over two nodes.

Everything runs on loopback and is started (and stopped) by this script: a fresh PostgreSQL database
on the machine's server (``127.0.0.1:5432``, trust auth, dropped at the end), a private
``redis-server`` on a free port (the machine's Redis on 6379 is never touched), and HQ nodes
(``python -m hq serve``, one process each, or ``serve --workers N``) sharing one configuration: the
same auth secret, ``[storage] url`` and ``[cluster] redis_url``. The load comes from
bench/cluster_loadgen.mjs (JS socket.io-client, websocket transport) and, for the failover,
``agent_client.AgentClient``. In phases 1-5 nothing is pinned: nodes, PostgreSQL, Redis and the load
generators share the machine's cores (say how many when quoting the figures). Phase 6 pins.

Phases, each bounded in count and time:

1. delivery     a sender on node A, members on node B (and, for reference, on A): send -> receive
2. revocation   log in on one node, a socket of that session on the other, log out: -> session_ended
3. idle         N idle authenticated sockets over both nodes: VmRSS of each node before and after,
                CPU of the idle nodes, Redis memory
4. failover     an AgentClient([A, B]) on A, a sender on B; SIGKILL A: time until the client receives
                again (through B), and whether anything was lost, repeated or reordered
5. workers      bench's ``messages`` load on ``serve --workers 1`` and ``--workers 2``: acknowledged
                messages/s, and CPU per message of HQ, the PostgreSQL backends and Redis
6. throughput   acknowledged messages/s of 1 SQLite node and of 1, 2 and 3 nodes on PostgreSQL + Redis
                (``LAYOUTS``), each on one channel and on 8 with their listeners spread over the nodes:
                fresh nodes per run, pinned together to core 0 (taskset), 100 clients per node each
                keeping one message in flight, the load generator on core 1; ratios to the SQLite node;
                CPU per message of each node (storing, member, and a non-member node added to every
                PostgreSQL layout, on core 1), of the PostgreSQL backends and of Redis; a listener per
                channel checks that every id arrives once and in order

Usage: .venv/bin/python bench/cluster.py [--quick] [--phase NAME ...] [--idle-sockets N] [--reps N]
                                         [--hq-ref GIT_REF | --hq-source DIR] [--output NAME]

``--hq-ref`` runs the ``hq`` package of an earlier commit (bench/run.py's ``HQSource``: exported with
``git archive`` into the run's temporary folder, first on the nodes' ``PYTHONPATH``), for a "before".
Writes bench/results/cluster.json (or NAME.json) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import asyncpg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))  # agent_client, when run as a script

from agent_client import AgentClient, Message, RateLimited  # noqa: E402
from run import LOADGEN_CORE, SERVER_CORE, HQSource  # noqa: E402  (bench/, the script's own folder)

RESULTS = BENCH / "results"
LOADGEN = BENCH / "cluster_loadgen.mjs"
PG_ADMIN_URL = os.environ.get("HQ_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PASSWORD = secrets.token_urlsafe(18)
AGENTS = {"hank": "handler", "fox": "field-operative"}
CREDENTIALS = {"handler": {"codename": "hank", "password": PASSWORD},
               "operative": {"codename": "fox", "password": PASSWORD}}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PHASES = ("delivery", "revocation", "idle", "failover", "workers", "throughput")
# The second shape of the workers phase: the same load spread over 8 channels. Each message takes its
# channel's row lock in PostgreSQL (the per-channel id counter) until its commit, so one channel's
# messages are stored one commit after the other whatever the number of workers.
MANY_CHANNELS = tuple(f"c{n}" for n in range(8))


@dataclass(frozen=True)
class Layout:
    """Where the throughput phase puts nodes, senders and listeners.

    ``nodes`` measured nodes, pinned together to one core; ``clients`` senders on each (or on the
    first only); one listener per channel, the listener of channel j on node (nodes - 1 + j) % nodes,
    so that with several nodes most deliveries cross nodes (or, ``listeners_on_last``, all on the
    last node). A PostgreSQL layout also has a non-member node: no member in any channel of the load.
    """

    name: str
    store: str  # "sqlite": the node's own SQLite file, no Redis; "pg": PostgreSQL + Redis
    nodes: int
    description: str
    senders_on_first: bool = False
    listeners_on_last: bool = False

    def listener_node(self, channel_index: int) -> int:
        return self.nodes - 1 if self.listeners_on_last else (self.nodes - 1 + channel_index) % self.nodes

    def role(self, index: int, channels: tuple[str, ...]) -> str:
        """What node ``index`` does with the load on ``channels``: stores it (senders on it), delivers
        it (a listener on it), both, or neither."""
        stores = index == 0 or not self.senders_on_first
        member = any(self.listener_node(j) == index for j in range(len(channels)))
        return {(True, True): "storing+member", (True, False): "storing", (False, True): "member",
                (False, False): "non-member"}[stores, member]


LAYOUTS = (
    Layout("sqlite", "sqlite", 1, "1 node on SQLite, no Redis (the baseline)"),
    Layout("pg1", "pg", 1, "1 node on PostgreSQL + Redis"),
    Layout("pg2", "pg", 2, "2 nodes on PostgreSQL + Redis"),
    Layout("pg3", "pg", 3, "3 nodes on PostgreSQL + Redis"),
    Layout("roles", "pg", 2, "2 nodes: senders on the first only, every listener on the second",
           senders_on_first=True, listeners_on_last=True),
)
BASELINE = LAYOUTS[0]
SHAPES = {"1ch": ("hq",), "8ch": MANY_CHANNELS}
ROLES = ("storing", "member", "storing+member", "non-member")
THROUGHPUT_MEDIANS = ("msgs_per_s", "p50_ms", "p99_ms", "loadgen_cpu", "server_core_cpu", "nodes_us_per_msg",
                      "storing_us_per_msg", "member_us_per_msg", "storing+member_us_per_msg",
                      "non-member_us_per_msg", "non-member_net_us_per_msg", "postgres_cpu", "postgres_us_per_msg",
                      "redis_cpu", "redis_us_per_msg", "drain_ms", "cpu_tick_us_per_msg")

FULL: dict[str, dict[str, Any]] = {
    "delivery": {"members_per_url": 50, "messages": 1000, "interval_ms": 10},
    "bystander": {"clients": 50, "window": 1, "warmup_s": 1, "duration_s": 5},
    "revocation": {"count": 200},
    "idle": {"sockets": 10_000, "holders_per_node": 2, "settle_s": 3, "idle_cpu_s": 10, "revocations": 60},
    "failover": {"reps": 5, "send_interval_s": 0.02},
    "workers": {"clients": 100, "window": 1, "warmup_s": 2, "duration_s": 5, "reps": 3},
    # drain_s: past the 30 s safety round of [cluster] catch_up_interval, so that a message whose
    # publication Redis never carried shows as late (drain_ms) rather than lost.
    "throughput": {"clients": 100, "window": 1, "idle_s": 2, "warmup_s": 2, "duration_s": 5, "drain_s": 40,
                   "reps": 3},
}
QUICK: dict[str, dict[str, Any]] = {
    "delivery": {"members_per_url": 5, "messages": 50, "interval_ms": 20},
    "bystander": {"clients": 10, "window": 1, "warmup_s": 0.5, "duration_s": 1},
    "revocation": {"count": 10},
    "idle": {"sockets": 40, "holders_per_node": 1, "settle_s": 1, "idle_cpu_s": 1, "revocations": 4},
    "failover": {"reps": 1, "send_interval_s": 0.05},
    "workers": {"clients": 10, "window": 1, "warmup_s": 0.5, "duration_s": 1, "reps": 1},
    "throughput": {"clients": 100, "window": 1, "idle_s": 0.5, "warmup_s": 0.5, "duration_s": 1.5, "drain_s": 5,
                   "reps": 1},
}


# processes ---------------------------------------------------------------------------------------
def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_fd_limit(wanted: int) -> tuple[int, int]:
    """Raise RLIMIT_NOFILE (inherited by every process started here) to ``wanted`` if allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), max(hard, wanted)))
    except (ValueError, OSError):  # not root: as high as the hard limit allows
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def rss_kb(pid: int) -> int:
    """VmRSS of a process, KB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all threads); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_sample(pids: list[int]) -> dict[int, float]:
    return {pid: t for pid in pids if (t := cpu_seconds(pid)) is not None}


def cpu_used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two samples by the processes present in both."""
    return sum(after[pid] - before[pid] for pid in before if pid in after)


def children(parent: int) -> list[int]:
    """Pids of a process's live children."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(entry.name))
    return sorted(pids)


def stop_process(process: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Signal a process we started, then SIGKILL it after ``timeout``."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Processes:
    """Every process this script starts, so that all are stopped whatever happens."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[Any]] = []

    def popen(self, command: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        process = subprocess.Popen(command, **kwargs)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            try:
                stop_process(process, timeout=10)
            except Exception as exc:  # keep stopping the others
                print(f"could not stop pid {process.pid}: {exc}", file=sys.stderr)


PROCESSES = Processes()


class PrivateRedis:
    """A ``redis-server`` of our own on a free port, no persistence."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.process = PROCESSES.popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                        "--appendonly", "no"], cwd=workdir, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while self.cli("ping") != "PONG":
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the private redis-server did not start")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cli(self, *args: str) -> str:
        result = subprocess.run(["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=5)
        return result.stdout.strip()

    def used_memory(self) -> int:
        """Redis ``used_memory``, bytes."""
        for line in self.cli("info", "memory").splitlines():
            if line.startswith("used_memory:"):
                return int(line.split(":")[1])
        raise RuntimeError("no used_memory in INFO")


async def _admin(query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=10)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def create_database() -> str:
    """A fresh, empty database on the machine's PostgreSQL; returns its URL."""
    name = f"hq_bench_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def backend_pids(url: str) -> list[int]:
    """PostgreSQL backend processes connected to the database of ``url``."""
    name = url.rsplit("/", 1)[1]
    return [row["pid"] for row in asyncio.run(_admin("SELECT pid FROM pg_stat_activity WHERE datname = $1", name))]


def postgres_version() -> str:
    return asyncio.run(_admin("SHOW server_version"))[0][0]


# HQ ----------------------------------------------------------------------------------------------
def hq_config(database: str | None, redis_url: str | None) -> str:
    """The one configuration every node uses (written into each node's folder): the default channels
    and ``MANY_CHANNELS`` more like ``hq`` (read handler, write field-operative). Without a database
    and Redis: a single node on its own SQLite file (``hq.sqlite3`` in its folder)."""
    extra_channels = "".join(f'\n[channels.{name}]\nread = "handler"\nwrite = "field-operative"\n'
                             for name in MANY_CHANNELS)
    shared = "" if database is None or redis_url is None else f"""
[storage]
url = "{database}"

[cluster]
redis_url = "{redis_url}"
channel = "hq-bench-{uuid.uuid4().hex[:8]}"
"""
    return f"""\
[server]
host = "127.0.0.1"

[auth]
# Logins are not what is measured here (bench/run.py measures them at cost 10).
bcrypt_rounds = 4
secret = "{secrets.token_hex(32)}"

[limits]
events_per_second = 1000000.0
events_burst = 1000000
{shared}
[audit]
path = "audit.log"

[channels.missions]
read = "field-operative"
write = "handler"

[channels.hq]
read = "handler"
write = "field-operative"
{extra_channels}"""


def working_tree() -> HQSource:
    """The ``hq`` package of the tree this bench is in, first on the nodes' ``PYTHONPATH`` (the venv's
    editable install may point at another checkout)."""
    source = HQSource(f"working tree {ROOT} on {sys.executable}", ROOT)
    source.check()
    return source


@dataclass
class Node:
    """A ``python -m hq serve`` process (``workers`` > 1: the supervisor of that many workers)."""

    name: str
    workdir: Path
    config_text: str
    source: HQSource
    workers: int | None = None  # None: plain `serve`; N: `serve --workers N`
    cpus: str | None = None  # pinned to these cores with taskset (it execs: the pid stays the node's)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "server.log"

    def start(self, timeout: float = 60) -> "Node":
        self.launch()
        return self.wait_serving(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to serve (see ``start_all``)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.toml").write_text(self.config_text)
        self.port = free_port()
        command = [self.source.python, "-m", "hq", "serve", "--config", "config.toml", "--port", str(self.port)]
        if self.workers is not None:
            command += ["--workers", str(self.workers)]
        if self.cpus is not None:
            command = ["taskset", "-c", self.cpus, *command]
        with open(self.log, "ab") as out:
            self.process = PROCESSES.popen(command, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                                           env=self.source.env())

    def wait_serving(self, timeout: float = 60) -> "Node":
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while not self._serving():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def _serving(self) -> bool:
        if self.workers is not None and "HQ listening on" not in self.log.read_text(errors="replace"):
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def warnings(self, keep: int = 5) -> dict[str, Any]:
        """How many WARNING and ERROR lines the node logged, and the first ``keep`` of them."""
        lines = [line for line in self.log.read_text(errors="replace").splitlines()
                 if " WARNING " in line or " ERROR " in line]
        return {"count": len(lines), "first": [line[:300] for line in lines[:keep]]}

    def pids(self) -> list[int]:
        """The processes that serve: the node itself, or the supervisor's workers."""
        assert self.process is not None
        return [self.process.pid] if self.workers is None or self.workers == 1 else children(self.process.pid)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            stop_process(self.process, sig)

    def kill(self) -> float:
        """SIGKILL (a crash); returns the monotonic time when the process was gone (reaped: its
        sockets are closed, so nothing sent after this can have passed through it)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        return time.monotonic()

    def cli(self, *args: str, stdin: str = "") -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "config.toml").write_text(self.config_text)
        result = subprocess.run([self.source.python, "-m", "hq", *args, "--config", "config.toml"], input=stdin,
                                capture_output=True, text=True, cwd=self.workdir, env=self.source.env(), timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"hq {' '.join(args)} failed: {result.stderr.strip()}")


def start_all(nodes: list[Node], timeout: float = 60) -> None:
    """Start nodes side by side (their database's schema must exist already), then wait for each."""
    for node in nodes:
        node.launch()
    for node in nodes:
        node.wait_serving(timeout)


# the load generator ------------------------------------------------------------------------------
def loadgen_command(scenario: str, params: dict[str, Any], cpus: str | None = None) -> list[str]:
    command = ["node", str(LOADGEN), "--scenario", scenario, "--params", json.dumps({**params, **CREDENTIALS})]
    return command if cpus is None else ["taskset", "-c", cpus, *command]


def run_loadgen(scenario: str, params: dict[str, Any], timeout: float = 240,
                on_line: Callable[[dict[str, Any]], None] | None = None, cpus: str | None = None) -> dict[str, Any]:
    """Run one scenario to its end (pinned to ``cpus`` if given); ``on_line`` sees every JSON line
    printed before the result."""
    process = PROCESSES.popen(loadgen_command(scenario, params, cpus), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=BENCH)
    deadline = time.monotonic() + timeout
    result: dict[str, Any] | None = None
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the generator's own hard limit ends it, so this loop ends
            if not line.startswith("{"):
                continue
            data = json.loads(line)
            if "scenario" in data:
                result = data
            elif on_line is not None:
                on_line(data)
            if time.monotonic() > deadline:
                break
    finally:
        stop_process(process, timeout=5)
    if result is None:
        assert process.stderr is not None
        return {"scenario": scenario, "error": f"loadgen exit {process.returncode}: {process.stderr.read()[-800:]}"}
    return result


def check(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        raise RuntimeError(f"{result['scenario']}: {result['error']}")
    return result


# phases ------------------------------------------------------------------------------------------
@dataclass
class Bench:
    workdir: Path
    params: dict[str, dict[str, Any]]
    redis: PrivateRedis
    database: str
    config_text: str
    source: HQSource
    a: Node | None = None
    b: Node | None = None
    results: dict[str, Any] = field(default_factory=dict)

    def node(self, name: str, workers: int | None = None, cpus: str | None = None,
             config_text: str | None = None) -> Node:
        folder = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}"
        return Node(name, folder, config_text or self.config_text, self.source, workers, cpus)

    def start_pair(self) -> None:
        self.a = self.node("A").start()
        self.b = self.node("B").start()

    def delivery(self) -> dict[str, Any]:
        assert self.a and self.b
        p = self.params["delivery"]
        result = check(run_loadgen("delivery", {**p, "sender_url": self.a.url, "member_urls": [self.b.url, self.a.url]}))
        cross, same = result["per_url"]
        return {"params": p, "cross_node": cross, "same_node": same, "ack": result["ack"],
                "ack_errors": result["ack_errors"], "complete": result["complete"], "bystander": self._bystander()}

    def _bystander(self) -> dict[str, Any]:
        """What a node pays for a broadcast it has no member for: bench's ``messages`` load on node A
        to a channel nobody joined; node B still receives every one of them from Redis."""
        assert self.a and self.b
        p = self.params["bystander"]
        pids = [self.a.process.pid, self.b.process.pid]  # type: ignore[union-attr]
        samples: dict[str, dict[int, float]] = {}
        wall: dict[str, float] = {}

        def on_line(data: dict[str, Any]) -> None:
            if data.get("window") in ("start", "end"):
                wall[data["window"]] = time.monotonic()
                samples[data["window"]] = cpu_sample(pids)

        # The idle nodes' own background work (feeds, catch-up, heartbeats), subtracted below.
        idle_start, t = cpu_sample(pids), time.monotonic()
        time.sleep(p["duration_s"])
        idle_end, idle_seconds = cpu_sample(pids), time.monotonic() - t
        idle = {pid: (idle_end[pid] - idle_start[pid]) / idle_seconds for pid in pids}
        result = check(run_loadgen("messages", {**p, "url": self.a.url, "channels": ["hq"]}, on_line=on_line))
        seconds = wall["end"] - wall["start"]
        acked = max(1, result["acked"])
        net = {pid: samples["end"][pid] - samples["start"][pid] - idle[pid] * seconds for pid in pids}
        return {"params": p, "msgs_per_s": result["msgs_per_s"],
                "idle_cpu": [round(idle[pid], 3) for pid in pids],
                "sender_node_cpu": round(net[pids[0]] / seconds, 2),
                "bystander_node_cpu": round(net[pids[1]] / seconds, 2),
                "sender_node_us_per_msg": round(1e6 * net[pids[0]] / acked, 1),
                "bystander_node_us_per_msg": round(1e6 * net[pids[1]] / acked, 1)}

    def revocation(self) -> dict[str, Any]:
        assert self.a and self.b
        p = self.params["revocation"]
        return {"params": p, **check(run_loadgen("revocation", {**p, "urls": [self.a.url, self.b.url]}))}

    def idle(self) -> dict[str, Any]:
        assert self.a and self.b
        p = self.params["idle"]
        nodes = [self.a, self.b]
        holders_per_node = p["holders_per_node"]
        per_holder = p["sockets"] // (len(nodes) * holders_per_node)
        # Warm the connect path of both nodes once, so that lazily loaded code is not counted per socket.
        for node in nodes:
            check(run_loadgen("hold", {"url": node.url, "clients": 10, "hold_s": 0.5}))
        time.sleep(p["settle_s"])
        before = {node.name: rss_kb(node.process.pid) for node in nodes}  # type: ignore[union-attr]
        redis_before = self.redis.used_memory()
        holders = []
        started = time.monotonic()
        for node in nodes:
            for _ in range(holders_per_node):
                params = {"url": node.url, "clients": per_holder, "concurrency": 25, "hold_s": 240,
                          "hard_limit_s": 300}
                holders.append((node, PROCESSES.popen(loadgen_command("hold", params), stdin=subprocess.PIPE,
                                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                                      cwd=BENCH)))
        connected: dict[str, int] = {node.name: 0 for node in nodes}
        try:
            for node, holder in holders:
                line = _read_json_line(holder, timeout=180)
                if "connected" not in line:
                    raise RuntimeError(f"a holder did not connect: {line}")
                connected[node.name] += line["connected"]
            connect_s = time.monotonic() - started
            time.sleep(p["settle_s"])
            after = {node.name: rss_kb(node.process.pid) for node in nodes}  # type: ignore[union-attr]
            redis_after = self.redis.used_memory()
            pid_of = {node.name: node.process.pid for node in nodes}  # type: ignore[union-attr]
            cpu_before = cpu_sample(list(pid_of.values()))
            time.sleep(p["idle_cpu_s"])
            cpu_after = cpu_sample(list(pid_of.values()))
            idle_cores = {name: (cpu_after[pid] - cpu_before[pid]) / p["idle_cpu_s"] for name, pid in pid_of.items()}
            # Ending a session's sockets scans every socket of the node (hq/realtime/realtime.py end_sessions).
            loaded_revocation = check(run_loadgen("revocation", {"count": p["revocations"],
                                                                 "urls": [self.a.url, self.b.url]}))
        finally:
            ends = []
            for _, holder in holders:
                try:
                    holder.stdin.write("stop\n")  # type: ignore[union-attr]
                    holder.stdin.close()  # type: ignore[union-attr]
                except OSError:
                    pass
            for _, holder in holders:
                try:
                    ends.append(_read_json_line(holder, timeout=60))
                except Exception as exc:
                    ends.append({"error": str(exc)})
                stop_process(holder, timeout=10)
        per_node = {name: {"sockets": connected[name], "rss_before_kb": before[name], "rss_after_kb": after[name],
                           "kb_per_socket": round((after[name] - before[name]) / max(1, connected[name]), 2),
                           "idle_cpu_cores": round(idle_cores[name], 3)}
                    for name in connected}
        total = sum(connected.values())
        grown = sum(after[name] - before[name] for name in connected)
        return {"params": p, "sockets": total, "connect_s": round(connect_s, 1), "per_node": per_node,
                "kb_per_socket": round(grown / max(1, total), 2),
                "redis_used_memory_change_kb": round((redis_after - redis_before) / 1024, 1),
                "idle_cpu_cores": round(sum(idle_cores.values()), 3),
                "revocation_while_held": {k: loaded_revocation[k] for k in ("n", "p50_ms", "p99_ms", "max_ms",
                                                                            "timeouts")},
                "still_connected": sum(e.get("still_connected", 0) for e in ends),
                "dropped": sum(e.get("dropped", 0) for e in ends)}

    def failover(self) -> dict[str, Any]:
        assert self.a and self.b
        p = self.params["failover"]
        reps = []
        for rep in range(p["reps"]):
            if rep > 0 or self.a.process is None or self.a.process.poll() is not None:
                self.a = self.node("A").start()
            reps.append(asyncio.run(asyncio.wait_for(_failover_once(self.a, self.b, p["send_interval_s"]), 90)))
        receiving = [r["receiving_again_s"] for r in reps]
        joined = [r["joined_on_b_s"] for r in reps]
        return {"params": p, "reps": reps,
                "receiving_again_s": {"median": round(statistics.median(receiving), 3), "max": round(max(receiving), 3)},
                "joined_on_b_s": {"median": round(statistics.median(joined), 3), "max": round(max(joined), 3)},
                "lost": sum(r["lost"] for r in reps), "duplicates": sum(r["duplicates"] for r in reps),
                "out_of_order": sum(r["out_of_order"] for r in reps)}

    def workers(self) -> dict[str, Any]:
        p = self.params["workers"]
        runs: list[dict[str, Any]] = []
        shapes = {"1ch": ["hq"], "8ch": list(MANY_CHANNELS)}
        for rep in range(p["reps"]):
            for shape, channels in shapes.items():
                for count in ((1, 2) if rep % 2 == 0 else (2, 1)):
                    runs.append({"workers": count, "shape": shape, "rep": rep + 1,
                                 **self._messages_run(count, {**p, "channels": channels})})
                    print(f"  workers {count} {shape} rep {rep + 1}: {json.dumps(runs[-1])}", file=sys.stderr,
                          flush=True)
        out: dict[str, Any] = {"params": p, "runs": runs}
        for shape in shapes:
            for count in (1, 2):
                mine = [r for r in runs if r["workers"] == count and r["shape"] == shape]
                out[f"workers_{count}_{shape}"] = {
                    key: _median([r.get(key) for r in mine])
                    for key in ("msgs_per_s", "p50_ms", "p99_ms", "hq_cpu", "postgres_cpu", "redis_cpu",
                                "loadgen_cpu", "hq_us_per_msg", "postgres_us_per_msg", "redis_us_per_msg")}
        return out

    def _messages_run(self, count: int, p: dict[str, Any]) -> dict[str, Any]:
        node = self.node(f"workers{count}", workers=count).start()
        samples: dict[str, dict[str, dict[int, float]]] = {}
        wall: dict[str, float] = {}

        def pids() -> dict[str, list[int]]:
            return {"hq": node.pids(), "postgres": backend_pids(self.database), "redis": [self.redis.process.pid]}

        def on_line(data: dict[str, Any]) -> None:
            which = data.get("window")
            if which in ("start", "end"):
                wall[which] = time.monotonic()
                samples[which] = {role: cpu_sample(group) for role, group in pids().items()}

        try:
            params = {k: v for k, v in p.items() if k != "reps"}
            result = check(run_loadgen("messages", {**params, "url": node.url}, on_line=on_line))
        finally:
            node.stop()
        seconds = wall["end"] - wall["start"]
        out = {k: result[k] for k in ("msgs_per_s", "p50_ms", "p99_ms", "acked", "loadgen_cpu", "errors")}
        for role in ("hq", "postgres", "redis"):
            used = cpu_used(samples["start"][role], samples["end"][role])
            out[f"{role}_cpu"] = round(used / seconds, 2)
            out[f"{role}_us_per_msg"] = round(1e6 * used / result["acked"], 1) if result["acked"] else None
        return out


    def throughput(self) -> dict[str, Any]:
        p = self.params["throughput"]
        runs: list[dict[str, Any]] = []
        for rep in range(p["reps"]):
            order = [(layout, shape) for layout in LAYOUTS for shape in SHAPES]
            for layout, shape in (order if rep % 2 == 0 else order[::-1]):
                runs.append({"layout": layout.name, "shape": shape, "rep": rep + 1,
                             **self._throughput_run(layout, SHAPES[shape], p)})
                print(f"  throughput {layout.name} {shape} rep {rep + 1}: {json.dumps(runs[-1])[:900]}",
                      file=sys.stderr, flush=True)
        out: dict[str, Any] = {"params": p, "hq_source": self.source.description, "runs": runs,
                               "layouts": {layout.name: layout.description for layout in LAYOUTS}}
        for layout in LAYOUTS:
            for shape in SHAPES:
                mine = [r for r in runs if r["layout"] == layout.name and r["shape"] == shape]
                out[f"{layout.name}_{shape}"] = {
                    key: _median([r.get(key) for r in mine]) for key in THROUGHPUT_MEDIANS}
                for key in ("lost", "duplicates", "out_of_order", "errors"):
                    out[f"{layout.name}_{shape}"][key] = sum(r[key] for r in mine)
                out[f"{layout.name}_{shape}"]["drain_ms_max"] = max(r["drain_ms"] for r in mine)
                out[f"{layout.name}_{shape}"]["log_warnings"] = sum(
                    n["log_warnings"]["count"] for r in mine for n in r["nodes"].values())
        # Each repetition's rate against the SQLite node's of the same repetition (the machine's load moves
        # both), then the median of those ratios.
        baseline = {(r["shape"], r["rep"]): r["msgs_per_s"] for r in runs if r["layout"] == BASELINE.name}
        for r in runs:
            base = baseline.get((r["shape"], r["rep"]))
            r["ratio_to_sqlite"] = round(r["msgs_per_s"] / base, 3) if base else None
        for layout in LAYOUTS:
            for shape in SHAPES:
                out[f"{layout.name}_{shape}"]["ratio_to_sqlite"] = _median(
                    [r["ratio_to_sqlite"] for r in runs if r["layout"] == layout.name and r["shape"] == shape], 3)
        return out

    def _throughput_run(self, layout: Layout, channels: tuple[str, ...], p: dict[str, Any]) -> dict[str, Any]:
        """One layout and shape on fresh nodes: the measured nodes pinned together to the server core,
        the non-member node and the load generator to the other core."""
        if layout.store == "sqlite":
            config_text = hq_config(None, None)
            nodes = [self.node(f"{layout.name}-{i}", cpus=SERVER_CORE, config_text=config_text)
                     for i in range(layout.nodes)]
            for node in nodes:  # each its own SQLite file
                for codename, role in AGENTS.items():
                    node.cli("agents", "add", codename, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
            nonmember = None
        else:
            nodes = [self.node(f"{layout.name}-{i}", cpus=SERVER_CORE) for i in range(layout.nodes)]
            nonmember = self.node(f"{layout.name}-nonmember", cpus=LOADGEN_CORE)
        everyone = nodes + ([nonmember] if nonmember else [])
        start_all(everyone)
        try:
            pid_of = {node.name: node.process.pid for node in everyone}  # type: ignore[union-attr]
            # Each node's own background work with no load (heartbeats, feeds, catch-up), subtracted from
            # the non-member node's figure below.
            idle_start, t = cpu_sample(list(pid_of.values())), time.monotonic()
            time.sleep(p["idle_s"])
            idle_end, idle_seconds = cpu_sample(list(pid_of.values())), time.monotonic() - t
            idle = {name: (idle_end[pid] - idle_start[pid]) / idle_seconds for name, pid in pid_of.items()}

            def pids() -> dict[str, list[int]]:
                groups = {name: [pid] for name, pid in pid_of.items()}
                if layout.store == "pg":
                    groups["postgres"] = backend_pids(self.database)
                    groups["redis"] = [self.redis.process.pid]
                return groups

            samples: dict[str, dict[str, dict[int, float]]] = {}
            wall: dict[str, float] = {}

            def on_line(data: dict[str, Any]) -> None:
                which = data.get("window")
                if which in ("start", "end"):
                    wall[which] = time.monotonic()
                    samples[which] = {role: cpu_sample(group) for role, group in pids().items()}

            listeners = [{"url": nodes[layout.listener_node(j)].url, "channel": channel}
                         for j, channel in enumerate(channels)]
            if nonmember is not None:  # a member of a channel the load does not use
                listeners.append({"url": nonmember.url, "channel": "missions", "agent": "operative"})
            senders = nodes[:1] if layout.senders_on_first else nodes
            params = {k: p[k] for k in ("clients", "window", "warmup_s", "duration_s", "drain_s")}
            result = check(run_loadgen("throughput", {**params, "sender_urls": [n.url for n in senders],
                                                      "channels": list(channels), "listeners": listeners},
                                       on_line=on_line, cpus=LOADGEN_CORE))
        finally:
            for node in everyone:
                node.stop()
        seconds = wall["end"] - wall["start"]
        acked = max(1, result["acked"])
        used = {role: cpu_used(samples["start"][role], samples["end"][role]) for role in samples["start"]}
        per_node = {}
        for index, node in enumerate(everyone):
            per_node[node.name] = {
                "role": layout.role(index, channels) if index < len(nodes) else "non-member",
                "acked_through": result["acked_per_url"].get(node.url, 0),
                "cpu": round(used[node.name] / seconds, 3), "idle_cpu": round(idle[node.name], 3),
                "us_per_msg": round(1e6 * used[node.name] / acked, 1),
                "net_us_per_msg": round(1e6 * (used[node.name] - idle[node.name] * seconds) / acked, 1),
                "log_warnings": node.warnings()}
        tallies = result["listeners"]
        out = {k: result[k] for k in ("msgs_per_s", "p50_ms", "p99_ms", "acked", "loadgen_cpu", "errors",
                                      "first_error", "drain_ms")}
        # /proc/<pid>/stat counts CPU in clock ticks: one tick, spread over the window's messages, is the
        # smallest difference these figures can show (it matters for a node that should spend nothing).
        out.update({"load_average": load_average(), "cpu_tick_us_per_msg": round(1e6 / CLK_TCK / acked, 2),
                    "nodes": per_node, "listeners": tallies,
                    "server_core_cpu": round(sum(used[n.name] for n in nodes) / seconds, 3),
                    "lost": sum(t["lost"] for t in tallies), "duplicates": sum(t["duplicates"] for t in tallies),
                    "out_of_order": sum(t["out_of_order"] for t in tallies),
                    "nodes_us_per_msg": round(1e6 * sum(used[n.name] for n in nodes) / acked, 1)})
        for role in ROLES:
            names = [name for name, n in per_node.items() if n["role"] == role]
            out[f"{role}_us_per_msg"] = per_node[names[0]]["us_per_msg"] if names else None
        if nonmember is not None:
            out["non-member_net_us_per_msg"] = per_node[nonmember.name]["net_us_per_msg"]
        for backend in ("postgres", "redis"):
            out[f"{backend}_cpu"] = round(used[backend] / seconds, 3) if backend in used else None
            out[f"{backend}_us_per_msg"] = round(1e6 * used[backend] / acked, 1) if backend in used else None
        return out


def _read_json_line(process: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    """The next JSON line a holder prints (bounded in time: the holder has its own hard limit too)."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            return {"error": f"exit {process.poll()}"}
        if line.startswith("{"):
            return json.loads(line)
    return {"error": "timeout"}


def _median(values: list[Any], digits: int = 2) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(numbers), digits) if numbers else None


async def _failover_once(a: Node, b: Node, interval: float) -> dict[str, Any]:
    """AgentClient([A, B]) joined to #missions on A; hank sends through B; SIGKILL A."""
    fox = AgentClient([a.url, b.url])  # the defaults an operator gets
    hank = AgentClient(b.url)
    received: list[tuple[float, Message]] = []
    acked: list[tuple[float, int]] = []  # (when the send started, id)
    stop = asyncio.Event()

    async def send() -> None:
        n = 0
        for _ in range(int(60 / interval)):  # bounded; stopped well before
            if stop.is_set():
                return
            try:
                sent = time.monotonic()
                message_id = await hank.send("missions", f"tick {n}")
                acked.append((sent, message_id))
                n += 1
            except RateLimited:
                pass
            await asyncio.sleep(interval)

    async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"failover: timed out waiting for {what}")
            await asyncio.sleep(0.002)

    sender: asyncio.Task[None] | None = None
    try:
        await fox.login("fox", PASSWORD)
        await fox.connect(["missions"])
        assert fox.url == a.url, fox.url
        fox.on_message(lambda m: received.append((time.monotonic(), m)))
        await hank.login("hank", PASSWORD)
        await hank.connect()
        sender = asyncio.create_task(send())
        await until(lambda: len(received) >= 20, 15, "live messages on A")
        killed = a.kill()
        await until(lambda: fox.connected and fox.url == b.url, 30, "the client to join on B")
        joined = time.monotonic() - killed
        # Receiving again: a message sent after node A was gone (so only B can have brought it) arrives.
        after_kill = lambda: {i for t, i in acked if t > killed}  # noqa: E731
        await until(lambda: any(m.id in after_kill() for _, m in received), 30, "a message through B")
        receiving = next(t for t, m in received if m.id in after_kill()) - killed
        await asyncio.sleep(1.0)
        stop.set()
        await sender
        first = received[0][1].id
        stored: list[int] = []
        for _ in range(100):  # pages of 500, bounded
            page = [m.id for m in await hank.history("missions", after_id=stored[-1] if stored else first - 1,
                                                     limit=500)]
            stored += page
            if len(page) < 500:
                break
        await until(lambda: len(received) >= len(stored), 15, "the client to catch up")
        await asyncio.sleep(0.3)
        ids = [m.id for _, m in received]
        expected = stored
        return {"joined_on_b_s": round(joined, 3), "receiving_again_s": round(receiving, 3),
                "messages": len(expected), "lost": len(set(expected) - set(ids)),
                "duplicates": len(ids) - len(set(ids)),
                "out_of_order": sum(1 for x, y in zip(ids, ids[1:]) if y <= x),
                "recovered_from_history": fox.stats.recovered, "failovers": fox.stats.failovers}
    finally:
        stop.set()
        if sender is not None and not sender.done():
            sender.cancel()
        await fox.close()
        await hank.close()


# report ------------------------------------------------------------------------------------------
def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:,.0f}" if abs(value) >= 100 else (f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}")
    else:
        text = f"{value:,}"
    return f"{text}{unit}"


def table(results: dict[str, Any]) -> str:
    rows = ["| phase | measure | value |", "| --- | --- | ---: |"]
    d = results.get("delivery")
    if d:
        p = d["params"]
        shape = f"{p['members_per_url']} members per node, {1000 / p['interval_ms']:.0f} msg/s, {p['messages']} messages"
        for key, label in (("cross_node", "sender on A, members on B"), ("same_node", "sender on A, members on A")):
            g = d[key]
            rows.append(f"| delivery | {label}: p50 / p99 / max ms ({shape}) | "
                        f"{_fmt(g['p50_ms'])} / {_fmt(g['p99_ms'])} / {_fmt(g['max_ms'])} |")
        rows.append(f"| delivery | lost / out of order (all members) | "
                    f"{sum(d[k]['expected'] - d[k]['received'] for k in ('cross_node', 'same_node'))} / "
                    f"{sum(d[k]['out_of_order'] for k in ('cross_node', 'same_node'))} |")
        rows.append(f"| delivery | sender's ack p50 / p99 ms | {_fmt(d['ack']['p50_ms'])} / {_fmt(d['ack']['p99_ms'])} |")
        by = d["bystander"]
        rows.append(f"| delivery | a channel nobody joined, messages to A ({_fmt(by['msgs_per_s'])}/s): CPU µs per message "
                    f"on A (stores, acks, publishes) / on B (only receives it from Redis) | "
                    f"{_fmt(by['sender_node_us_per_msg'])} / {_fmt(by['bystander_node_us_per_msg'])} |")
    r = results.get("revocation")
    if r:
        rows.append(f"| revocation | logout on one node → session_ended on the other: p50 / p99 / max ms (n={r['n']}) | "
                    f"{_fmt(r['p50_ms'])} / {_fmt(r['p99_ms'])} / {_fmt(r['max_ms'])} |")
        rows.append(f"| revocation | not ended within 5 s | {r['timeouts']} |")
    i = results.get("idle")
    if i:
        rows.append(f"| idle | sockets held over 2 nodes (connected in {i['connect_s']} s) | {i['sockets']:,} |")
        for name, n in i["per_node"].items():
            rows.append(f"| idle | node {name}: sockets, VmRSS before → after MB, KB per socket | {n['sockets']:,}, "
                        f"{n['rss_before_kb'] / 1024:.0f} → {n['rss_after_kb'] / 1024:.0f}, {_fmt(n['kb_per_socket'])} |")
        rows.append(f"| idle | RSS per idle socket, both nodes, KB | {_fmt(i['kb_per_socket'])} |")
        rows.append(f"| idle | CPU of both nodes while idle (Engine.IO pings every 25 s), cores | {_fmt(i['idle_cpu_cores'])} |")
        rows.append(f"| idle | Redis used_memory change, KB (the socket registry: one record per socket) | "
                    f"{_fmt(i['redis_used_memory_change_kb'])} |")
        rows.append(f"| idle | dropped while held | {i['dropped']} |")
        rv = i["revocation_while_held"]
        rows.append(f"| idle | cross-node revocation while they are held: p50 / p99 / max ms (n={rv['n']}) | "
                    f"{_fmt(rv['p50_ms'])} / {_fmt(rv['p99_ms'])} / {_fmt(rv['max_ms'])} |")
    f = results.get("failover")
    if f:
        n = len(f["reps"])
        rows.append(f"| failover | SIGKILL A → AgentClient receiving again through B: median / max s (n={n}) | "
                    f"{_fmt(f['receiving_again_s']['median'])} / {_fmt(f['receiving_again_s']['max'])} |")
        rows.append(f"| failover | SIGKILL A → joined on B: median / max s | "
                    f"{_fmt(f['joined_on_b_s']['median'])} / {_fmt(f['joined_on_b_s']['max'])} |")
        rows.append(f"| failover | lost / duplicated / out of order | {f['lost']} / {f['duplicates']} / {f['out_of_order']} |")
    w = results.get("workers")
    if w:
        clients = w["params"]["clients"]
        for shape, label in (("1ch", "1 channel"), ("8ch", "8 channels")):
            for count in (1, 2):
                m = w[f"workers_{count}_{shape}"]
                what = f"`--workers {count}`, {clients} clients, {label}"
                rows.append(f"| workers | {what}: acknowledged messages/s | {_fmt(m['msgs_per_s'])} |")
                rows.append(f"| workers | {what}: ack p50 / p99 ms | {_fmt(m['p50_ms'])} / {_fmt(m['p99_ms'])} |")
                rows.append(f"| workers | {what}: CPU cores HQ / PostgreSQL / Redis / load generator | "
                            f"{_fmt(m['hq_cpu'])} / {_fmt(m['postgres_cpu'])} / {_fmt(m['redis_cpu'])} / "
                            f"{_fmt(m['loadgen_cpu'])} |")
                rows.append(f"| workers | {what}: CPU µs per message HQ / PostgreSQL / Redis | "
                            f"{_fmt(m['hq_us_per_msg'])} / {_fmt(m['postgres_us_per_msg'])} / "
                            f"{_fmt(m['redis_us_per_msg'])} |")
    return "\n".join(rows)


def throughput_table(t: dict[str, Any]) -> str:
    """The throughput phase: one row per layout and shape (medians), rates as ratios to SQLite."""
    p = t["params"]
    rows = [f"Throughput: {p['clients']} clients per sending node, one `message` in flight each, {p['duration_s']} s "
            f"after {p['warmup_s']} s of warm-up, medians of {p['reps']} (× SQLite: of each repetition's ratio); "
            f"the layout's nodes pinned together to core {SERVER_CORE}, the non-member node and the load generator "
            f"to core {LOADGEN_CORE}, PostgreSQL (the "
            f"machine's server) and Redis (private) not pinned. CPU µs per acknowledged message of the run; "
            f"lost / duplicated / out of order summed over every listener of every run, lost = not received "
            f"{p['drain_s']} s after the last send; slowest drain: from the last ack until every listener had its "
            f"channel's last id.", "",
            "| layout | channels | acked msg/s | × SQLite | ack p50 / p99 ms | core of the nodes busy | "
            "µs/msg: nodes / storing / member / storing+member | non-member (net of idle), ± 1 tick | PostgreSQL | "
            "Redis | "
            "lost / dup / ooo | slowest drain ms | warnings logged |",
            "| --- | --- | ---: | ---: | --- | ---: | --- | --- | ---: | ---: | --- | ---: | ---: |"]
    for name in t["layouts"]:
        for shape in SHAPES:
            m = t[f"{name}_{shape}"]
            rows.append(
                f"| {name} | {shape} | {_fmt(m['msgs_per_s'])} | {_fmt(m['ratio_to_sqlite'])}× | "
                f"{_fmt(m['p50_ms'])} / {_fmt(m['p99_ms'])} | {_fmt(m['server_core_cpu'])} | "
                f"{_fmt(m['nodes_us_per_msg'])} / {_fmt(m['storing_us_per_msg'])} / {_fmt(m['member_us_per_msg'])} / "
                f"{_fmt(m['storing+member_us_per_msg'])} | {_fmt(m['non-member_us_per_msg'])} "
                f"({_fmt(m['non-member_net_us_per_msg'])}), ± {_fmt(m.get('cpu_tick_us_per_msg'))} | "
                f"{_fmt(m['postgres_us_per_msg'])} | "
                f"{_fmt(m['redis_us_per_msg'])} | {m['lost']} / {m['duplicates']} / {m['out_of_order']} | "
                f"{_fmt(m.get('drain_ms_max'))} | {_fmt(m.get('log_warnings'))} |")
    rows += ["", *(f"- {name}: {description}" for name, description in t["layouts"].items())]
    return "\n".join(rows)


def machine(database_version: str | None) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "node": node, "redis": redis, "postgresql": database_version}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few sockets and messages (smoke run, ~1 min)")
    parser.add_argument("--phase", action="append", choices=PHASES, help="run only this phase (repeatable)")
    parser.add_argument("--idle-sockets", type=int, help="idle sockets over the two nodes (default 10000)")
    parser.add_argument("--reps", type=int, help="failover, workers and throughput repetitions")
    parser.add_argument("--output", default="cluster", help="results file name in bench/results (default cluster)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--hq-ref", metavar="GIT_REF", help="run the hq package of this commit (a \"before\")")
    source.add_argument("--hq-source", metavar="DIR", type=Path, help="run the hq package found in DIR/hq")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    phases = [phase for phase in PHASES if phase in (args.phase or PHASES)]  # the order matters (failover kills A)
    params = {k: dict(v) for k, v in (QUICK if args.quick else FULL).items()}
    if args.idle_sockets:
        params["idle"]["sockets"] = args.idle_sockets
    if args.reps:
        params["failover"]["reps"] = params["workers"]["reps"] = params["throughput"]["reps"] = args.reps
    for tool in ("redis-server", "redis-cli", "node"):
        if shutil.which(tool) is None:
            print(f"cluster bench: needs {tool}", file=sys.stderr)
            return 2
    if not (BENCH / "node_modules" / "socket.io-client").is_dir():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BENCH, check=True)
    fd_limit = raise_fd_limit(params["idle"]["sockets"] * 2 + 4096)

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_before = load_average()
    database = None
    version = None
    source: HQSource | None = None
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="hq-cluster-bench-") as tmp:
            workdir = Path(tmp)
            source = HQSource.resolve(args.hq_ref, args.hq_source, None, workdir) \
                if args.hq_ref or args.hq_source else working_tree()
            redis = PrivateRedis(workdir)
            database = create_database()
            config_text = hq_config(database, redis.url)
            bench = Bench(workdir, params, redis, database, config_text, source, results=results)
            setup = bench.node("setup")
            for codename, role in AGENTS.items():
                setup.cli("agents", "add", codename, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")
            pair_phases = [phase for phase in phases if phase not in ("workers", "throughput")]
            if pair_phases:
                bench.start_pair()
            for phase in phases:
                print(f"phase {phase} ...", file=sys.stderr, flush=True)
                t = time.monotonic()
                results[phase] = getattr(bench, phase)()
                print(f"phase {phase}: {time.monotonic() - t:.1f} s {json.dumps(results[phase])[:600]}",
                      file=sys.stderr, flush=True)
                if pair_phases and phase == pair_phases[-1]:
                    for node in (bench.a, bench.b):
                        if node is not None:
                            node.stop()
            version = postgres_version()
    finally:
        PROCESSES.stop_all()
        if database is not None:
            drop_database(database)
    report = {"hq_source": source.description if source else None, "started": started,
              "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_before": load_before,
              "load_after": load_average(), "quick": args.quick,
              "fd_limit": fd_limit, "machine": machine(version), "results": results}
    m = report["machine"]
    markdown = "\n".join([
        f"HQ cluster on one machine, {started}{' (--quick)' if args.quick else ''}: {m['cores']} cores "
        f"({m['cpu']}) shared by every HQ node, PostgreSQL {m['postgresql']}, Redis {m['redis'].split(' ')[2].removeprefix('v=')} "
        f"and the load generators; Python {m['python']}, Node {m['node']}. Load average before "
        f"{load_before}, after {report['load_after']}. HQ from the {report['hq_source']}.",
        *(["", table(results)] if set(results) - {"throughput"} else []),
        *(["", throughput_table(results["throughput"])] if "throughput" in results else [])])
    print(markdown)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{args.output}.md").write_text(markdown + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
