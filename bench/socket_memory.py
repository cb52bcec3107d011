"""What one idle connection costs HQ, by component: tracemalloc, with RSS beside it.

HQ runs in this process on a loop of its own (as in bench/tasks.py); N raw websocket clients
connect with a valid token and stay idle. Python allocations that appeared (tracemalloc, grouped
by the package that made them) and the process's RSS growth are divided by N. ``--hq-source DIR``
measures another checkout.

    .venv/bin/python bench/socket_memory.py --connections 500
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tasks import PASSWORD, start_counting_server  # noqa: E402


def rss_kb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def component(filename: str) -> str:
    """The package a frame belongs to (``hq``, ``aiohttp``, ``engineio``, ...)."""
    parts = Path(filename).parts
    for marker in ("site-packages", "hq", "lib"):
        if marker in parts:
            index = parts.index(marker)
            rest = parts[index + 1:] if marker != "hq" else ("hq",)
            if rest:
                return rest[0].removesuffix(".py")
    return Path(filename).name


CLIENTS = """
import asyncio, json, sys
import aiohttp

async def main(url, token, count):
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = []
        for _ in range(count):
            ws = await session.ws_connect(url + "/socket.io/?EIO=4&transport=websocket")
            await ws.receive()
            await ws.send_str("40" + json.dumps({"token": token}))
            await ws.receive()
            sockets.append(ws)

        async def pong(ws):
            async for msg in ws:
                if msg.data == "2":
                    await ws.send_str("3")
        tasks = [asyncio.create_task(pong(ws)) for ws in sockets]
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def connect_clients(url: str, token: str, count: int) -> subprocess.Popen[str]:
    """Idle websocket clients in another process (so this process holds only HQ)."""
    clients = subprocess.Popen([sys.executable, "-c", CLIENTS, url, token, str(count)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    assert clients.stdout is not None and clients.stdout.readline().strip() == "ready"
    return clients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hq-source", help="a checkout whose hq/ to measure (default: this one)")
    parser.add_argument("--connections", type=int, default=500)
    args = parser.parse_args()
    source = Path(args.hq_source or Path(__file__).resolve().parent.parent)
    sys.path.insert(0, str(source))
    server = start_counting_server(source, "hq-memory-", {"member": "field-operative"})
    port = server.port
    tracemalloc.start(25)  # after start-up: only what the connections allocate is compared
    url = f"http://127.0.0.1:{port}"
    import urllib.request
    request = urllib.request.Request(f"{url}/api/auth/login", method="POST",
                                     data=json.dumps({"username": "member", "password": PASSWORD}).encode(),
                                     headers={"Content-Type": "application/json"})
    token = json.loads(urllib.request.urlopen(request, timeout=10).read())["access_token"]
    warm = connect_clients(url, token, 10)
    before, rss_before = tracemalloc.take_snapshot(), rss_kb()
    clients = connect_clients(url, token, args.connections)
    import time
    time.sleep(2)
    after, rss_after = tracemalloc.take_snapshot(), rss_kb()
    by_component: Counter[str] = Counter()
    for stat in after.compare_to(before, "traceback"):
        # Charged to the innermost frame outside asyncio and the standard library's plumbing, so a
        # Task or a buffer counts for whoever created it.
        frames = [f for f in stat.traceback if "asyncio" not in f.filename and "tracemalloc" not in f.filename]
        by_component[component((frames or list(stat.traceback))[-1].filename)] += stat.size_diff
    n = args.connections
    total = sum(by_component.values())
    report = {
        "source": str(source), "connections": n,
        "python_kb_per_connection": round(total / 1024 / n, 2),
        "python_kb_per_connection_by_component": {k: round(v / 1024 / n, 2) for k, v in by_component.most_common(10)},
        "rss_kb_per_connection": round((rss_after - rss_before) / n, 1),
    }
    print(json.dumps(report, indent=2))
    for process in (clients, warm):
        process.communicate("")


if __name__ == "__main__":
    main()
