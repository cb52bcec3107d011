"""``create_app(settings)``: the one place that knows every part and wires them together.

Data flows one way: credentials → passwords → tokens → identity → realtime → store → fan-out.
Resources (the store, the revocation watcher, the bcrypt pool, the audit file, the Redis client,
the background tasks) are opened and closed with ``cleanup_ctx``. A process is one node of the
cluster: one node id, one Redis client and one set of background tasks, handed to every part.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import redis.asyncio as aioredis
from aiohttp import web

from .addresses import AddressResolver
from .ops.admin_ui import AdminUI
from .auth.agents import AgentAdmin
from .audit import AuditLog, audit_context
from .auth.clearance import ClearancePolicy
from .auth.credentials import CredentialCheck
from .clock import Clock, SystemClock
from .config import Settings
from .http.asyncapi import AsyncApi
from .http.auth_routes import AuthRoutes
from .http.boundary import error_boundary
from .http.console import Console
from .http.directors import DirectorsApi
from .http.guards import ChangeLimiter, DirectorGuard
from .http.keys import KeysApi
from .http.health import Health, HealthCheck
from .http.openapi import OpenApi
from .http.origins import refuse_foreign_origins
from .http.second_factor import SecondFactorRoutes
from .auth.identity import Authenticator
from .auth.limits import LoginLimiter, LoginThrottle, RedisLoginThrottle
from .ops.metrics import Metrics
from .auth.passwords import PasswordHasher
from .cluster.node import new_node_id
from .cluster.presence import Presence
from .cluster.redis import redis_client
from .cluster.routing import TopicBus
from .cluster.revocation import RevocationBus, RevocationWatcher, revocation_channel
from .cluster.socket_registry import ConnectionRegistry
from .realtime.plainws.endpoint import PlainWebSockets
from .realtime.realtime import Realtime
from .auth.sessions import SessionService
from .auth.service_keys import ServiceKeys
from .auth.mfa import SecondFactor, SecretBox
from .auth.mfa_admin import MfaAdmin
from .store import Store, open_store
from .store.pruning import Pruner, Retention
from .auth.tokens import KeyRing, TokenService
from .tasks import BackgroundTasks


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
    credentials: CredentialCheck
    sessions: SessionService
    authenticator: Authenticator
    realtime: Realtime
    #: The plain WebSocket endpoint (``/ws``, ``/ws/{channel}``, ``/missions``) over the same events.
    plain: PlainWebSockets
    admin: AgentAdmin
    watcher: RevocationWatcher
    presence: Presence
    mfa: MfaAdmin
    #: Service keys for programs (created, listed, revoked and verified in one place).
    service_keys: ServiceKeys
    #: This process's id as a node of the cluster (presence, socket registry, revocation bus, fan-out).
    node: str
    #: Every fire-and-forget task of the process, cancelled at shutdown.
    tasks: BackgroundTasks
    #: Keeps the store's internal tables bounded (one node of the cluster prunes each round).
    pruner: Pruner
    #: The process's one Redis client (``[cluster] redis_url``), shared by every part that uses Redis.
    redis: aioredis.Redis | None = None

    def health_checks(self) -> list[HealthCheck]:
        """The backends ``/healthz`` asks about: the database is required; without Redis HQ serves,
        degraded (login limits per node, cross-node delivery and revocation push paused)."""
        checks = [HealthCheck("database", self.store.ping)]
        if self.redis is not None:
            checks.append(HealthCheck("redis", self.redis.ping, required=False))
        return checks


HQ_KEY = web.AppKey("hq", HQ)
METRICS_KEY = web.AppKey("metrics", Metrics)
FirstAgentReporter = Callable[[str, str], None]


def build(settings: Settings, clock: Clock | None = None) -> HQ:
    """Construct every part (nothing is opened yet).

    ``clock`` judges token lifetimes, the refresh grace window, the login-throttle windows and live
    sockets' expiry: the system clock unless a test moves a :class:`~hq.clock.ManualClock` itself.
    """
    clock = SystemClock() if clock is None else clock
    store = open_store(settings.storage_url)
    hasher = PasswordHasher(settings.auth.bcrypt_rounds, settings.auth.bcrypt_workers)
    keys = KeyRing.from_settings(settings)
    tokens = TokenService(keys, settings.auth, clock)
    policy = ClearancePolicy(settings.clearance.levels, settings.channels)
    audit = AuditLog(settings.audit.path, settings.base_dir)
    cluster = settings.cluster
    node = new_node_id()  # a new one per process: a restarted node never revives its old entries
    tasks = BackgroundTasks()
    redis = redis_client(cluster.redis_url) if cluster.redis_url else None
    # The key that seals TOTP secrets is made here on first use, like the HMAC secret above.
    second_factor = SecondFactor(store, SecretBox.from_file(settings.mfa_key_path), settings.auth.mfa_issuer,
                                 settings.mfa_roles)
    # One check and one login limiter per process, for every door (login, password re-check, Admin UI):
    # one failure budget per codename and per address, whichever door a guesser knocks on.
    limiter = _login_limiter(settings, redis, clock)
    credentials = CredentialCheck(store, hasher, second_factor, limiter, audit)
    sessions = SessionService(store, credentials, tokens, audit, settings.auth, clock)
    # A wrong service key counts against the client address in the same limiter as a wrong password.
    service_keys = ServiceKeys(store, policy, sessions, limiter, audit)
    authenticator = Authenticator(tokens, store, service_keys)
    addresses = AddressResolver(settings.server.trusted_proxies)
    presence = Presence(settings.channels, redis, prefix=cluster.channel, heartbeat=cluster.presence_heartbeat,
                        ttl=cluster.presence_ttl, node=node)
    # Every live socket of the cluster (in Redis with [cluster] redis_url), for the directors' API; a
    # dead node's sockets are forgotten as fast as its presence is.
    connections = ConnectionRegistry(redis, prefix=cluster.channel, node=node, heartbeat=cluster.presence_heartbeat,
                                     expiry=cluster.presence_ttl)
    # Each channel's broadcasts reach the nodes with members in it, over the same client.
    routes = TopicBus(redis, cluster.channel, node) if redis is not None else None
    realtime = Realtime(settings, authenticator, policy, store, audit, addresses, presence, connections, tasks, routes,
                        clock=clock)
    plain = PlainWebSockets(realtime, settings, addresses)
    bus = RevocationBus(redis, revocation_channel(cluster.channel), node) if redis is not None else None
    watcher = RevocationWatcher(store, realtime.end_sessions, settings.storage.revocation_poll, bus)
    # Ends this process's sockets and publishes to the other nodes; the CLI builds the same parts.
    sessions.on_revoke(watcher.revoked_here)
    admin = AgentAdmin(store, hasher, policy, sessions, audit)
    mfa = MfaAdmin(store, second_factor, sessions, audit)
    pruner = Pruner(store, Retention.from_auth(settings.auth), clock)
    return HQ(settings, store, hasher, keys, tokens, policy, audit, credentials, sessions, authenticator, realtime,
              plain, admin, watcher, presence, mfa, service_keys, node, tasks, pruner, redis)


def _login_limiter(settings: Settings, redis: aioredis.Redis | None, clock: Clock) -> LoginLimiter:
    """The failed-login counts: in Redis when the nodes share one, else in this process."""
    limits = settings.limits
    counts = (limits.login_failures_per_codename, limits.login_failures_per_address, limits.login_window)
    if redis is None:
        return LoginThrottle(*counts, clock=clock)
    return RedisLoginThrottle(redis, *counts, prefix=f"{settings.cluster.channel}:login-failures", clock=clock)


def first_agent_notice(codename: str, password: str) -> str:
    """The one line that tells the operator how to log in to a brand-new HQ."""
    return (f"HQ created the first agent: codename {codename!r}, password {password!r}. "
            "It is shown only this once; change it with `python -m hq agents passwd`.")


def print_first_agent(codename: str, password: str) -> None:
    """Tell the operator, once, how to log in to a brand-new HQ (on standard output)."""
    print(first_agent_notice(codename, password), file=sys.stdout, flush=True)


def create_app(settings: Settings, on_first_agent: FirstAgentReporter = print_first_agent,
               clock: Clock | None = None) -> web.Application:
    """The aiohttp application serving the HTTP API, Socket.IO and the plain WebSocket on one port (``clock``: see :func:`build`)."""
    hq = build(settings, clock)
    addresses = AddressResolver(settings.server.trusted_proxies)
    # The error boundary first (outermost): it answers every refusal, the origin allow-list's included.
    middlewares = [error_boundary, audit_context(addresses),
                   refuse_foreign_origins(settings.server.allowed_origins, hq.audit, addresses)]
    app = web.Application(middlewares=middlewares)
    app[HQ_KEY] = hq
    app.add_routes(AuthRoutes(settings, hq.sessions, hq.authenticator, addresses, hq.keys).routes())
    app.add_routes(Health(hq.health_checks()).routes())
    # One guard, so that one change budget per director covers the directors' routes of both APIs.
    directors = DirectorGuard(hq.authenticator, hq.policy.levels[-1], ChangeLimiter(settings.limits))
    app.add_routes(SecondFactorRoutes(settings, hq.mfa, hq.sessions, hq.authenticator, directors, addresses).routes())
    app.add_routes(DirectorsApi(settings, hq.admin, directors, hq.realtime.connections).routes())
    app.add_routes(KeysApi(settings, hq.service_keys, directors).routes())
    app.add_routes(OpenApi(settings).routes())
    app.add_routes(AsyncApi(settings).routes())
    hq.realtime.sio.attach(app, socketio_path="socket.io")
    app.add_routes(hq.plain.routes())
    app.on_shutdown.append(hq.realtime.shutdown)
    app.on_shutdown.append(hq.plain.shutdown)
    admin_ui = add_console_and_monitoring(app, hq)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await hq.store.open()
        first = await hq.admin.ensure_first_agent()
        if first is not None:
            on_first_agent(*first)
        await hq.watcher.start()
        hq.realtime.start()
        await hq.presence.start()
        await hq.realtime.connections.start()
        hq.pruner.start()
        hq.service_keys.start()
        yield
        await hq.service_keys.stop()
        await hq.pruner.stop()
        await admin_ui.shutdown()
        await hq.realtime.connections.stop()
        await hq.presence.stop()
        await hq.realtime.stop()
        await hq.watcher.stop()
        await hq.tasks.close()  # before the store closes: a task may be using it
        await hq.store.close()
        if hq.redis is not None:
            await hq.redis.aclose()
        hq.hasher.close()
        hq.audit.close()

    app.cleanup_ctx.append(lifecycle)
    return app


def add_console_and_monitoring(app: web.Application, hq: HQ) -> AdminUI:
    """The browser console, ``/metrics`` (fed by the audit log and the Socket.IO layer), the Admin UI."""
    settings = hq.settings
    app.add_routes(Console(hq.authenticator, hq.policy, settings.channels).routes())
    metrics = Metrics(settings.channels, lambda: hq.realtime.connection_count)
    hq.audit.subscribe(metrics.audit_event)
    hq.realtime.observe(metrics)
    hq.realtime.faults.observe(metrics)
    app.add_routes(metrics.routes())
    app[METRICS_KEY] = metrics
    admin_ui = AdminUI(settings, hq.realtime.sio, hq.credentials, hq.audit,
                       AddressResolver(settings.server.trusted_proxies))
    admin_ui.install()
    return admin_ui
