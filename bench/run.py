"""HQ against the Node reference: runs every scenario on fresh servers and prints the medians.

Each server is pinned to core 0 and the load generator (bench/loadgen.mjs, the JS socket.io-client)
to core 1 with ``taskset``. Every scenario runs ``--reps`` times (default 3), HQ and Node
interleaved (the order alternates per repetition), each time on a freshly started server. The
medians and the HQ/Node ratios go to stdout as a markdown table and to bench/results/latest.json
and latest.md.

Usage: .venv/bin/python bench/run.py [--quick] [--scenario NAME ...] [--reps N] [--servers hq,node]
                                     [--hq-ref GIT_REF | --hq-source DIR] [--hq-python PYTHON]
                                     [--profile [--native]]

The ``plain_messages`` and ``plain_fanout`` scenarios run ``messages`` and ``fanout`` against HQ's
plain WebSocket endpoint (``/ws``, JSON frames; ``loadgen.mjs --transport plain``) in the same run;
Node has no such endpoint, so their ratio is to HQ's own Socket.IO figures (the plain endpoint has
no Engine.IO/Socket.IO framing, so it should be at least as fast).

``--hq-ref`` measures the ``hq`` package of an earlier commit (exported with ``git archive`` into a
temporary folder put first on ``PYTHONPATH``) instead of the working tree, e.g. for a "before" table;
``--hq-source DIR`` measures a copy in DIR/hq (an experiment), ``--hq-python`` another interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
SERVER_CORE, LOADGEN_CORE = "0", "1"
# The throw-away bench agents get a fresh random password each run (the same on both servers).
PASSWORD = secrets.token_urlsafe(18)
# Same bcrypt cost on both servers: HQ's bcrypt (native, on its thread pool) and Node's bcryptjs.
BCRYPT_ROUNDS = 10
AGENTS = {"hank": "handler", "fox": "field-operative"}
CREDENTIALS = {"handler": {"codename": "hank", "password": PASSWORD},
               "operative": {"codename": "fox", "password": PASSWORD}}

# HQ's bench configuration: its real features on (SQLite with synchronous=FULL before each ack,
# clearance checks, per-socket rate limits, audit log to a file). The per-socket event budget is
# raised from 20/s (burst 40) so that it never refuses the benchmark's load; it is still checked
# on every event.
HQ_CONFIG = f"""\
[server]
host = "127.0.0.1"

[auth]
bcrypt_rounds = {BCRYPT_ROUNDS}

[limits]
events_per_second = 1000000.0
events_burst = 1000000

[audit]
path = "audit.log"
"""

FULL: dict[str, dict[str, Any]] = {
    "connections": {"concurrency": 50, "warmup_s": 1, "duration_s": 5},
    "messages": {"clients": 100, "window": 1, "warmup_s": 2, "duration_s": 5},
    "fanout": {"members": 1000, "messages": 100, "timeout_s": 60},
    "idle_memory": {"clients": 1000, "settle_s": 3},
    "login_storm": {"busy": 50, "interval_ms": 50, "warmup_s": 1, "base_s": 3, "logins": 30},
}
QUICK: dict[str, dict[str, Any]] = {
    "connections": {"concurrency": 20, "warmup_s": 0.5, "duration_s": 1.5},
    "messages": {"clients": 20, "window": 1, "warmup_s": 0.5, "duration_s": 1.5},
    "fanout": {"members": 100, "messages": 20, "timeout_s": 30},
    "idle_memory": {"clients": 100, "settle_s": 1},
    "login_storm": {"busy": 10, "interval_ms": 50, "warmup_s": 0.5, "base_s": 1, "logins": 5},
}
#: Scenarios run on HQ's plain WebSocket endpoint: each is the Socket.IO scenario it is compared with,
#: with the same parameters (HQ only: the Node reference has no plain endpoint).
PLAIN = {"plain_messages": "messages", "plain_fanout": "fanout"}
for _params in (FULL, QUICK):
    _params.update({plain: _params[socketio] for plain, socketio in PLAIN.items()})


@dataclass(frozen=True)
class Metric:
    """One row of the results table: a scenario's metric and how HQ/Node is judged."""

    scenario: str
    key: str
    label: str
    target: str
    #: For a plain WebSocket row: the ratio is to HQ's Socket.IO figure of this scenario, not to Node's.
    versus: str | None = None


