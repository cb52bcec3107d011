"""One SQLite file is served by one HQ process: a second ``serve`` exits 3 at once with one line,
a SIGKILLed server never blocks the next start, and the ``agents`` commands run beside a serving HQ.

Two HQ processes on one file used to number messages independently (UNIQUE constraint failures);
the serving lock makes that impossible. PostgreSQL takes no lock.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from hq.store.lock import StoreInUseError, lock_path, serving_lock

from .sio import RecordingClient
from .support import PASSWORD, HQProcess, HQServer, base_config, write_config

IN_USE = re.compile(r"hq: (.+) is already served by another HQ process \(pid (\d+)\)")


def _serve(config: Path, timeout: float = 15) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``python -m hq serve`` to its end; returns the result and how long it took.

    On a config that is wrongly served, the timeout kills it and the test fails.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("HQ_")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "hq", "serve", "--config", str(config)], cwd=config.parent,
                            capture_output=True, text=True, timeout=timeout, env=env)
    return result, time.monotonic() - started


def _database(server: HQProcess) -> Path:
    return (server.workdir / "hq.sqlite3").resolve()


def _assert_refused(result: subprocess.CompletedProcess[str], elapsed: float, server: HQProcess) -> None:
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and result.stdout == "", result.stderr
    match = IN_USE.fullmatch(lines[0])
    assert match, lines[0]
    assert server.process is not None
    assert (match[1], int(match[2])) == (str(_database(server)), server.process.pid)
    assert elapsed < 5  # at once: nothing was built, no port was tried


@pytest.mark.real_process  # about the serve process itself
def test_second_serve_on_the_same_config_exits_3_with_one_line(hq_factory: Callable[..., HQServer]) -> None:
    hq = hq_factory(agents={"hank": "handler"})
    _assert_refused(*_serve(hq.config), hq)
    assert hq.login("hank")["access_token"]  # the first one is untouched


@pytest.mark.real_process  # about the serve process itself
async def test_second_serve_on_another_port_cannot_share_the_file(hq_factory: Callable[..., HQServer],
                                                                  tmp_path: Path) -> None:
    # The formerly broken set-up: another port, the same data and secret. Both used to run and
    # number messages independently, so one of them failed every insert with UNIQUE constraint.
    hq = hq_factory(agents={"hank": "handler"})
    other = tmp_path / "other"
    other.mkdir()
    config = other / "config.toml"
    write_config(config, base_config(0, storage={"url": f"sqlite:///{_database(hq)}"},
                                     auth={"secret_file": str(hq.workdir / "hq.secret")}))
    _assert_refused(*_serve(config), hq)
    client = RecordingClient()
    try:
        await client.connect(hq.url, hq.login("hank")["access_token"])
        answers = [await client.call("message", {"channel": "missions", "text": f"m{i}"}) for i in range(5)]
    finally:
        await client.close()
    assert [a.get("id") for a in answers] == [1, 2, 3, 4, 5], answers
    assert "UNIQUE" not in hq.log_path.read_text()


@pytest.mark.real_process  # SIGKILL needs a process to kill
def test_a_killed_server_does_not_block_the_next_start(hq_factory: Callable[..., HQServer]) -> None:
    hq = hq_factory(agents={"hank": "handler"})
    hq.stop(signal.SIGKILL)  # no chance to release anything itself
    assert lock_path(_database(hq)).exists()  # the stale file holds no lock
    hq.start()
    assert hq.login("hank")["access_token"]
    _assert_refused(*_serve(hq.config), hq)  # and the new server holds the lock in turn


@pytest.mark.real_process  # about the serve process itself
def test_agents_commands_run_beside_a_serving_hq(hq_factory: Callable[..., HQServer]) -> None:
    hq = hq_factory(agents={"hank": "handler"})
    listed = hq.cli("agents", "list")
    assert listed.returncode == 0 and "hank" in listed.stdout, listed.stderr
    hq.add_agent("neo", "analyst")
    assert hq.cli("agents", "role", "neo", "--role", "handler").returncode == 0
    assert hq.login("neo", PASSWORD)["access_token"]
    _assert_refused(*_serve(hq.config), hq)  # the commands neither took nor released the lock


# The lock itself, in-process (flock locks belong to an open file, so one process can contend).

def test_lock_is_exclusive_names_its_holder_and_is_released(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'hq.sqlite3'}"
    with serving_lock(url):
        with pytest.raises(StoreInUseError) as info, serving_lock(url):
            pass
        assert info.value.pid == os.getpid()
        assert info.value.database == (tmp_path / "data" / "hq.sqlite3").resolve()
        assert (lock_path(info.value.database).stat().st_mode & 0o777) == 0o600
    with serving_lock(url):  # released on leaving
        pass


def test_postgres_takes_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with serving_lock("postgresql://hq@db/hq"), serving_lock("postgresql://hq@db/hq"):
        pass
    assert not list(tmp_path.iterdir())
