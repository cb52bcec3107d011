"""Prometheus metrics for operators: ``GET /metrics`` in the text exposition format.

Every label comes from a small fixed vocabulary (event names, contract codes, reasons, configured
channels, transports); anything else is counted as ``other``, so no codename, token or client
input can ever become a label and cardinality stays bounded. Each application owns its own
``CollectorRegistry`` (no process-wide globals), so several HQ apps in one process do not clash.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from ..vocab import FAULT_KINDS

OTHER = "other"
EVENTS = frozenset({"join", "leave", "message", "history", "reauth", "presence", "unknown", "malformed"})
#: Socket.IO's two transports and the plain WebSocket (``/ws``, ``/ws/{channel}``, ``/missions``).
TRANSPORTS = frozenset({"polling", "websocket", "plain_websocket"})
TOKEN_CODES = frozenset({"token_missing", "token_invalid", "token_expired", "token_revoked", "token_reused",
                         "agent_disabled", "origin_not_allowed", "unavailable", "mfa_enrollment_required"})
EVENT_CODES = frozenset({"bad_request", "forbidden", "not_found", "rate_limited", "payload_too_large",
                         "internal"}) | TOKEN_CODES
LOGIN_OUTCOMES = frozenset({"success", "invalid_credentials", "agent_disabled", "too_many_attempts", "forbidden",
                            "mfa_required", "invalid_otp"})
SESSION_REASONS = frozenset({"token_expired", "logged_out", "revoked", "agent_disabled"})
DISCONNECT_REASONS = SESSION_REASONS | frozenset({"server disconnect", "client disconnect", "ping timeout",
                                                  "transport close", "transport error", "disconnected"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def bounded(value: Any, vocabulary: Iterable[str]) -> str:
    """``value`` if it belongs to ``vocabulary``, else ``"other"`` (labels never carry free text)."""
    return value if isinstance(value, str) and value in vocabulary else OTHER


class Metrics:
    """HQ's counters, gauge and histogram in one per-application registry.

    Fed by two listeners: the audit log (connections, logins, refreshes, revocations) and the
    Socket.IO layer (event latency and outcome, stored messages, ended sessions).
    """

    def __init__(self, channels: Iterable[str], live_connections: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self._channels = frozenset(channels)
        self._event_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._message_children: dict[str, Any] = {}
        reg = self.registry
        self.live = Gauge("hq_connections_live", "Authenticated real-time sockets open on this node (both endpoints)",
                          registry=reg)
        self.live.set_function(lambda: float(live_connections()))
        self.accepted = Counter("hq_connections_accepted", "Real-time sockets accepted, by transport", ["transport"],
                                registry=reg)
        self.refused = Counter("hq_connections_refused", "Real-time sockets refused, by code", ["code"],
                               registry=reg)
        self.ended = Counter("hq_connections_ended", "Real-time sockets ended, by reason", ["reason"],
                             registry=reg)
        self.logins = Counter("hq_logins", "Password logins, by outcome", ["outcome"], registry=reg)
        self.refreshes = Counter("hq_token_refreshes", "Refresh-token exchanges, by outcome", ["outcome"],
                                 registry=reg)
        self.revoked = Counter("hq_sessions_revoked", "Login sessions revoked by this node, by reason",
                               ["reason"], registry=reg)
        self.sessions_ended = Counter("hq_sessions_ended", "Sockets told session_ended, by reason", ["reason"],
                                      registry=reg)
        self.messages = Counter("hq_messages", "Messages stored, by channel", ["channel"], registry=reg)
        self.events = Counter("hq_events", "Client events handled (both endpoints), by event and outcome",
                              ["event", "outcome"], registry=reg)
        self.events_by_transport = Counter("hq_transport_events", "Client events handled, by transport",
                                           ["transport"], registry=reg)
        self._transport_children: dict[str, Any] = {}
        self.latency = Histogram("hq_event_duration_seconds", "Time to handle a client event (both endpoints)",
                                 ["event"], buckets=LATENCY_BUCKETS, registry=reg)
        self.rate_limited = Counter("hq_rate_limit_hits", "Requests refused by a rate limit, by limit",
                                    ["limit"], registry=reg)
        self.faults = Counter("hq_protocol_faults", "Malformed or forbidden client packets, by kind", ["kind"],
                              registry=reg)
        self._start_at_zero()

    def _start_at_zero(self) -> None:
        # Known series exist from the start, so dashboards and rate() see 0 rather than nothing.
        for outcome in LOGIN_OUTCOMES:
            self.logins.labels(outcome)
        for channel in self._channels:
            self.messages.labels(channel)
        for event in EVENTS:
            self.latency.labels(event)
        for reason in SESSION_REASONS:
            self.sessions_ended.labels(reason)
        for limit in ("events", "login"):
            self.rate_limited.labels(limit)
        for kind in FAULT_KINDS:
            self.faults.labels(kind)
        for transport in TRANSPORTS:
            self.accepted.labels(transport)
            self.events_by_transport.labels(transport)

    # audit listener ---------------------------------------------------------------------------
    def audit_event(self, event: str, fields: dict[str, Any]) -> None:
        """Count one audit event (subscribe this to :class:`hq.audit.AuditLog`)."""
        if event == "connection_accepted":
            self.accepted.labels(bounded(fields.get("transport"), TRANSPORTS)).inc()
        elif event == "connection_refused":
            self.refused.labels(bounded(fields.get("code"), TOKEN_CODES)).inc()
        elif event == "connection_ended":
            self.ended.labels(bounded(fields.get("reason"), DISCONNECT_REASONS)).inc()
        elif event == "login_succeeded":
            self.logins.labels("success").inc()
        elif event == "login_failed":
            code = bounded(fields.get("code"), LOGIN_OUTCOMES)
            self.logins.labels(code).inc()
            if code == "too_many_attempts":
                self.rate_limited.labels("login").inc()
        elif event == "token_refreshed":
            self.refreshes.labels("success").inc()
        elif event == "refresh_refused":
            self.refreshes.labels(bounded(fields.get("code"), TOKEN_CODES)).inc()
        elif event == "session_revoked":
            self.revoked.labels(bounded(fields.get("reason"), SESSION_REASONS)).inc()

    # realtime observer ------------------------------------------------------------------------
    def event_handled(self, event: str, seconds: float, code: str | None, transport: str = OTHER) -> None:
        """Record one client event's duration and outcome (``code`` None when it succeeded) and transport."""
        name = bounded(event, EVENTS)
        outcome = "ok" if code is None else bounded(code, EVENT_CODES)
        # Bound children are cached: .labels() costs more than the observation on the hot path.
        children = self._event_children.get((name, outcome))
        if children is None:
            children = self._event_children[(name, outcome)] = (self.latency.labels(name),
                                                                self.events.labels(name, outcome))
        children[0].observe(seconds)
        children[1].inc()
        by_transport = self._transport_children.get(transport)
        if by_transport is None:
            by_transport = self._transport_children[transport] = self.events_by_transport.labels(
                bounded(transport, TRANSPORTS))
        by_transport.inc()
        if code == "rate_limited":
            self.rate_limited.labels("events").inc()

    def message_stored(self, channel: str) -> None:
        """Count one stored message on a configured channel."""
        child = self._message_children.get(channel)
        if child is None:
            child = self._message_children[channel] = self.messages.labels(bounded(channel, self._channels))
        child.inc()

    def session_ended(self, reason: str) -> None:
        """Count one socket told that its session ended."""
        self.sessions_ended.labels(bounded(reason, SESSION_REASONS)).inc()

    def protocol_fault(self, kind: str) -> None:
        """Count one malformed or forbidden packet (see :class:`hq.realtime.engine.ProtocolFaults`)."""
        self.faults.labels(bounded(kind, FAULT_KINDS)).inc()

    # exposition -------------------------------------------------------------------------------
    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry as Prometheus text (or OpenMetrics when ``accept`` asks for it), and its type."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

    async def handle(self, request: web.Request) -> web.Response:
        """``GET /metrics``."""
        body, content_type = self.exposition(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    def routes(self) -> list[web.RouteDef]:
        """The metrics route."""
        return [web.get("/metrics", self.handle)]