METRICS = (
    Metric("connections", "conn_per_s", "authenticated connections/s", "≥ 1.0×"),
    Metric("connections", "conn_per_server_cpu_s", "connections per server CPU-second", "≥ 1.0×"),
    Metric("connections", "connect_p50_ms", "connect p50 ms (50 concurrent)", ""),
    Metric("messages", "msgs_per_s", "acknowledged messages/s (100 clients)", "≥ 1.0×"),
    Metric("messages", "msgs_per_server_cpu_s", "acknowledged messages per server CPU-second", "≥ 1.0×"),
    Metric("messages", "server_cpu", "server CPU use during the window (cores)", ""),
    Metric("messages", "p50_ms", "ack latency p50 ms", ""),
    Metric("messages", "p99_ms", "ack latency p99 ms", ""),
    Metric("fanout", "deliveries_per_s", "fan-out deliveries/s (1000 members × 100)", "≥ 1.0×"),
    Metric("fanout", "deliveries_per_server_cpu_s", "deliveries per server CPU-second", "≥ 1.0×"),
    Metric("fanout", "server_cpu", "server CPU use until all have all (cores)", ""),
    Metric("fanout", "all_have_all_ms", "time until all have all, ms", ""),
    Metric("plain_messages", "msgs_per_s", "plain WebSocket: acknowledged messages/s", "≥ 1.0× Socket.IO",
           versus="messages"),
    Metric("plain_messages", "msgs_per_server_cpu_s", "plain WebSocket: messages per server CPU-second",
           "≥ 1.0× Socket.IO", versus="messages"),
    Metric("plain_messages", "p50_ms", "plain WebSocket: ack latency p50 ms", "", versus="messages"),
    Metric("plain_fanout", "deliveries_per_s", "plain WebSocket: fan-out deliveries/s", "≥ 1.0× Socket.IO",
           versus="fanout"),
    Metric("plain_fanout", "deliveries_per_server_cpu_s", "plain WebSocket: deliveries per server CPU-second",
           "≥ 1.0× Socket.IO", versus="fanout"),
    Metric("idle_memory", "kb_per_conn", "memory per idle connection, KB", "≤ 1.0×"),
    Metric("login_storm", "p99_base_ms", "p99 ack ms, 50 paced clients, no logins", ""),
    Metric("login_storm", "p99_storm_ms", "p99 ack ms during 30 concurrent logins", ""),
    Metric("login_storm", "stall_ratio", "login-storm p99 / p99 without logins", "HQ ≤ 2"),
    Metric("login_storm", "login_max_ms", "slowest of the 30 logins, ms", ""),
)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    """Wait until ``url/healthz`` answers 200, or raise with the server's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError(f"server did not start:\n{log.read_text()[-2000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass(frozen=True)
class HQSource:
    """Which ``hq`` package runs, and on which Python.

    The working tree (``path`` None, the venv's editable install), the ``hq/`` of a commit exported
    with ``git archive``, or any folder holding an ``hq/`` package (e.g. a patched copy for an
    experiment); ``python`` may be another interpreter with HQ's dependencies installed.
    """

    description: str
    path: Path | None = None
    python: str = sys.executable

    @classmethod
    def resolve(cls, ref: str | None, folder: Path | None, python: str | None, into: Path) -> "HQSource":
        """Build the source from the command line (``--hq-ref``, ``--hq-source``, ``--hq-python``)."""
        interpreter = python or sys.executable
        if ref is not None:
            commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
            folder = into / "hq-source"
            folder.mkdir()
            archive = subprocess.run(["git", "archive", commit, "hq"], cwd=ROOT, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
            description = f"commit {commit[:12]} ({ref})"
        elif folder is not None:
            description = f"folder {folder}"
        elif python is not None:
            folder = ROOT  # another interpreter has no editable install of the working tree
            description = f"working tree at {_git('describe', '--always', '--dirty')}"
        else:
            return cls(f"working tree at {_git('describe', '--always', '--dirty')}")
        source = cls(f"{description} on {interpreter}", folder.resolve(), interpreter)
        source.check()
        return source

    def check(self) -> None:
        """Make sure Python imports ``hq`` from ``path``, not from an editable install."""
        where = subprocess.run([self.python, "-c", "import hq; print(hq.__file__)"], env=self.env(),
                               cwd=BENCH, capture_output=True, text=True, check=True).stdout.strip()
        if self.path is None or not Path(where).resolve().is_relative_to(self.path):
            raise RuntimeError(f"hq is imported from {where}, not from {self.path}")

    def env(self) -> dict[str, str]:
        """The environment to run HQ with: no HQ_* overrides, and ``path`` first on the import path."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")}
        if self.path is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.path), env.get("PYTHONPATH")]))
        return env


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


