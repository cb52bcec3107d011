"""Keeping the internal tables bounded: what is pruned, how long it is kept first, and who prunes.

Every login adds a session and a refresh token, every refresh a token and a successor row, every
revocation a feed entry; none of them is needed forever. One pruning run deletes, in one
transaction (hq/store/queries.py, ``Queries.prune``):

* **revocation feed entries** older than the longest an access token lives (``auth.access_ttl``)
  plus the verification leeway and :data:`FEED_MARGIN`. An entry's only job on a node is to end
  that node's sockets of the revoked session(s); a socket lives no longer than its access token,
  and a token issued before the revocation cannot be replaced (refreshing and ``reauth`` both ask
  the store, which refuses the revoked session). So once an entry is that old, every socket it
  could end has ended by itself, on every node, however far behind that node's feed cursor is: a
  node whose cursor falls behind the oldest entry kept misses only entries that no longer matter
  (``revocations_after`` returns what is newer than the cursor; ids are never reused). The newest
  entry is always kept, so ``last_revocation_id`` (a starting node's cursor) never goes back. The
  feed has no time column (adding one would need a migration), so each run records the feed's
  newest id with its time in ``prune_runs``, and entries up to the id of the newest run at least
  the retention old are deleted.
* **refresh tokens** once expired for :data:`EXPIRED_TOKENS_KEPT` (so a just-expired token is still
  answered ``token_expired``), and those of sessions deleted here. A spent token stays while its
  session is kept and it has not expired (``auth.refresh_ttl`` after it was issued), so reuse of a
  stolen token is still recognised — and revokes the session — all that time.
* **refresh successors** (which token a rotation issued) once their parent was spent longer ago
  than ``auth.refresh_grace`` (they serve only the grace retry) or is gone.
* **login sessions** that no token can use any more — no refresh token still valid (for a live
  session) and none issued, nor the session opened, within the last access-token lifetime plus
  leeway (so a revoked session's last access tokens are still answered ``token_revoked``) — except
  each agent's newest session, which the directors' API shows as its last login. A session with a
  live socket is never pruned: the socket's token is younger than the access-token lifetime.

Who: one node a round. The pruner of every node wakes every :data:`PRUNE_EVERY` seconds (with
jitter); a run that finds another run recorded within the last half period does nothing, and on
PostgreSQL the run first takes ``pg_try_advisory_xact_lock`` — a node that does not get it skips
the round rather than waiting — so two nodes waking together do not both prune.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Awaitable, Callable

from ..clock import Clock
from ..config import AuthSettings
from ..errors import describe
from .queries import Queries

if TYPE_CHECKING:
    from .base import Store
    from .rows import Row

log = logging.getLogger(__name__)

#: Seconds between two pruning rounds of one node (each node wakes at a jittered point of its period).
PRUNE_EVERY = 300.0
#: Seconds a revocation feed entry outlives the access tokens it concerns: room for clock skew
#: between nodes and for a pruning round that runs late.
FEED_MARGIN = 300.0
#: Seconds an expired refresh token is kept, so that presenting it is still answered ``token_expired``.
EXPIRED_TOKENS_KEPT = 3600.0
#: Seconds of clock skew between nodes allowed for on top of the token verification leeway.
CLOCK_SKEW = 30.0


@dataclass(frozen=True)
class Retention:
    """The token lifetimes that decide how long pruned rows must be kept (from ``[auth]``)."""

    access_ttl: float
    refresh_ttl: float
    refresh_grace: float
    #: Seconds an expired token is still accepted (``auth.leeway``).
    leeway: float
    #: Seconds within which a second run is skipped (another node ran this round).
    round_length: float = PRUNE_EVERY / 2

    @classmethod
    def from_auth(cls, auth: AuthSettings, every: float = PRUNE_EVERY) -> Retention:
        """The retention for HQ's ``[auth]`` settings and a pruning period of ``every`` seconds."""
        return cls(auth.access_ttl, auth.refresh_ttl, auth.refresh_grace, auth.leeway, round_length=every / 2)

    def cutoffs(self, now: float) -> Cutoffs:
        """The times before which each kind of row may go, for a run at ``now``."""
        # Access tokens issued before this have expired everywhere (leeway and skew included).
        token_horizon = now - self.access_ttl - self.leeway - CLOCK_SKEW
        return Cutoffs(
            now=now,
            revocations_before=token_horizon - FEED_MARGIN,
            sessions_opened_before=_iso(token_horizon),
            # A refresh token expiring after this was issued after token_horizon.
            tokens_issued_after=token_horizon + self.refresh_ttl,
            expired_before=now - EXPIRED_TOKENS_KEPT,
            spent_before=now - self.refresh_grace - self.leeway - CLOCK_SKEW,
            last_run_after=now - self.round_length,
        )


