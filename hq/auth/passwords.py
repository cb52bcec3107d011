"""Password hashing with bcrypt, always on a bounded thread pool, never on the event loop.

bcrypt reads at most 72 bytes and bcrypt>=5 refuses longer input, so every password is first
reduced to a fixed 44-byte base64 SHA-256 digest (the scheme passlib calls ``bcrypt_sha256``):
any length up to the login limit works and no two long passwords share a prefix collision.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sys
import threading
import hashlib
import secrets
from concurrent.futures import ThreadPoolExecutor

import bcrypt

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024


class PasswordPolicyError(ValueError):
    """A new password does not meet the rules (length)."""


def check_new_password(password: str) -> None:
    """Raise :class:`PasswordPolicyError` unless ``password`` may be set."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"passwords must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordPolicyError(f"passwords must be at most {MAX_PASSWORD_LENGTH} characters")


def generate_password() -> str:
    """A random password for the first-start director (about 128 bits)."""
    return secrets.token_urlsafe(16)


def _prehash(password: str) -> bytes:
    digest = hashlib.sha256(password.encode("utf-8", "surrogatepass")).digest()
    return base64.b64encode(digest)


class PasswordHasher:
    """Hashes and checks passwords on its own small pool of threads."""

    def __init__(self, rounds: int = 12, workers: int = 2) -> None:
        self._rounds = rounds
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bcrypt",
                                        initializer=_lower_thread_priority)
        self._dummy_hash = bcrypt.hashpw(_prehash(secrets.token_urlsafe(16)), bcrypt.gensalt(rounds))

    def hash_sync(self, password: str) -> str:
        """Hash a password on the calling thread (for the CLI, which has no loop to protect)."""
        return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(self._rounds)).decode("ascii")

    async def hash(self, password: str) -> str:
        """Hash a password off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.hash_sync, password)

    async def verify(self, password: str, stored_hash: str | None) -> bool:
        """Check a password; with no stored hash, spend the same work and answer False."""
        target = stored_hash.encode("ascii") if stored_hash else self._dummy_hash
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(self._pool, _checkpw, _prehash(password), target)
        return ok and stored_hash is not None

    def close(self) -> None:
        """Stop the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)


def _lower_thread_priority() -> None:
    """Run bcrypt at the lowest CPU priority, so a login storm cannot starve the event loop.

    bcrypt releases the GIL, but its threads still compete with the event loop for the cores; at
    nice 19 the loop (live sockets, acks) wins, and logins take the CPU that is left. On Linux
    ``setpriority`` applies to one thread; elsewhere this does nothing.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def _checkpw(prehashed: bytes, target: bytes) -> bool:
    try:
        return bcrypt.checkpw(prehashed, target)
    except ValueError:
        return False