class HQTemplate:
    """An HQ data folder (config, secret, SQLite file with the agents) copied for every fresh server."""

    def __init__(self, root: Path, source: HQSource, eager_tasks: bool = False) -> None:
        self.source = source
        self.path = root / "hq-template"
        self.path.mkdir()
        config = HQ_CONFIG.replace('host = "127.0.0.1"\n', 'host = "127.0.0.1"\neager_tasks = true\n') if eager_tasks \
            else HQ_CONFIG
        (self.path / "config.toml").write_text(config)
        for codename, role in AGENTS.items():
            self._cli("agents", "add", codename, "--role", role, "--password-stdin", stdin=PASSWORD + "\n")

    def _cli(self, *args: str, stdin: str) -> None:
        result = subprocess.run([self.source.python, "-m", "hq", *args, "--config", "config.toml"], input=stdin,
                                capture_output=True, text=True, cwd=self.path, env=self.source.env(), timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"hq {' '.join(args)} failed: {result.stderr.strip()}")

    def copy(self, target: Path) -> Path:
        """A fresh copy of the data folder at ``target``."""
        shutil.copytree(self.path, target)
        return target


@dataclass
class Running:
    """A started server: its process (the pid is the server itself: taskset execs) and URL."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path


def start_hq(template: HQTemplate, workdir: Path) -> Running:
    """``python -m hq serve`` on a copy of the template, pinned to the server core."""
    data = template.copy(workdir / "hq")
    port = free_port()
    log = data / "server.log"
    command = ["taskset", "-c", SERVER_CORE, template.source.python, "-m", "hq", "serve", "--config", "config.toml",
               "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=data, stdout=out, stderr=subprocess.STDOUT,
                                   env=template.source.env())
    running = Running("hq", process, f"http://127.0.0.1:{port}", log)
    wait_healthy(running.url, process, log)
    return running


def start_node(workdir: Path) -> Running:
    """The Node reference server, pinned to the server core."""
    data = workdir / "node"
    data.mkdir()
    users = data / "users.json"
    users.write_text(json.dumps([{"codename": c, "role": r, "password": PASSWORD} for c, r in AGENTS.items()]))
    port = free_port()
    log = data / "server.log"
    command = ["taskset", "-c", SERVER_CORE, "node", str(BENCH / "node_reference" / "server.mjs"),
               "--port", str(port), "--users", str(users), "--rounds", str(BCRYPT_ROUNDS)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=data, stdout=out, stderr=subprocess.STDOUT)
    running = Running("node", process, f"http://127.0.0.1:{port}", log)
    wait_healthy(running.url, process, log)
    return running


def run_loadgen(server: Running, scenario: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario against a running server; returns the generator's JSON result."""
    full = {**params, **CREDENTIALS}
    transport = "plain" if scenario in PLAIN else "socketio"
    command = ["taskset", "-c", LOADGEN_CORE, "node", str(BENCH / "loadgen.mjs"), "--url", server.url,
               "--scenario", PLAIN.get(scenario, scenario), "--transport", transport, "--params", json.dumps(full),
               "--pid", str(server.process.pid)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=BENCH)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"scenario": scenario, "error": f"loadgen exit {result.returncode}: {result.stderr.strip()[-500:]}"}
    return json.loads(lines[-1])


