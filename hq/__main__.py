"""The operator CLI: ``python -m hq [serve [--workers N]] | agents add|list|passwd|disable|enable|role|mfa |
keys add|list|revoke``.

Exit codes: 0 success, 1 runtime error, 2 usage or configuration error, 3 the store is in use by
another HQ (``serve`` on an SQLite file another HQ process serves); errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import getpass
import logging
import os
import socket
import ssl
import sys
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable, NoReturn

from aiohttp import web

from .ops.access_log import RedactingAccessLogger, RedactingFilter
from .auth.agents import AgentAdminError, PasswordSet
from .app import HQ, HQ_KEY, build, create_app, print_first_agent
from .config import ConfigError, Settings, find_config, load_settings
from .auth.passwords import PasswordPolicyError
from .auth.mfa import Enrollment, OtpRejected
from .auth.mfa_admin import MfaAdminError
from .auth.service_keys import ServiceKeyAdminError, UnknownServiceKeyError
from .store import AgentExistsError, ServiceKeyExistsError, UnknownAgentError
from .store.lock import StoreInUseError, serving_lock
from .ops.workers import Supervisor, WorkerRole, check_port_free, cluster_problem


class UsageError(Exception):
    """Bad command-line usage (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    # SUPPRESS: a sub-command's own default must not erase a --config given before the sub-command.
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (else $HQ_CONFIG, else ./config.toml)")
    parser = _Parser(prog="python -m hq", description="Run and administer HQ.", parents=[common])
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    serve = commands.add_parser("serve", parents=[common], help="run HQ (the default)")
    serve.add_argument("--host", help="address to listen on")
    serve.add_argument("--port", type=int, help="port to listen on")
    serve.add_argument("--workers", type=_worker_count, default=1, metavar="N",
                       help="worker processes sharing the port (N > 1 needs PostgreSQL and Redis)")
    # Given by the supervisor to the workers it starts (hq/ops/workers.py); not for operators.
    serve.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    agents = commands.add_parser("agents", parents=[common], help="manage agents")
    actions = agents.add_subparsers(dest="action", required=True, parser_class=_Parser)
    add = actions.add_parser("add", parents=[common], help="create an agent")
    add.add_argument("codename")
    add.add_argument("--role", required=True)
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    actions.add_parser("list", parents=[common], help="list agents")
    passwd = actions.add_parser("passwd", parents=[common], help="set a password and end the agent's sessions")
    passwd.add_argument("codename")
    passwd.add_argument("--password-stdin", action="store_true")
    role = actions.add_parser("role", parents=[common], help="change an agent's role and end its sessions")
    role.add_argument("codename")
    role.add_argument("--role", required=True)
    for name, text in (("disable", "disable an agent and end its sessions"), ("enable", "enable an agent")):
        actions.add_parser(name, parents=[common], help=text).add_argument("codename")
    mfa = actions.add_parser("mfa", parents=[common], help="an agent's TOTP second factor")
    mfa_actions = mfa.add_subparsers(dest="mfa_action", required=True, parser_class=_Parser)
    for name, text in (("enroll", "enrol a TOTP app: prints the otpauth:// URI and a QR code, then asks for a code"),
                       ("reset", "remove the agent's second factor and end its sessions")):
        mfa_actions.add_parser(name, parents=[common], help=text).add_argument("codename")
    keys = commands.add_parser("keys", parents=[common], help="manage service keys for programs")
    key_actions = keys.add_subparsers(dest="action", required=True, parser_class=_Parser)
    key_add = key_actions.add_parser("add", parents=[common], help="create a key: printed once, stored only as a hash")
    key_add.add_argument("name")
    key_add.add_argument("--role", required=True)
    key_actions.add_parser("list", parents=[common], help="list keys (never the key itself)")
    key_actions.add_parser("revoke", parents=[common],
                           help="refuse a key at once on every node and end its live sockets").add_argument("name")
    return parser


def _worker_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return count


def _worker_role(args: argparse.Namespace) -> WorkerRole | None:
    if getattr(args, "worker", None) is None:
        return None
    if args.supervisor is None or args.ready_fd is None:
        raise UsageError("--worker is given by the supervisor of `serve --workers N`, with --supervisor and --ready-fd")
    return WorkerRole(args.worker, args.supervisor, args.ready_fd)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code."""
    try:
        args = _parser().parse_args(argv)
        config = find_config(getattr(args, "config", None))
        settings = load_settings(config)
        if args.command in (None, "serve"):
            return serve(settings, getattr(args, "host", None), getattr(args, "port", None),
                         getattr(args, "workers", 1), config, _worker_role(args))
        if args.command == "keys":
            return asyncio.run(_keys(settings, args))
        return asyncio.run(_agents(settings, args))
    except (UsageError, ConfigError) as exc:
        print(f"hq: {exc}", file=sys.stderr)
        return 2
    except StoreInUseError as exc:
        print(f"hq: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"hq: error: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1


def serve(settings: Settings, host: str | None, port: int | None, workers: int = 1,
          config: Path | None = None, worker: WorkerRole | None = None) -> int:
    """Run HQ until interrupted: one process (``workers`` 1), a supervisor of ``workers`` worker
    processes on one port, or (``worker``) one of those workers."""
    if worker is not None:
        # Checked again: a worker started on SIGHUP reads the configuration as it is now.
        problem = cluster_problem(settings)
        if problem:
            raise UsageError(f"worker {worker.number}: --workers {problem}")
        return _serve(settings, host, port, worker)
    if workers > 1:
        return _supervise(settings, host, port, workers, config)
    # Before anything is built or bound: a second HQ on the same file must leave at once, untouched.
    with serving_lock(settings.storage_url):
        return _serve(settings, host, port)


def _supervise(settings: Settings, host: str | None, port: int | None, workers: int, config: Path | None) -> int:
    """Run ``workers`` HQ processes on one port until SIGTERM/SIGINT (hq/ops/workers.py)."""
    problem = cluster_problem(settings)
    if problem:
        raise UsageError(f"--workers {workers} {problem}")
    host = host or settings.server.host
    port = port if port is not None else settings.server.port
    if port == 0:
        raise UsageError("--workers needs a fixed port: with port 0 each worker would get a port of its own")
    _configure_logging("[supervisor] ")
    check_port_free(host, port)
    # Once, before any worker starts: N workers starting together on an empty database would each
    # try to create the first agent, and on a first start each would generate its own secret file.
    asyncio.run(_prepare_cluster(settings))
    scheme = "https" if settings.server.tls_cert and settings.server.tls_key else "http"
    supervisor = Supervisor(workers, partial(_worker_command, config, host, port),
                            lambda: print(f"HQ listening on {scheme}://{host}:{port}/", flush=True))
    return asyncio.run(supervisor.run())


async def _prepare_cluster(settings: Settings) -> None:
    hq = build(settings)  # makes the generated secret file, if HQ uses one and it is missing
    await hq.store.open()  # and the schema
    try:
        first = await hq.admin.ensure_first_agent()
        if first is not None:
            print_first_agent(*first)
    finally:
        await _release(hq)


def _worker_command(config: Path | None, host: str, port: int, number: int, ready_fd: int) -> list[str]:
    # A fresh interpreter rather than a fork: a worker started on SIGHUP runs the code and reads the
    # configuration file as they are now, which is what makes a rolling restart an upgrade.
    command = [sys.executable, "-m", "hq", "serve"]
    if config is not None:
        command += ["--config", str(config.resolve())]
    return command + ["--host", host, "--port", str(port), "--worker", str(number),
                      "--supervisor", str(os.getpid()), "--ready-fd", str(ready_fd)]


def _configure_logging(prefix: str = "") -> None:
    # The prefix tells the supervisor's and each worker's lines apart in one stream.
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())  # library logs may quote a bad request line or header


def _serve(settings: Settings, host: str | None, port: int | None, worker: WorkerRole | None = None) -> int:
    _configure_logging(f"[worker {worker.number}] " if worker else "")
    if worker is not None:
        worker.attach()
    _install_uvloop()
    _tune_gc()
    ssl_context = None
    if settings.server.tls_cert and settings.server.tls_key:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(settings.server.tls_cert, settings.server.tls_key)
    app = create_app(settings)
    if settings.server.eager_tasks:
        app.on_startup.insert(0, _use_eager_tasks)
    host = host or settings.server.host
    port = port if port is not None else settings.server.port
    scheme = "https" if ssl_context else "http"

    # Port 0: the kernel picks a free port, bound here so that the line below can name it (whoever
    # started HQ reads the URL from that line; nothing else learns the port).
    listener = _bind_any_free_port(host) if port == 0 and worker is None else None
    if listener is not None:
        port = listener.getsockname()[1]

    def listening(_: str) -> None:
        if worker is None:
            print(f"HQ listening on {scheme}://{host}:{port}/", flush=True)
        else:  # the supervisor prints that line once for all workers
            worker.report_when_serving([check.probe for check in app[HQ_KEY].health_checks() if check.required])

    if listener is not None:
        web.run_app(app, sock=listener, ssl_context=ssl_context, access_log_class=RedactingAccessLogger,
                    print=listening)
        return 0
    # A worker shares the port with its siblings: SO_REUSEPORT, the kernel spreading connections.
    web.run_app(app, host=host, port=port, ssl_context=ssl_context, access_log_class=RedactingAccessLogger,
                reuse_port=worker is not None, print=listening)
    return 0


def _bind_any_free_port(host: str) -> socket.socket:
    """A listening socket on ``host`` and a port the kernel chose (``[server] port = 0``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(128)
    return listener


async def _use_eager_tasks(app: web.Application) -> None:
    # Python 3.12+: a task runs at once, up to its first wait, and costs no loop iteration if it
    # never waits (aiohttp's per-request tasks, HQ's continued handlers). Opt-in: bench/README.md.
    asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]


def _tune_gc() -> None:
    # A server allocates many short-lived objects per event; with the default threshold (700) the
    # cyclic collector runs every few messages and walks every long-lived object. Freezing what
    # start-up allocated and raising the first threshold cut fan-out CPU by ~30 % (bench/README.md).
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _agents(settings: Settings, args: argparse.Namespace) -> int:
    hq = build(settings)
    await hq.store.open()
    try:
        return await _run_agent_action(hq, args)
    except AgentExistsError as exc:
        raise UsageError(f"an agent named {exc} already exists (codenames ignore case)") from None
    except UnknownAgentError as exc:
        raise UsageError(f"no agent named {exc}") from None
    except (AgentAdminError, PasswordPolicyError) as exc:
        raise UsageError(str(exc)) from None
    finally:
        await _release(hq)


async def _keys(settings: Settings, args: argparse.Namespace) -> int:
    """``keys add|list|revoke``: through ServiceKeys, like the directors' API (audited with actor ``cli``)."""
    hq = build(settings)
    await hq.store.open()
    try:
        keys = hq.service_keys
        if args.action == "add":
            created = await keys.create(args.name, args.role)
            print(f"key add: {created.key.name} ({created.key.role}). The key, shown only this once:")
            print(created.secret, flush=True)
        elif args.action == "revoke":
            revoked = await keys.revoke(args.name)
            print(f"key revoke: {revoked.name}: refused from now on, its live sockets ended")
        else:
            rows = [("NAME", "ROLE", "CREATED", "LAST_USED")]
            rows += [(k.name, k.role, k.created, k.last_used or "never") for k in await keys.list()]
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for row in rows:
                print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        return 0
    except ServiceKeyExistsError as exc:
        raise UsageError(f"a key named {exc} already exists (names ignore case)") from None
    except UnknownServiceKeyError as exc:
        raise UsageError(f"no key named {exc}") from None
    except ServiceKeyAdminError as exc:
        raise UsageError(str(exc)) from None
    finally:
        await _release(hq)


async def _release(hq: HQ) -> None:
    """Close what :func:`build` and ``store.open`` made (outside a served app's lifecycle)."""
    await hq.tasks.close()
    await hq.store.close()
    if hq.redis is not None:
        await hq.redis.aclose()
    hq.hasher.close()
    hq.audit.close()


async def _run_agent_action(hq: HQ, args: argparse.Namespace) -> int:
    if args.action == "mfa":
        return await _mfa_action(hq, args.mfa_action, args.codename)
    admin = hq.admin
    if args.action == "list":
        # The contract's four columns first; then what the directors' list shows too.
        logins, second_factor = await admin.last_logins(), await admin.with_second_factor()
        rows = [("CODENAME", "ROLE", "ENABLED", "CREATED", "LAST_LOGIN", "2FA")]
        rows += [(a.codename, a.role, "yes" if a.enabled else "no", a.created,
                  logins.get(a.codename.lower()) or "never", "yes" if a.codename.lower() in second_factor else "no")
                 for a in await admin.list()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        return 0
    actions: dict[str, Callable[[], Awaitable[Any]]] = {
        "add": lambda: admin.add(args.codename, args.role, _read_password(args.password_stdin)),
        "passwd": lambda: admin.set_password(args.codename, _read_password(args.password_stdin)),
        "disable": lambda: admin.set_enabled(args.codename, False),
        "enable": lambda: admin.set_enabled(args.codename, True),
        "role": lambda: admin.set_role(args.codename, args.role),
    }
    # Audited by AgentAdmin as the directors' API is: admin_action with actor "cli", interface "cli".
    result = await actions[args.action]()
    agent = result.agent if isinstance(result, PasswordSet) else result
    print(f"{args.action}: {agent.codename} ({agent.role}{'' if agent.enabled else ', disabled'})")
    return 0


async def _mfa_action(hq: HQ, action: str, codename: str) -> int:
    """``agents mfa enroll|reset CODENAME``: through MfaAdmin, like the directors' API."""
    try:
        if action == "reset":
            if await hq.mfa.reset(codename):
                print(f"mfa reset: {codename}: second factor removed, sessions ended; it enrols again at its next login")
            else:
                print(f"mfa reset: {codename} had no second factor; nothing changed")
            return 0
        enrollment = await hq.mfa.begin(codename)
        _show_enrollment(enrollment)
        attempts = 3 if sys.stdin.isatty() else 1  # a terminal may try again; a script gets one line
        for attempt in range(1, attempts + 1):
            code = _read_code()
            try:
                codes = await hq.mfa.confirm(codename, code)
            except OtpRejected:
                if attempt < attempts:
                    print("That code does not match (is the phone's clock right?); try again.", flush=True)
                continue
            print(f"mfa enroll: {enrollment.codename} enrolled. Recovery codes, each good for one login "
                  "without the app; shown only this once:")
            for recovery in codes:
                print(f"  {recovery}")
            return 0
    except (MfaAdminError, OtpRejected) as exc:
        raise UsageError(str(exc)) from None
    raise UsageError(f"that code does not match: {codename}'s enrolment is not complete (its second factor "
                     "is unchanged); run `agents mfa enroll` again")


def _show_enrollment(enrollment: Enrollment) -> None:
    """The QR code (if this terminal can draw it), the URI and the secret: shown this once only."""
    print(f"Second factor for {enrollment.codename}: scan this QR code with an authenticator app "
          "(or type the secret into it). Shown only this once.")
    drawing = enrollment.terminal_qr()
    try:
        drawing.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        drawing = "(this terminal cannot draw the QR code: use the URI or the secret)\n"
    print(drawing, end="")
    print(f"URI:    {enrollment.otpauth_uri}")
    print(f"Secret: {enrollment.secret}", flush=True)


def _read_code() -> str:
    """A code from the app: prompted on a terminal, else one line of standard input."""
    if sys.stdin.isatty():
        return input("Code from the app: ")
    line = sys.stdin.readline()
    if not line:
        raise UsageError("no code on standard input: the enrolment is not complete; run `agents mfa enroll` again")
    return line.strip()


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise UsageError("no password on standard input")
        return line.rstrip("\r\n")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Repeat password: ") != first:
        raise UsageError("the passwords do not match")
    return first


if __name__ == "__main__":
    sys.exit(main())
