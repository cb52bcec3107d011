"""``create_app(settings)``: the one place that knows every part and wires them together.

Data flows one way: credentials → passwords → tokens → identity → realtime → store → fan-out.
Resources (the store, the revocation watcher, the bcrypt pool, the audit file) are opened and
closed with ``cleanup_ctx``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from aiohttp import web

from .addresses import AddressResolver
from .agents import AgentAdmin
from .audit import AuditLog
from .clearance import ClearancePolicy
from .config import Settings
from .http_api import HttpApi, json_errors
from .identity import Authenticator
from .limits import LoginThrottle
from .passwords import PasswordHasher
from .realtime import Realtime
from .revocation import RevocationWatcher
from .sessions import SessionService
from .store import Store, open_store
from .tokens import KeyRing, TokenService


@dataclass
class HQ:
    """Every part of one HQ node, built from settings but not yet started."""

    settings: Settings
    store: Store
    hasher: PasswordHasher
    keys: KeyRing
    tokens: TokenService
    policy: ClearancePolicy
    audit: AuditLog
    sessions: SessionService
    authenticator: Authenticator
    realtime: Realtime
    admin: AgentAdmin
    watcher: RevocationWatcher


HQ_KEY = web.AppKey("hq", HQ)
FirstAgentReporter = Callable[[str, str], None]


def build(settings: Settings) -> HQ:
    """Construct every part (nothing is opened yet)."""
    store = open_store(settings.storage_url)
    hasher = PasswordHasher(settings.auth.bcrypt_rounds, settings.auth.bcrypt_workers)
    keys = KeyRing.from_settings(settings)
    tokens = TokenService(keys, settings.auth)
    policy = ClearancePolicy(settings.clearance.levels, settings.channels)
    audit = AuditLog(settings.audit.path, settings.base_dir)
    limits = settings.limits
    throttle = LoginThrottle(limits.login_failures_per_codename, limits.login_failures_per_address,
                             limits.login_window)
    sessions = SessionService(store, hasher, tokens, throttle, audit, settings.auth)
    authenticator = Authenticator(tokens, store)
    addresses = AddressResolver(settings.server.trusted_proxies)
    realtime = Realtime(settings, authenticator, policy, store, audit, addresses)
    sessions.on_revoke(realtime.end_sessions)
    watcher = RevocationWatcher(store, realtime.end_sessions, settings.storage.revocation_poll)
    admin = AgentAdmin(store, hasher, policy, sessions)
    return HQ(settings, store, hasher, keys, tokens, policy, audit, sessions, authenticator, realtime,
              admin, watcher)


def print_first_agent(codename: str, password: str) -> None:
    """Tell the operator, once, how to log in to a brand-new HQ."""
    print(f"HQ created the first agent: codename {codename!r}, password {password!r}. "
          "It is shown only this once; change it with `python -m hq agents passwd`.",
          file=sys.stdout, flush=True)


def create_app(settings: Settings, on_first_agent: FirstAgentReporter = print_first_agent) -> web.Application:
    """The aiohttp application serving the HTTP API and Socket.IO on one port."""
    hq = build(settings)
    app = web.Application(middlewares=[json_errors])
    app[HQ_KEY] = hq
    health = [hq.store.ping]
    api = HttpApi(settings, hq.sessions, hq.authenticator, AddressResolver(settings.server.trusted_proxies),
                  hq.keys, health)
    app.add_routes(api.routes())
    hq.realtime.sio.attach(app, socketio_path="socket.io")

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await hq.store.open()
        first = await hq.admin.ensure_first_agent()
        if first is not None:
            on_first_agent(*first)
        await hq.watcher.start()
        yield
        await hq.watcher.stop()
        await hq.store.close()
        hq.hasher.close()
        hq.audit.close()

    app.cleanup_ctx.append(lifecycle)
    return app
