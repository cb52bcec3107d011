"""Password hashing: bcrypt over a SHA-256 pre-hash, on a thread pool, with the password rules.

These are unit tests of :mod:`hq.auth.passwords` with real bcrypt (cheap rounds); the same rules are
exercised end to end by the login tests (tests/test_http_api.py) and the CLI tests.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

import bcrypt
import pytest

from hq.auth import passwords
from hq.auth.passwords import (MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH, PasswordHasher, PasswordPolicyError,
                          check_new_password, generate_password)


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    """A hasher with the cheapest bcrypt cost."""
    h = PasswordHasher(rounds=4, workers=2)
    yield h
    h.close()


async def test_hash_and_verify(hasher: PasswordHasher) -> None:
    stored = await hasher.hash("correct horse battery staple")
    assert stored.startswith("$2b$04$")
    assert "correct horse" not in stored
    assert await hasher.verify("correct horse battery staple", stored)
    assert not await hasher.verify("correct horse battery stapl", stored)
    assert not await hasher.verify("", stored)


async def test_same_password_gets_a_new_salt(hasher: PasswordHasher) -> None:
    assert await hasher.hash("same password twice") != await hasher.hash("same password twice")


async def test_no_stored_hash_is_always_false(hasher: PasswordHasher) -> None:
    # Unknown codenames: the dummy hash is checked (same work) and the answer is always False.
    assert not await hasher.verify("anything at all", None)
    assert not await hasher.verify("", None)


async def test_passwords_beyond_72_bytes_are_not_truncated(hasher: PasswordHasher) -> None:
    # bcrypt alone reads 72 bytes; two passwords sharing those must still differ.
    prefix = "x" * 72
    stored = await hasher.hash(prefix + "first tail")
    assert await hasher.verify(prefix + "first tail", stored)
    assert not await hasher.verify(prefix + "other tail", stored)
    assert not await hasher.verify(prefix, stored)


async def test_longest_password_with_multibyte_characters(hasher: PasswordHasher) -> None:
    password = "密" * MAX_PASSWORD_LENGTH  # 1024 characters, 3072 bytes
    stored = await hasher.hash(password)
    assert await hasher.verify(password, stored)
    assert not await hasher.verify("密" * (MAX_PASSWORD_LENGTH - 1) + "x", stored)


async def test_odd_input_fails_cleanly(hasher: PasswordHasher) -> None:
    stored = await hasher.hash("a normal password")
    assert not await hasher.verify("\ud800 lone surrogate \udfff", stored)  # not encodable as UTF-8
    assert not await hasher.verify("nul \x00 inside", stored)
    assert not await hasher.verify("a normal password", "not-a-bcrypt-hash")
    assert not await hasher.verify("a normal password", "$2b$04$" + "A" * 53)


async def test_bcrypt_runs_off_the_event_loop(hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real_checkpw, real_hashpw = bcrypt.checkpw, bcrypt.hashpw

    def spy_checkpw(*args: Any) -> bool:
        threads.append(threading.current_thread().name)
        return real_checkpw(*args)

    def spy_hashpw(*args: Any) -> bytes:
        threads.append(threading.current_thread().name)
        return real_hashpw(*args)

    monkeypatch.setattr(passwords.bcrypt, "checkpw", spy_checkpw)
    monkeypatch.setattr(passwords.bcrypt, "hashpw", spy_hashpw)
    stored = await hasher.hash("a password for threads")
    assert await hasher.verify("a password for threads", stored)
    assert not await hasher.verify("wrong", None)
    assert len(threads) == 3
    loop_thread = threading.current_thread().name
    assert all(name != loop_thread and name.startswith("bcrypt") for name in threads), threads


@pytest.mark.parametrize("password", ["x" * MIN_PASSWORD_LENGTH, "é" * MIN_PASSWORD_LENGTH,
                                      "p" * MAX_PASSWORD_LENGTH, "twelve chars"])
def test_new_password_rules_accept(password: str) -> None:
    check_new_password(password)


@pytest.mark.parametrize("password", ["", "x" * (MIN_PASSWORD_LENGTH - 1), "p" * (MAX_PASSWORD_LENGTH + 1)])
def test_new_password_rules_refuse(password: str) -> None:
    with pytest.raises(PasswordPolicyError):
        check_new_password(password)


def test_generated_passwords_are_long_and_random() -> None:
    generated = {generate_password() for _ in range(50)}
    assert len(generated) == 50
    for password in generated:
        check_new_password(password)
        assert len(password) >= 20


async def test_bcrypt_threads_run_at_the_lowest_priority() -> None:
    import asyncio
    import os
    import sys
    import threading

    from hq.auth.passwords import PasswordHasher

    hasher = PasswordHasher(rounds=4, workers=1)
    try:
        await hasher.hash("a long enough password")
        niceness = await asyncio.get_running_loop().run_in_executor(
            hasher._pool, lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
    finally:
        hasher.close()
    assert niceness == (19 if sys.platform.startswith("linux") else 0)
