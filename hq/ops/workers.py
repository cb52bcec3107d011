"""``python -m hq serve --workers N``: one supervisor process and N worker processes sharing a port.

Each worker is a complete HQ node (the same ``create_app``) listening on the same host and port with
``SO_REUSEPORT``, so the kernel spreads incoming connections over the workers' listening sockets.
Workers share nothing in memory: they meet in PostgreSQL and Redis exactly as separate machines do,
which is why N > 1 needs both.

The supervisor serves no request. It starts the workers, starts again one that dies (after a short
back-off that grows while it keeps dying), forwards SIGTERM/SIGINT to every worker once and waits for
them, and on SIGHUP replaces the workers one at a time: a new worker is started and only once it
serves is the old one stopped, so the port never lacks a listener.

"Serves" is reported by the worker itself, on a pipe the supervisor hands it (``--ready-fd``): once
it listens, it runs the checks ``/healthz`` counts as required (the database) and writes one line.
Asking ``/healthz`` through the shared port would not do: the kernel picks which worker answers.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

from ..config import Settings

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5  # seconds before a dead worker is started again
BACKOFF_MAX = 15.0  # the delay doubles while a worker keeps dying soon after it started serving
STABLE_AFTER = 10.0  # a worker that served this long before dying is restarted after BACKOFF_FIRST
READY_TIMEOUT = 60.0  # a worker not serving by then is stopped (start-up, restart, SIGHUP)
STOP_TIMEOUT = 30.0  # a worker still running this long after SIGTERM is killed
PROBE_TIMEOUT = 1.0  # per readiness attempt, as /healthz bounds each backend
READY = b"ready\n"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

WorkerCommand = Callable[[int, int], Sequence[str]]
"""The command line of worker ``number`` that reports on file descriptor ``ready_fd``."""
Probe = Callable[[], Awaitable[object]]


def cluster_problem(settings: Settings) -> str | None:
    """Why ``settings`` cannot run several workers (one line), or None if they can."""
    missing = []
    if not settings.storage_url.startswith(("postgresql://", "postgres://")):
        missing.append("[storage] url on PostgreSQL")
    if not settings.cluster.redis_url:
        missing.append("[cluster] redis_url")
    if not missing:
        return None
    # Never quote the URLs: a PostgreSQL or Redis URL may carry a password.
    return f"needs {' and '.join(missing)}: workers share data only through them"


def check_port_free(host: str, port: int) -> None:
    """Raise ``OSError(EADDRINUSE)`` if something already listens on ``host:port``.

    Workers bind with ``SO_REUSEPORT``, which would let them silently split the port with another
    HQ of the same user started by mistake; one bind without that option first refuses it.
    """
    addresses = {(info[0], info[4]) for info in
                 socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)}
    for family, address in addresses:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # As asyncio does when it listens: a connection in TIME_WAIT is not a listener.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, f"{host}:{port} is already in use") from None
                raise


@dataclass
class WorkerRole:
    """A worker process's side: its number, its supervisor's pid and the pipe to report on."""

    number: int
    supervisor: int
    ready_fd: int
    _reporting: asyncio.Task[None] | None = field(default=None, repr=False)

    def attach(self) -> None:
        """Keep the pipe to this process and end with the supervisor.

        A SIGKILLed supervisor must not leave workers holding the port, serving with nobody to
        restart them: on Linux the kernel sends this process SIGTERM (a graceful stop) when its
        parent ends. Elsewhere nothing is arranged.
        """
        os.set_inheritable(self.ready_fd, False)
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass
        if os.getppid() != self.supervisor:  # it ended before the request above was in place
            raise RuntimeError(f"the supervisor (pid {self.supervisor}) is gone")

    def report_when_serving(self, required: Sequence[Probe]) -> None:
        """Called once the worker listens: tell the supervisor as soon as ``required`` all answer."""
        self._reporting = asyncio.get_running_loop().create_task(self._report(required))

    async def _report(self, required: Sequence[Probe]) -> None:
        while True:
            try:
                await asyncio.wait_for(asyncio.gather(*(probe() for probe in required)), PROBE_TIMEOUT)
                break
            except Exception as exc:  # any failure: not serving yet; the supervisor has a deadline
                log.warning("not serving yet: %s", exc or type(exc).__name__)
                await asyncio.sleep(0.25)
        log.info("serving (pid %d)", os.getpid())
        os.write(self.ready_fd, READY)
        os.close(self.ready_fd)


@dataclass(eq=False)
class _Worker:
    """One started worker process."""

    number: int
    process: asyncio.subprocess.Process
    ready: asyncio.Task[bool]
    serving_since: float | None = None
    stopping: bool = False  # SIGTERM sent: a second one would cut aiohttp's graceful stop short

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(eq=False)
class _Slot:
    """Worker number ``number``: the process currently holding it, replaced when it dies or on SIGHUP."""

    number: int
    current: _Worker | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # a restart and a SIGHUP replace it in turn
    quick_deaths: int = 0


class Supervisor:
    """Keeps ``count`` workers serving until SIGTERM or SIGINT; rolls them over on SIGHUP."""

    def __init__(self, count: int, command: WorkerCommand, announce: Callable[[], None]) -> None:
        self._count = count
        self._command = command
        self._announce = announce  # called once, when every worker first serves
        self._slots = [_Slot(number) for number in range(1, count + 1)]
        self._started: set[_Worker] = set()  # every process not yet seen to end, whatever its slot
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()

    async def run(self) -> int:
        """Supervise until told to stop; returns the exit code (0, or a worker's if start-up failed)."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._request_stop, signal.SIGTERM)
        loop.add_signal_handler(signal.SIGINT, self._request_stop, signal.SIGINT)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            code = await self._start_all()
            if code is not None:
                return code
            self._announce()
            self._tasks = [asyncio.create_task(self._keep(slot)) for slot in self._slots]
            self._tasks.append(asyncio.create_task(self._reloader()))
            await self._stop.wait()
            return 0
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._stop_all()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def _request_stop(self, sig: signal.Signals) -> None:
        if not self._stop.is_set():
            log.info("%s: stopping the workers", sig.name)
        self._stop.set()

    async def _start_all(self) -> int | None:
        """Start every worker and wait until all serve: None, or the exit code if one did not."""
        for slot in self._slots:
            slot.current = await self._spawn(slot.number)
        waiting = {slot.current.ready: slot.current for slot in self._slots if slot.current}
        stop = asyncio.create_task(self._stop.wait())
        deadline = time.monotonic() + READY_TIMEOUT
        try:
            while waiting:
                done, _ = await asyncio.wait([*waiting, stop], timeout=max(0.0, deadline - time.monotonic()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    return 0
                if not done:
                    log.error("workers %s did not serve within %.0f s; stopping",
                              ", ".join(str(w.number) for w in waiting.values()), READY_TIMEOUT)
                    return 1
                for task in done:
                    worker = waiting.pop(task)
                    if not task.result():
                        code = await worker.process.wait()
                        log.error("worker %d (pid %d) %s before serving; stopping", worker.number, worker.pid,
                                  _ended(code))
                        # A configuration error or a store in use keeps its code; anything else is 1.
                        return code if code in (2, 3) else 1
                    worker.serving_since = time.monotonic()
        finally:
            stop.cancel()
        pids = ", ".join(str(slot.current.pid) for slot in self._slots if slot.current)
        log.info("%d workers serving (pids %s)", self._count, pids)
        return None

    async def _spawn(self, number: int) -> _Worker:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                *self._command(number, write_fd), pass_fds=(write_fd,),
                # A session of its own: a terminal's Ctrl-C reaches the supervisor only, which
                # forwards one SIGTERM (a second signal would cut a worker's graceful stop short).
                start_new_session=True)
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # only the worker's copy remains: end of file means it ended
        worker = _Worker(number, process, asyncio.create_task(_read_ready(read_fd)))
        self._started.add(worker)
        log.info("worker %d started (pid %d)", number, process.pid)
        return worker

    async def _serving(self, worker: _Worker) -> bool:
        """Wait until ``worker`` serves (True), or ends or takes too long (False)."""
        try:
            return await asyncio.wait_for(asyncio.shield(worker.ready), READY_TIMEOUT)
        except asyncio.TimeoutError:
            log.error("worker %d (pid %d) did not serve within %.0f s", worker.number, worker.pid, READY_TIMEOUT)
            return False

    async def _keep(self, slot: _Slot) -> None:
        """Start the slot's worker again whenever it dies, unless a rolling restart replaced it."""
        while True:
            worker = slot.current
            assert worker is not None
            code = await worker.process.wait()
            self._started.discard(worker)
            async with slot.lock:
                if slot.current is not worker:
                    continue  # replaced on purpose (SIGHUP): watch its successor
                delay = self._backoff(slot, worker)
                log.warning("worker %d (pid %d) %s; starting it again in %.1f s", slot.number, worker.pid,
                            _ended(code), delay)
                await asyncio.sleep(delay)
                slot.current = await self._spawn(slot.number)
                if await self._serving(slot.current):
                    slot.current.serving_since = time.monotonic()
                    log.info("worker %d serving again (pid %d)", slot.number, slot.current.pid)
                else:
                    await self._terminate(slot.current)  # the loop then sees it ended and backs off more

    def _backoff(self, slot: _Slot, worker: _Worker) -> float:
        since = worker.serving_since
        if since is not None and time.monotonic() - since >= STABLE_AFTER:
            slot.quick_deaths = 0
            return BACKOFF_FIRST
        # Dying soon after start (a database refusing, a bad deploy) must not become a busy loop.
        slot.quick_deaths += 1
        return min(BACKOFF_FIRST * 2 ** slot.quick_deaths, BACKOFF_MAX)

    async def _reloader(self) -> None:
        # SIGHUPs arriving during a rolling restart are folded into one more, run after it.
        while True:
            await self._reload.wait()
            self._reload.clear()
            await self._roll()

    async def _roll(self) -> None:
        """Replace every worker in turn: start the new one, wait until it serves, stop the old one."""
        log.info("SIGHUP: restarting %d workers one at a time", self._count)
        for slot in self._slots:
            async with slot.lock:
                old = slot.current
                new = await self._spawn(slot.number)
                if not await self._serving(new):
                    code = await self._terminate(new)
                    log.error("rolling restart stopped: the new worker %d (pid %d) %s without serving; "
                              "the running workers keep serving", slot.number, new.pid, _ended(code))
                    return
                new.serving_since = time.monotonic()
                slot.current = new
            if old is not None:
                log.info("worker %d serving (pid %d); stopping pid %d", slot.number, new.pid, old.pid)
                await self._terminate(old)
        log.info("rolling restart done")

    async def _terminate(self, worker: _Worker) -> int:
        """SIGTERM ``worker`` (once) and wait for it; SIGKILL it after ``STOP_TIMEOUT``."""
        if worker.process.returncode is None and not worker.stopping:
            worker.stopping = True
            try:
                worker.process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            code = await asyncio.wait_for(worker.process.wait(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("worker %d (pid %d) still running %.0f s after SIGTERM; killing it", worker.number,
                        worker.pid, STOP_TIMEOUT)
            worker.process.kill()
            code = await worker.process.wait()
        self._started.discard(worker)
        return code

    async def _stop_all(self) -> None:
        running = [worker for worker in self._started if worker.process.returncode is None]
        if running:
            log.info("waiting for %d workers to stop", len(running))
        await asyncio.gather(*(self._terminate(worker) for worker in running))
        for worker in self._started:
            worker.ready.cancel()
        self._started.clear()


async def _read_ready(fd: int) -> bool:
    """Whether the worker on the other end of pipe ``fd`` reports that it serves (False: it ended)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(fd, "rb", buffering=0))
    try:
        return await reader.readline() == READY
    finally:
        transport.close()


def _ended(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


__all__ = ["Supervisor", "WorkerRole", "check_port_free", "cluster_problem"]
