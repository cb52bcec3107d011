"""HQ in the test process: ``create_app(settings)`` served by aiohttp on an event loop of its own in
a background thread, so that a test's synchronous ``urllib`` calls and its own asyncio loop both
reach it, without the start-up of a Python interpreter per server.

What ``python -m hq serve`` sets up beyond ``create_app`` and that tests rely on is reproduced
here: the redacting access log, HQ's log lines in ``server.log`` (only this server's: several may
live in one process), the first-agent line, TLS. What is not (uvloop, the GC tuning, the SQLite
lock, signals) is tested with real processes (``tests/support.py`` ``HQProcess``).

The port: the listening socket is bound here before the config is written, so the config names
its real port in ``allowed_origins`` and no other process can take the port in between; it is
handed to aiohttp as it is (``SockSite``).

tests/inprocess.py serves HQ on the test's own loop instead, on a manual clock, for the tests of
things that expire; this module's servers run on the real clock for tests written synchronously
or against the ``hq`` fixtures.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from hq.app import create_app, first_agent_notice
from hq.config import Settings, load_settings
from hq.ops.access_log import RedactingAccessLogger, RedactingFilter

from .support import HQServer, write_server_config

#: ``serve``'s log format (hq/__main__.py ``_configure_logging``), so that server.log reads the same.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class ThreadLogHandler(logging.FileHandler):
    """Writes the records logged on one thread (one server's event loop) to that server's log."""

    def __init__(self, path: Path, thread_id: int) -> None:
        super().__init__(path, encoding="utf-8")
        self.setFormatter(logging.Formatter(LOG_FORMAT))
        self.addFilter(lambda record: record.thread == thread_id)
        self.addFilter(RedactingFilter())


def bind_listener(port: int = 0) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (``port`` 0: one the kernel picks)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    return listener


@dataclass
class InProcessHQ(HQServer):
    """One HQ app served in this process (see the module docstring); same interface as ``HQProcess``."""

    listener: socket.socket | None = None
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _runner: web.AppRunner | None = field(default=None, repr=False)
    _log: ThreadLogHandler | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self._runner is not None

    def start(self, timeout: float = 20) -> "InProcessHQ":
        """Serve on this server's port, in a thread of its own, until :meth:`stop`."""
        settings = load_settings(self.config, environ={})  # as serve, which runs without HQ_* variables
        if settings.admin.enabled:
            # python-socketio's instrument() replaces engineio's AsyncSocket methods for the whole
            # process: every other server of this process would report to this one's Admin UI.
            raise RuntimeError("[admin] enabled needs a real process: mark the test real_process")
        if self.listener is None:  # a restart: the port this server had (closed by the last stop)
            self.listener = bind_listener(self.port)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name=f"hq-{self.workdir.name}", daemon=True)
        thread.start()
        assert thread.ident is not None
        self._loop, self._thread = loop, thread
        self._log = ThreadLogHandler(self.log_path, thread.ident)
        root = logging.getLogger()
        root.addHandler(self._log)
        # serve logs at INFO (basicConfig); the records must exist for server.log to show them.
        if root.getEffectiveLevel() > logging.INFO:
            root.setLevel(logging.INFO)
        try:
            asyncio.run_coroutine_threadsafe(self._serve(settings), loop).result(timeout)
        except BaseException:
            self.stop()
            raise
        self.wait_healthy(time.monotonic() + timeout, lambda: None)
        return self

    async def _serve(self, settings: Settings) -> None:
        app = create_app(settings, on_first_agent=self._report_first_agent)
        runner = web.AppRunner(app, access_log_class=RedactingAccessLogger)
        await runner.setup()
        self._runner = runner
        assert self.listener is not None
        await web.SockSite(runner, self.listener, ssl_context=self._server_ssl_context(settings)).start()
        self.listener = None  # the site owns it now and closes it on stop

    @staticmethod
    def _server_ssl_context(settings: Settings) -> ssl.SSLContext | None:
        if not (settings.server.tls_cert and settings.server.tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(settings.server.tls_cert, settings.server.tls_key)
        return context

    def _report_first_agent(self, codename: str, password: str) -> None:
        # serve prints it on standard output, which HQProcess sends to server.log too.
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(first_agent_notice(codename, password) + "\n")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Shut down as ``serve`` does on SIGTERM (aiohttp's cleanup). A crash cannot be had in a
        process that must live on: such tests use a real process (``real_process`` marker)."""
        if sig != signal.SIGTERM:
            raise NotImplementedError(f"{signal.Signals(sig).name} needs a real process: mark the test real_process")
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(30)
            self._runner = None
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        if self._log is not None:
            logging.getLogger().removeHandler(self._log)
            self._log.close()
        if self.listener is not None:
            self.listener.close()
        self._loop = self._thread = self._log = self.listener = None


def make_in_process_server(workdir: Path, agents: dict[str, str] | None = None,
                           **overrides: dict[str, Any]) -> InProcessHQ:
    """Like ``support.make_server`` but served in this process: bound first, then configured with
    that port (and its origins), then the agents created; returned unstarted."""
    listener = bind_listener()
    port = listener.getsockname()[1]
    config, ca_file = write_server_config(workdir, port, agents, overrides)
    return InProcessHQ(workdir, port, config, ca_file=ca_file, listener=listener)