class Profiler:
    """py-spy attached to HQ while a scenario runs (``--profile``): collapsed stacks per run.

    The files open in speedscope or a flame-graph tool; bench/profile_report.py summarises them.
    """

    def __init__(self, server: Running, output: Path, native: bool = False) -> None:
        self.output = output
        command = ["taskset", "-c", LOADGEN_CORE, str(Path(sys.executable).parent / "py-spy"), "record",
                   "--pid", str(server.process.pid), "--rate", "250", "--format", "raw", "-o", str(output)]
        # --native must pause the process to unwind C frames; plain sampling need not.
        command += ["--native"] if native else ["--nonblocking"]
        self.log = output.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)

    def stop(self) -> None:
        """Stop sampling and let py-spy write its file."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if not self.output.exists():
            print(f"py-spy wrote no profile: {self.log.read_text(errors='replace').strip()[-500:]}", file=sys.stderr)


def run_once(name: str, scenario: str, params: dict[str, Any], template: HQTemplate, workdir: Path,
             profile_dir: Path | None, native: bool = False) -> dict[str, Any]:
    """Start a fresh server, run one scenario against it, stop it."""
    server = start_hq(template, workdir) if name == "hq" else start_node(workdir)
    profiler = None
    if profile_dir is not None and name == "hq":
        profiler = Profiler(server, profile_dir / f"hq-{scenario}-{int(time.time())}.txt", native)
        time.sleep(0.5)
    try:
        return run_loadgen(server, scenario, params)
    finally:
        if profiler is not None:
            profiler.stop()
        stop(server.process)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (other work on this machine skews the numbers)."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    versions = {p: _version(p) for p in ("python-socketio", "python-engineio", "aiohttp", "uvloop", "orjson",
                                          "aiosqlite", "bcrypt", "PyJWT")}
    npm = {p: _npm_version(p) for p in ("socket.io", "socket.io-client", "express", "jsonwebtoken", "bcryptjs")}
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "node": node, "python_packages": versions, "npm_packages": npm}


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _npm_version(package: str) -> str | None:
    manifest = BENCH / "node_modules" / package / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.exists() else None


def median(values: list[Any]) -> float | None:
    """The median of the numeric values (None when there are none)."""
    numbers = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(numbers) if numbers else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Medians per scenario, server and metric."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for metric in METRICS:
        for server in ("hq", "node"):
            values = [r["result"].get(metric.key) for r in runs
                      if r["scenario"] == metric.scenario and r["server"] == server]
            out.setdefault(metric.scenario, {}).setdefault(server, {})[metric.key] = median(values)
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def table(medians: dict[str, dict[str, dict[str, float | None]]], scenarios: list[str]) -> str:
    """The markdown table of medians and HQ/Node ratios."""
    rows = ["| scenario | metric | HQ | Node | HQ/Node | target |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for metric in METRICS:
        if metric.scenario not in scenarios:
            continue
        hq = medians[metric.scenario]["hq"][metric.key]
        node = medians[metric.scenario]["node"][metric.key]
        ratio = f"{hq / node:.2f}×" if hq is not None and node else "–"
        if metric.versus is not None:  # the plain endpoint against HQ's own Socket.IO figure
            socketio = medians.get(metric.versus, {}).get("hq", {}).get(metric.key)
            ratio = f"{hq / socketio:.2f}× Socket.IO" if hq is not None and socketio else "–"
        rows.append(f"| {metric.scenario} | {metric.label} | {_fmt(hq)} | {_fmt(node)} | {ratio} | {metric.target} |")
    return "\n".join(rows)


def ensure_node_modules() -> None:
    """Install the bench's npm packages from its lock file when they are missing."""
    if not all((BENCH / "node_modules" / package).is_dir() for package in ("socket.io", "ws")):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=BENCH, check=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The runner's command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer clients and shorter windows (smoke run)")
    parser.add_argument("--scenario", action="append", choices=list(FULL), help="run only this scenario (repeatable)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions per scenario and server (default 3)")
    parser.add_argument("--servers", default="hq,node", help="comma-separated subset of hq,node")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--hq-ref", metavar="GIT_REF", help="run the hq package of this commit, not the working tree")
    source.add_argument("--hq-source", metavar="DIR", type=Path, help="run the hq package found in DIR/hq")
    parser.add_argument("--hq-python", metavar="PYTHON", help="run HQ on this interpreter (with HQ's dependencies)")
    parser.add_argument("--hq-eager-tasks", action="store_true",
                        help="[server] eager_tasks = true (asyncio's eager task factory; Python 3.12+)")
    parser.add_argument("--profile", action="store_true",
                        help="attach py-spy to HQ during each run (bench/results/profiles/*.txt)")
    parser.add_argument("--native", action="store_true", help="with --profile: include C frames (py-spy --native)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the selected scenarios and write the results."""
    args = parse_args(argv)
    scenarios = args.scenario or list(FULL)
    servers = [s for s in args.servers.split(",") if s]
    params = QUICK if args.quick else FULL
    ensure_node_modules()
    RESULTS.mkdir(exist_ok=True)
    profile_dir = RESULTS / "profiles" if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_before = load_average()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hq-bench-") as tmp:
        source = HQSource.resolve(args.hq_ref, args.hq_source, args.hq_python, Path(tmp))
        template = HQTemplate(Path(tmp), source, eager_tasks=args.hq_eager_tasks)
        for rep in range(args.reps):
            order = servers if rep % 2 == 0 else servers[::-1]
            for scenario in scenarios:
                for name in order:
                    if name != "hq" and scenario in PLAIN:
                        continue  # the Node reference has no plain WebSocket endpoint
                    workdir = Path(tempfile.mkdtemp(dir=tmp))
                    result = run_once(name, scenario, params[scenario], template, workdir, profile_dir,
                                      args.native)
                    runs.append({"rep": rep + 1, "scenario": scenario, "server": name, "result": result})
                    print(f"rep {rep + 1} {scenario:<12} {name:<5} {json.dumps(result)}", file=sys.stderr, flush=True)
    medians = summarize(runs)
    report = {"hq_source": source.description, "started": started, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "load_before": load_before, "load_after": load_average(), "quick": args.quick, "reps": args.reps,
              "params": {s: params[s] for s in scenarios}, "machine": machine(), "medians": medians, "runs": runs}
    markdown = render(report, scenarios)
    print(markdown)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown + "\n")
    return 0 if all("error" not in r["result"] for r in runs) else 1


def render(report: dict[str, Any], scenarios: list[str]) -> str:
    """The markdown report: the table, then the conditions it was measured under."""
    m = report["machine"]
    errors = [f"- rep {r['rep']} {r['scenario']} {r['server']}: {r['result']['error'][:300]}"
              for r in report["runs"] if "error" in r["result"]]
    lines = [f"HQ from the {report['hq_source']}. Medians of {report['reps']} runs per server"
             f"{' (--quick)' if report['quick'] else ''}, {report['started']}.", "", table(report["medians"], scenarios), "",
             f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; Python {m['python']}, Node {m['node']}. "
             f"Server pinned to core {SERVER_CORE}, load generator to core {LOADGEN_CORE}. "
             f"Load average before {report['load_before']}, after {report['load_after']}."]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
