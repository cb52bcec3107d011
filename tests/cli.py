"""The operator CLI (``python -m hq ... --config CONFIG``) run for a test: as its own process, or
``hq.__main__.main(argv)`` in this process, with the same result shape (``CompletedProcess``).

A Python start-up per CLI call was a large part of the suite's time; the few tests that are about
the CLI as a program (its start-up, the password prompt on a terminal, its environment) keep
:func:`run_cli`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from hq.__main__ import main


def run_cli(config: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hq ARGS --config CONFIG`` as a process and capture its output."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HQ_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "hq", *args, "--config", str(config)], input=stdin,
                          capture_output=True, text=True, timeout=timeout, cwd=config.parent, env=full_env)


class InProcessCli:
    """Runs ``main(argv)`` with its own standard streams, one call at a time.

    ``sys.stdin``/``stdout``/``stderr`` belong to the whole process, so calls are serialised by a
    lock; each runs in a thread of its own because ``main`` runs its own asyncio loop, which must
    not be nested in a test's running loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def run(self, config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """``python -m hq ARGS --config CONFIG``, in this process."""
        argv = [*args, "--config", str(config)]
        with self._lock, ThreadPoolExecutor(1) as thread:
            return thread.submit(self._main, argv, stdin).result()

    @staticmethod
    def _main(argv: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        out, err = io.StringIO(), io.StringIO()
        saved_stdin = sys.stdin
        sys.stdin = io.StringIO(stdin or "")
        # The CLI configures no logging: as a process, its warnings reach stderr through Python's
        # last-resort handler (WARNING and up, the bare message). The same here, for its thread only.
        warnings = logging.StreamHandler(err)
        warnings.setLevel(logging.WARNING)
        thread = threading.get_ident()
        warnings.addFilter(lambda record: record.thread == thread)
        logging.getLogger().addHandler(warnings)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(argv)
                except SystemExit as exit_:  # argparse's --help
                    code = exit_.code if isinstance(exit_.code, int) else 0
        finally:
            logging.getLogger().removeHandler(warnings)
            sys.stdin = saved_stdin
        return subprocess.CompletedProcess(["python", "-m", "hq", *argv], code, out.getvalue(), err.getvalue())


#: One per test process: the lock guards the process's standard streams, of which there is one set.
_CLI = InProcessCli()


def run_cli_in_process(config: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI against ``config`` in this process (see :class:`InProcessCli`)."""
    return _CLI.run(config, *args, stdin=stdin)
