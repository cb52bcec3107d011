"""The field agent's command line: ``python -m agent_client [options] login|listen|send|history``.

Each run logs in (password from ``$AGENT_PASSWORD`` or a prompt without echo; for an agent with a
second factor, the code from ``$AGENT_OTP``, else a prompt without echo when HQ asks for one and
standard input is a terminal), does its one job and logs out. Errors are one line on stderr naming the contract's code; exit 1, or 2 for usage errors.

Several nodes of one HQ cluster: ``--url`` given more than once, or ``$HQ_URL`` holding a
comma-separated list; the client uses the first that answers and fails over to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import sys
from typing import NoReturn, Sequence

from .client import AgentClient
from .errors import AgentClientError, MfaRequired
from .messages import Agent, Message
from .nodes import parse_urls

DEFAULT_URL = "http://127.0.0.1:3000"


class _Parser(argparse.ArgumentParser):
    """``argparse`` with usage errors on one line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (global options before the command)."""
    parser = _Parser(prog="python -m agent_client", description="HQ field-agent client")
    parser.add_argument("--url", action="append", dest="urls", metavar="URL",
                        help="HQ's base URL; repeat it (or give a comma-separated list) for several "
                             f"nodes of one cluster, tried in turn (default: $HQ_URL or {DEFAULT_URL})")
    parser.add_argument("--codename", default=os.environ.get("AGENT_CODENAME"),
                        help="your codename (default: $AGENT_CODENAME)")
    parser.add_argument("--ca-file", help="PEM file of CA certificates to trust for HQ's TLS certificate")
    parser.add_argument("--json", action="store_true", help="print JSON (one object per line)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("login", help="check your credentials; prints codename and role")
    listen = commands.add_parser("listen", help="print each new message of the channels until Ctrl-C")
    listen.add_argument("channels", nargs="+", metavar="CHANNEL")
    send = commands.add_parser("send", help="send a message; prints its stored id")
    send.add_argument("channel", metavar="CHANNEL")
    send.add_argument("text", metavar="TEXT")
    history = commands.add_parser("history", help="print a channel's messages, oldest first")
    history.add_argument("channel", metavar="CHANNEL")
    history.add_argument("--after", type=int, metavar="ID", help="only messages after this id")
    history.add_argument("--limit", type=int, metavar="N", help="at most N messages (HQ's default: 100)")
    return parser


def format_message(message: Message, as_json: bool) -> str:
    """One line per message: ``#channel id sender: text`` (line breaks escaped) or JSON."""
    if as_json:
        return json.dumps(message.to_wire(), ensure_ascii=False)
    text = message.text.replace("\r", "\\r").replace("\n", "\\n")
    return f"#{message.channel} {message.id} {message.sender}: {text}"


async def run(args: argparse.Namespace, password: str, otp: str | None = None) -> int:
    """Log in, run the command, log out."""
    async with AgentClient(args.urls, ca_file=args.ca_file) as client:
        agent = await _login(client, args.codename, password, otp)
        try:
            if args.command == "login":
                print(json.dumps({"codename": agent.codename, "role": agent.role}) if args.json
                      else f"{agent.codename} {agent.role}")
            elif args.command == "send":
                await client.connect()
                message_id = await client.send(args.channel, args.text)
                print(json.dumps({"id": message_id}) if args.json else message_id)
            elif args.command == "history":
                await client.connect()
                for message in await client.history(args.channel, args.after, args.limit):
                    print(format_message(message, args.json))
            elif args.command == "listen":
                await listen(client, args.channels, args.json)
        finally:
            if client.error is None:
                await _logout_quietly(client)
    return 0


async def _login(client: AgentClient, codename: str, password: str, otp: str | None) -> Agent:
    """Log in; when HQ asks for a second factor that ``$AGENT_OTP`` did not give, ask for it on the
    terminal (once: a wrong code is counted by HQ's login limits)."""
    try:
        return await client.login(codename, password, otp)
    except MfaRequired as exc:
        if otp is not None:
            raise
        if not sys.stdin.isatty():
            raise MfaRequired(f"{exc.message} (set $AGENT_OTP to the code)") from None
    otp = await asyncio.to_thread(getpass.getpass, f"Code from the authenticator app for {codename} "
                                                   "(or a recovery code): ")
    return await client.login(codename, password, otp.strip())


async def listen(client: AgentClient, channels: list[str], as_json: bool) -> None:
    """Print every message of ``channels`` as it arrives, until SIGINT or SIGTERM."""
    await client.connect(channels)
    # Status on stderr, so stdout stays one message per line.
    print(f"listening to {' '.join('#' + c for c in channels)}; Ctrl-C to stop", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        async for message in client:
            print(format_message(message, as_json), flush=True)
    except asyncio.CancelledError:
        task.uncancel()  # Ctrl-C or terminate: a normal way to stop listening; log out next
        return
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _logout_quietly(client: AgentClient) -> None:
    try:
        await client.logout()
    except AgentClientError:
        pass  # the command's own result already stands; the session just lives until it expires


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # --url replaces $HQ_URL rather than adding to it: the command line names the nodes to use.
        args.urls = parse_urls(args.urls or os.environ.get("HQ_URL") or DEFAULT_URL)
    except ValueError:
        parser.error("--url and $HQ_URL name no HQ URL")
    if not args.codename:
        parser.error("a codename is needed: --codename NAME or $AGENT_CODENAME")
    password = os.environ.get("AGENT_PASSWORD")
    try:
        if password is None:
            password = getpass.getpass(f"Password for {args.codename}: ")
        return asyncio.run(run(args, password, os.environ.get("AGENT_OTP") or None))
    except AgentClientError as exc:
        detail = f" ({exc.reason})" if hasattr(exc, "reason") else ""
        print(f"error: {exc.code}{detail}: {exc.message}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, EOFError):
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