@dataclass(frozen=True)
class Cutoffs:
    """One run's limits, as the statements of ``Queries.prune`` take them (UNIX seconds, ISO for ``created``)."""

    now: float
    revocations_before: float
    sessions_opened_before: str
    tokens_issued_after: float
    expired_before: float
    spent_before: float
    last_run_after: float


@dataclass(frozen=True)
class PruneReport:
    """How many rows one run deleted."""

    revocations: int
    sessions: int
    refresh_tokens: int
    refresh_successors: int

    @property
    def total(self) -> int:
        """Every row deleted."""
        return self.revocations + self.sessions + self.refresh_tokens + self.refresh_successors


def _iso(seconds: float) -> str:
    """``seconds`` as stored in ``created`` columns (ISO 8601 UTC, seconds, ``Z``: compared as text)."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class Pruner:
    """Runs :meth:`Store.prune <hq.store.base.Store.prune>` every :data:`PRUNE_EVERY` seconds until stopped."""

    def __init__(self, store: Store, retention: Retention, clock: Clock, every: float = PRUNE_EVERY) -> None:
        self._store = store
        self._retention = retention
        self._clock = clock
        self._every = every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the periodic rounds (the first within one period, at a random point, so that the
        nodes of a cluster started together do not all wake at once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="store-pruner")

    async def stop(self) -> None:
        """End the rounds; a run in progress is cancelled (its transaction rolls back)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run_once(self) -> PruneReport | None:
        """One round now; None when another node (or an earlier round) has pruned this round."""
        return await self._store.prune(self._retention, self._clock.time())

    async def _run(self) -> None:
        wait = random.uniform(0.1, 1.0) * self._every
        while True:
            await asyncio.sleep(wait)
            wait = random.uniform(0.75, 1.25) * self._every
            try:
                report = await self.run_once()
            except Exception as error:  # the database is away: the next round will do it
                log.warning("pruning the internal tables failed (%s); next try in %.0f s", describe(error), wait)
                continue
            if report is not None and report.total:
                log.info("pruned %d revocation feed entries, %d sessions, %d refresh tokens, %d successors",
                         report.revocations, report.sessions, report.refresh_tokens, report.refresh_successors)


#: Runs one statement in the open transaction: the first row of what it returns (None if none).
FetchOne = Callable[[str, tuple[object, ...]], Awaitable["Row | None"]]
#: Runs one statement in the open transaction: how many rows it changed.
Execute = Callable[[str, tuple[object, ...]], Awaitable[int]]


async def prune_in_transaction(sql: Queries, fetch_one: FetchOne, execute: Execute,
                               retention: Retention, now: float) -> PruneReport | None:
    """One pruning run in the backend's open transaction (the caller commits); None if a run was
    recorded within this round already. The deletes run in this order because each reads what the
    one before left: sessions need their refresh tokens, tokens and successors follow the sessions.
    """
    cut = retention.cutoffs(now)
    last = await fetch_one(sql.last_prune_run, ())
    if last is not None and last["at"] is not None and last["at"] > cut.last_run_after:
        return None
    await execute(sql.record_prune_run, (now,))
    revocations = await execute(sql.prune_revocations, (cut.revocations_before,))
    await execute(sql.prune_runs, (cut.revocations_before,))
    sessions = await execute(sql.prune_sessions,
                             (cut.sessions_opened_before, cut.tokens_issued_after, cut.expired_before))
    tokens = await execute(sql.prune_refresh_tokens, (cut.expired_before,))
    successors = await execute(sql.prune_refresh_successors, (cut.spent_before,))
    return PruneReport(revocations, sessions, tokens, successors)
