"""Service keys: long-lived credentials for programs, created, listed and revoked in one place.

A key is ``hqk_`` followed by 256 random bits (``secrets.token_urlsafe(32)``), shown once to whoever
created it and stored only as its SHA-256. It acts with the role it was given, under the identity
``key:NAME`` (the ``from`` of its messages; a colon never appears in a codename, so a key cannot pass
for an agent). The operator CLI and the directors' API change keys through :class:`ServiceKeys`, so
each change is checked the same way and audited as one ``admin_action`` line, like agents'
(hq/auth/agents.py).

Where keys are accepted (the real-time endpoints, the channels API) :meth:`ServiceKeys.verify` is
the one check: an unknown key is ``token_invalid`` and counts as a failed login for the client
address in the process's one login limiter; a revoked one is ``token_revoked``. Revoking writes the
key's revocation to the store's feed in the same transaction, then goes the way a revoked session
goes (hq/auth/sessions.py, hq/cluster/revocation.py): this node's sockets of the key end at once and
every other node's follow. A key's sockets are indexed under its ``key_id``, which stands where a
login session id would.

``last_used`` is kept in memory and written in the background at most every
:data:`LAST_USED_EVERY` seconds, so using a key costs no database write.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import uuid
from dataclasses import dataclass

from ..audit import AuditLog
from ..cluster.heartbeat import Heartbeat
from ..config import is_valid_codename
from ..errors import AuthError, UnavailableError
from ..store import ServiceKey, Store
from ..store.rows import now_iso
from ..vocab import KEY_IDENTITY_PREFIX
from .agents import CLI_ACTOR, Actor
from .clearance import ClearancePolicy
from .limits import LoginLimiter
from .sessions import SessionService

log = logging.getLogger(__name__)

#: What every service key starts with: how HQ tells a key from an access token at a glance.
KEY_PREFIX = "hqk_"
#: Seconds between writes of the keys' ``last_used`` times (at most one write per period).
LAST_USED_EVERY = 30.0
#: Longer than any key HQ makes: anything longer is refused without hashing it.
_MAX_KEY_LENGTH = 256
#: Who a wrong key's failure is charged to besides the client address: a name no agent can have
#: (it has a colon), so a key guesser never locks an agent out.
_KEY_GUESSER = KEY_IDENTITY_PREFIX


class ServiceKeyAdminError(Exception):
    """A request to create a key that cannot be carried out (bad name or role)."""


class UnknownServiceKeyError(Exception):
    """No key that is not revoked has that name."""


@dataclass(frozen=True)
class CreatedKey:
    """A key just made: ``secret`` is the key itself, to be shown once to whoever asked and never again."""

    key: ServiceKey
    secret: str


def is_service_key(token: str) -> bool:
    """Whether ``token`` is shaped like a service key (rather than an access token)."""
    return token.startswith(KEY_PREFIX)


def key_identity(name: str) -> str:
    """The identity a key acts under: ``key:NAME`` (its messages' ``from``, its audit name)."""
    return KEY_IDENTITY_PREFIX + name


def hash_service_key(key: str) -> str:
    """The stored form of a key.

    A fast hash is right here, unlike for passwords: a key has 256 random bits, so nobody can guess
    it from its hash however many guesses a second they make, and every request that presents a key
    is checked with one hash and one indexed lookup rather than a deliberately slow bcrypt.
    """
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class ServiceKeys:
    """Creates, lists, revokes and verifies service keys; remembers when each was last used."""

    def __init__(self, store: Store, policy: ClearancePolicy, sessions: SessionService, limiter: LoginLimiter,
                 audit: AuditLog) -> None:
        self._store = store
        self._policy = policy
        self._sessions = sessions  # revocations go out the way a session's do
        self._limiter = limiter
        self._audit = audit
        # key id -> when it was last used, not yet written to the store.
        self._last_used: dict[str, str] = {}
        self._writer = Heartbeat("service-keys-last-used", self._write_step)

    def start(self) -> None:
        """Start writing ``last_used`` times in the background (a serving node)."""
        self._writer.start()

    async def stop(self) -> None:
        """Stop the background writer and write what it had not written yet."""
        await self._writer.stop()
        await self.write_last_used()

    async def create(self, name: str, role: str, *, actor: Actor = CLI_ACTOR) -> CreatedKey:
        """Make a key named ``name`` with clearance ``role``; :class:`~hq.store.ServiceKeyExistsError`
        if a key not revoked has that name (any case)."""
        if not is_valid_codename(name):
            raise ServiceKeyAdminError("key names are 1-64 characters of A-Z a-z 0-9 _ . -")
        if not self._policy.is_role(role):
            raise ServiceKeyAdminError(f"unknown role {role!r}; one of: {', '.join(self._policy.levels)}")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        key = await self._store.add_service_key(uuid.uuid4().hex, name, role, hash_service_key(secret))
        self._record(actor, "key_add", key)
        return CreatedKey(key, secret)

    async def list(self) -> list[ServiceKey]:
        """Every key not revoked, oldest first, with ``last_used`` as this node knows it."""
        keys = await self._store.list_service_keys()
        return [_with_last_used(key, self._last_used.get(key.key_id)) for key in keys]

    async def revoke(self, name: str, *, actor: Actor = CLI_ACTOR) -> ServiceKey:
        """Refuse the key from now on, on every node, and end its live sockets; :class:`UnknownServiceKeyError`
        when no key not revoked has that name."""
        key = await self._store.revoke_service_key(name) if is_valid_codename(name) else None
        if key is None:
            raise UnknownServiceKeyError(name)
        self._record(actor, "key_revoke", key)
        await self._sessions.announce_revocation(key_identity(key.name), key.key_id, "revoked")
        return key

    async def verify(self, presented: str, address: str) -> ServiceKey:
        """The key ``presented`` is; :class:`~hq.errors.AuthError` ``token_invalid`` (counted as a
        failed login for ``address``) or ``token_revoked``."""
        key = None
        if len(presented) <= _MAX_KEY_LENGTH and is_service_key(presented):
            key = await self._store.service_key_by_hash(hash_service_key(presented))
        if key is None:
            await self._limiter.record_failure(_KEY_GUESSER, address)
            self._audit.record("login_failed", codename="<unknown>", address=address, code="token_invalid")
            raise AuthError("service key is not valid", "token_invalid")
        if key.revoked is not None:
            raise AuthError("service key has been revoked", "token_revoked")
        self._last_used[key.key_id] = now_iso()
        return key

    async def write_last_used(self) -> None:
        """Write the ``last_used`` times gathered since the last write, in one transaction. A store
        that is down keeps them for the next try."""
        pending, self._last_used = self._last_used, {}
        if not pending:
            return
        try:
            await self._store.touch_service_keys(pending)
        except UnavailableError:
            # Newer times gathered meanwhile win; the store never moves a time backwards anyway.
            self._last_used = {**pending, **self._last_used}
            log.warning("could not record when service keys were last used (the store is down); retrying")

    async def _write_step(self) -> float:
        await self.write_last_used()
        return LAST_USED_EVERY

    def _record(self, actor: Actor, action: str, key: ServiceKey) -> None:
        self._audit.record("admin_action", actor=actor.name, interface=actor.interface, action=action,
                           target=key_identity(key.name), role=key.role)


def _with_last_used(key: ServiceKey, pending: str | None) -> ServiceKey:
    """``key`` with the newer of its stored ``last_used`` and this node's unwritten one."""
    if pending is None or (key.last_used is not None and key.last_used >= pending):
        return key
    return ServiceKey(key.key_id, key.name, key.role, key.created, pending, key.revoked)
