"""Login throttling (per codename and per address) and per-socket event budgets."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field


class LoginThrottle:
    """Counts failed logins in a sliding window, per codename and per client address.

    While either count is at its limit every attempt (even with the right password) is refused
    with the seconds until the oldest failure leaves the window.
    """

    def __init__(self, per_codename: int, per_address: int, window: float) -> None:
        self._limits = {"codename": per_codename, "address": per_address}
        self._window = window
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def retry_after(self, codename: str, address: str, now: float | None = None) -> int:
        """Seconds the caller must wait, or 0 when an attempt is allowed."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key in self._keys(codename, address):
            failures = self._prune(key, now)
            if len(failures) >= self._limits[key[0]]:
                wait = max(wait, failures[0] + self._window - now)
        return math.ceil(wait) if wait > 0 else 0

    def record_failure(self, codename: str, address: str, now: float | None = None) -> None:
        """Count one failed attempt against both keys."""
        now = time.monotonic() if now is None else now
        for key in self._keys(codename, address):
            self._prune(key, now).append(now)

    def record_success(self, codename: str) -> None:
        """A correct login clears its codename's failures (the address keeps its count)."""
        self._failures.pop(("codename", codename.lower()), None)

    def _keys(self, codename: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("codename", codename.lower()), ("address", address)

    def _prune(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - self._window:
            failures.popleft()
        if not failures and len(self._failures) > 100_000:
            self._failures.pop(key, None)
            failures = self._failures.setdefault(key, deque())
        return failures


@dataclass
class TokenBucket:
    """A per-socket event budget: ``rate`` events a second with bursts of ``burst``."""

    rate: float
    burst: int
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)
        self.stamp = time.monotonic()

    def take(self) -> bool:
        """Spend one event; False when the budget is exhausted."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
