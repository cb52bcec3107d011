"""A program run on a pseudo-terminal, its prompts answered as a person at the keyboard would."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from pathlib import Path
from typing import Callable

# Given everything the program wrote so far, what to type next (a line without its newline), or None.
Responder = Callable[[bytes], "str | None"]


def run_on_terminal(module_args: list[str], respond: Responder, *, cwd: Path, env: dict[str, str],
                    timeout: float = 30) -> tuple[int, str]:
    """Run ``python -m <module_args>`` on a terminal of its own; return its exit code and everything it wrote.

    ``respond`` sees the whole output after every chunk; what it returns is typed with a newline. A
    program still running at ``timeout`` (e.g. waiting for input) is killed, so the test fails instead
    of hanging.
    """
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.chdir(cwd)
        os.execve(sys.executable, [sys.executable, "-m", *module_args], env)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([fd], [], [], 0.1)[0]:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            answer = respond(output)
            if answer is not None:
                os.write(fd, answer.encode() + b"\n")
    finally:
        os.close(fd)
        finished, status = os.waitpid(pid, os.WNOHANG)
        while not finished and time.monotonic() < deadline:
            time.sleep(0.05)
            finished, status = os.waitpid(pid, os.WNOHANG)
        if not finished:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")
