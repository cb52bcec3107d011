"""HTTP side of the client: log in, refresh and log out against ``/api/auth/*``.

Tokens live only in memory (no cookie jar, never logged). Refreshing is single-flight: HQ rotates
the refresh token on every use and treats a second use as theft, so two tasks that both decide to
refresh must end up sending one request.

Every request goes to whichever HQ node answers: the preferred one first, then the others in turn
when a node cannot be reached or a proxy answers 502/503. A 4xx is HQ's decision and is never
retried elsewhere (another node of the same cluster would decide the same, and a second login
attempt would count twice against the login limits).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Any

import aiohttp

from .errors import (AgentClientError, CertificateError, MfaEnrollmentRequired, NotLoggedIn, ServerError,
                     TokenRejected, TooManyAttempts, Unavailable, error_from_body)
from .messages import Agent
from .nodes import Nodes

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=15, connect=10)
#: Refresh when this much of the token's life is left: half of it, at most a minute.
MAX_REFRESH_MARGIN = 60.0
EXP_GRANULARITY = 1.0
#: Statuses meaning "this node (or the proxy's upstream) is not serving now": try the next node.
FAILOVER_STATUSES = frozenset({502, 503})


def make_ssl_context(ca_file: str | None, verify: bool) -> ssl.SSLContext | bool:
    """The TLS setting for aiohttp: a verifying context (system CAs, or ``ca_file``), or ``False``."""
    if not verify:
        return False
    return ssl.create_default_context(cafile=ca_file)


class TokenSession:
    """The agent's login session as seen over HTTP, and the ``aiohttp`` session that carries it."""

    def __init__(self, nodes: Nodes, ssl_setting: ssl.SSLContext | bool) -> None:
        """``nodes`` is shared with the socket side, so both follow the node that answers."""
        self._nodes = nodes
        self._ssl = ssl_setting
        self._http: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()
        self.agent: Agent | None = None
        self._access: str | None = None
        self._refresh: str | None = None
        self._lifetime = 0.0
        self._expires_at = 0.0  # time.monotonic() deadline: immune to wall-clock jumps
        self.refreshes = 0

    # state ---------------------------------------------------------------------------------------
    @property
    def http(self) -> aiohttp.ClientSession:
        """The shared ``aiohttp`` session (also used by the Socket.IO transport)."""
        if self._http is None or self._http.closed:
            # A dummy jar: HQ's cookies duplicate the tokens this object already holds in memory.
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl),
                                               cookie_jar=aiohttp.DummyCookieJar(), timeout=HTTP_TIMEOUT)
        return self._http

    @property
    def logged_in(self) -> bool:
        """Whether a session is held."""
        return self._access is not None

    @property
    def access_token(self) -> str:
        """The current access token."""
        if self._access is None:
            raise NotLoggedIn("log in first")
        return self._access

    @property
    def refresh_token(self) -> str:
        """The current (unspent) refresh token."""
        if self._refresh is None:
            raise NotLoggedIn("log in first")
        return self._refresh

    def refresh_due_in(self) -> float:
        """Seconds until the access token should be refreshed (negative when overdue)."""
        margin = min(MAX_REFRESH_MARGIN, max(0.0, self._lifetime - EXP_GRANULARITY) / 2)
        return self._expires_at - margin - time.monotonic()

    # requests ------------------------------------------------------------------------------------
    async def login(self, codename: str, password: str, otp: str | None = None) -> Agent:
        """``POST /api/auth/login`` (with ``otp``, a second factor's code, when given); raises
        :class:`LoginFailed`, :class:`MfaRequired`, :class:`InvalidOtp`, :class:`AgentDisabled`, ..."""
        sent_at = time.monotonic()
        payload = {"username": codename, "password": password}
        if otp is not None:
            payload["otp"] = otp
        body = await self._post("/api/auth/login", payload)
        if isinstance(body, dict) and body.get("scope") == "mfa_enroll":
            # A token good for enrolling a second factor only: nothing this client can use it for.
            message = body.get("message")
            raise MfaEnrollmentRequired(message if isinstance(message, str) else "enrol a second factor first")
        return self._take(body, sent_at)

    async def refresh(self, stale: str | None = None) -> None:
        """``POST /api/auth/refresh`` for a new pair, unless the token ``stale`` was already replaced.

        Single-flight: callers that raced here find the work done when they get the lock.
        """
        async with self._lock:
            if self._refresh is None:
                raise NotLoggedIn("log in first")
            if stale is not None and self._access != stale:
                return
            sent_at = time.monotonic()
            body = await self._post("/api/auth/refresh", {"refresh_token": self._refresh},
                                    default_error=TokenRejected)
            self._take(body, sent_at)
            self.refreshes += 1

    async def settled(self) -> None:
        """Wait for a refresh in flight (its outcome may explain why the session ended)."""
        async with self._lock:
            pass

    async def ensure_fresh(self) -> None:
        """Refresh when the access token is past its refresh point."""
        if self.refresh_due_in() <= 0:
            await self.refresh(stale=self._access)

    async def logout(self) -> None:
        """``POST /api/auth/logout``: HQ revokes the session and ends its sockets."""
        if self._access is None:
            return
        token = self._access
        try:
            await self._request("/api/auth/logout", None, {"Authorization": f"Bearer {token}"},
                                default_error=TokenRejected)
        finally:
            self._forget()

    async def close(self) -> None:
        """Close the HTTP session; the tokens are forgotten."""
        self._forget()
        if self._http is not None:
            await self._http.close()
            self._http = None

    # helpers -------------------------------------------------------------------------------------
    def _forget(self) -> None:
        self._access = self._refresh = None

    def _take(self, body: Any, sent_at: float) -> Agent:
        try:
            agent = body["agent"]
            self.agent = Agent(str(agent["codename"]), str(agent["role"]))
            access, refresh, lifetime = body["access_token"], body["refresh_token"], float(body["expires_in"])
        except (KeyError, TypeError, ValueError):
            raise ServerError("HQ sent an unexpected token response") from None
        if not isinstance(access, str) or not isinstance(refresh, str):
            raise ServerError("HQ sent an unexpected token response")
        self._access, self._refresh, self._lifetime = access, refresh, lifetime
        # Counted from the request, less a second: HQ's ``exp`` is whole seconds from a truncated ``iat``.
        self._expires_at = sent_at + lifetime - EXP_GRANULARITY
        return self.agent

    async def _post(self, path: str, payload: dict[str, Any],
                    default_error: type[AgentClientError] = ServerError) -> Any:
        return await self._request(path, payload, {}, default_error)

    async def _request(self, path: str, payload: dict[str, Any] | None, headers: dict[str, str],
                       default_error: type[AgentClientError]) -> Any:
        """POST to the preferred node, then to the others in turn while none answers."""
        failure: AgentClientError | None = None
        for base in self._nodes.in_turn():
            try:
                body = await self._post_once(base, path, payload, headers, default_error)
            except Unavailable as exc:
                if exc.terminal:  # a certificate that does not verify is not an outage
                    raise
                # A request that reached a node before the connection broke may have been acted on;
                # retrying a refresh then presents a spent token, which HQ's refresh grace window
                # accepts for a few seconds: the same as retrying on this node later, only sooner.
                failure = exc
                self._nodes.failed(base)
                continue
            self._nodes.answered(base)
            return body
        assert failure is not None
        raise failure

    async def _post_once(self, base: str, path: str, payload: dict[str, Any] | None, headers: dict[str, str],
                         default_error: type[AgentClientError]) -> Any:
        """One POST to one node; :class:`Unavailable` (non-terminal) when that node did not answer."""
        try:
            async with self.http.post(base + path, json=payload, headers=headers) as response:
                text = await response.text()
                if response.status == 204:
                    return None
                body = _json_or_none(text)
                if response.status == 200 and body is not None:
                    return body
                error = error_from_body(body, response.status, default_error)
                if response.status in FAILOVER_STATUSES and not isinstance(error, Unavailable):
                    # A proxy's 502/503 page, or HQ's 503 without a contract body.
                    error = Unavailable(f"HQ at {base} answered HTTP {response.status}")
                if isinstance(error, TooManyAttempts):
                    error.retry_after = _int_or_zero(response.headers.get("Retry-After"))
                raise error
        except aiohttp.ClientConnectorCertificateError as exc:
            raise CertificateError(f"HQ's certificate did not verify: {exc.certificate_error}") from None
        except aiohttp.ClientSSLError as exc:
            raise CertificateError(f"TLS failed: {exc}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise Unavailable(f"cannot reach HQ at {base}: {type(exc).__name__}") from None


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _int_or_zero(value: str | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0
