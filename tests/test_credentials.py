"""The one credential check (hq/auth/credentials.py), in process, through the doors app.py builds.

What it reads, spends and counts must not depend on the door (``POST /api/auth/login``'s
:meth:`SessionService.login`, the Admin UI) nor on whether a codename is known or enrolled. The
doors' answers are tested end to end in tests/test_admin_ui.py, tests/test_http_api.py,
tests/test_mfa.py and tests/test_limits.py.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from hq.app import HQ, add_console_and_monitoring, build
from hq.auth.mfa import hash_recovery_code, new_recovery_codes, new_totp_secret, step_at
from hq.config import load_settings
from hq.errors import LoginError
from hq.ops.admin_ui import AdminUI

from .support import PASSWORD, make_server

AGENTS = {"dora": "director", "dex": "director", "hank": "handler"}
WRONG = "not the password, 123456"


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[HQ]:
    """Every part of one HQ node (directors must use a second factor; dora has one), store open."""
    server = make_server(tmp_path, AGENTS, auth={"mfa_required": ["director"]}, admin={"enabled": True},
                         limits={"login_failures_per_codename": 3})
    hq = build(load_settings(server.config, environ={}))
    await hq.store.open()
    secret = new_totp_secret()
    sealed = hq.credentials.second_factor.box.seal(secret, "dora")
    assert await hq.store.begin_mfa("dora", sealed)
    assert await hq.store.confirm_mfa("dora", sealed, step_at(time.time()) - 5,
                                      [hash_recovery_code(code) for code in new_recovery_codes()])
    yield hq
    await hq.store.close()
    hq.hasher.close()
    hq.audit.close()


@pytest.fixture
async def admin_ui(node: HQ) -> AsyncIterator[AdminUI]:
    """The Admin UI as create_app() wires it."""
    admin_ui = add_console_and_monitoring(web.Application(), node)
    yield admin_ui
    await admin_ui.shutdown()


def failed_codes(node: HQ) -> Callable[[], list[str]]:
    """A list of the ``login_failed`` codes audited from now on."""
    codes: list[str] = []
    node.audit.subscribe(lambda event, fields: codes.append(fields["code"]) if event == "login_failed" else None)
    return lambda: codes


def spy(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, calls: Counter[str]) -> None:
    """Count the calls of ``owner.name`` in ``calls[name]`` (the method still runs)."""
    method = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[name] += 1
        return method(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


async def test_both_doors_read_the_second_factor_of_unknown_codenames(node: HQ, admin_ui: AdminUI,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The Admin UI used to read it only for stored agents: its time told a known codename apart.
    asked: list[str] = []
    record = node.credentials.second_factor.record

    async def recorded(codename: str) -> Any:
        asked.append(codename)
        return await record(codename)

    monkeypatch.setattr(node.credentials.second_factor, "record", recorded)
    assert not await admin_ui.authenticate({"username": "nobody", "password": PASSWORD})
    assert asked == ["nobody"]
    with pytest.raises(LoginError):
        await node.sessions.login("nobody2", PASSWORD, "127.0.0.1")
    assert asked == ["nobody", "nobody2"]
    assert not await admin_ui.authenticate({"username": "not a codename!", "password": PASSWORD})
    assert asked == ["nobody", "nobody2"]  # a name that cannot be stored is not looked up at all


async def test_a_wrong_password_costs_the_same_known_enrolled_or_not(node: HQ, admin_ui: AdminUI,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    codes = failed_codes(node)
    doors: dict[str, Callable[[str], Awaitable[object]]] = {
        "admin_ui": lambda codename: admin_ui.authenticate({"username": codename, "password": WRONG}),
        "login": lambda codename: node.sessions.login(codename, WRONG, "127.0.0.1", otp="123456"),
    }
    for door, attempt in doors.items():
        for codename in ("nobody", "hank", "dora"):  # unknown, no second factor, enrolled
            calls: Counter[str] = Counter()
            spy(monkeypatch, node.credentials.second_factor, "spend_like_a_check", calls)
            spy(monkeypatch, node.hasher, "verify", calls)
            try:
                assert not await attempt(codename)
            except LoginError as refused:
                assert refused.code == "invalid_credentials"
            monkeypatch.undo()
            assert calls == {"verify": 1, "spend_like_a_check": 1}, (door, codename)
    assert codes() == ["invalid_credentials"] * 6


async def test_the_doors_share_one_failure_budget(node: HQ, admin_ui: AdminUI) -> None:
    codes = failed_codes(node)
    assert not await admin_ui.authenticate({"username": "hank", "password": WRONG})
    with pytest.raises(LoginError):
        await node.sessions.login("hank", WRONG, "127.0.0.1")
    agent = await node.store.get_agent("hank")
    assert agent is not None
    with pytest.raises(LoginError):
        await node.sessions.check_password(agent, WRONG, "127.0.0.1")
    with pytest.raises(LoginError) as limited:
        await node.sessions.login("hank", PASSWORD, "127.0.0.1")
    assert limited.value.code == "too_many_attempts" and limited.value.retry_after > 0
    assert not await admin_ui.authenticate({"username": "hank", "password": PASSWORD})
    assert codes() == ["invalid_credentials"] * 3 + ["too_many_attempts"] * 2


async def test_failures_are_cleared_only_by_a_complete_login(node: HQ) -> None:
    # per codename: 3. A correct password without the code, or asked again, must not reset the count.
    dora = await node.store.get_agent("dora")
    assert dora is not None
    for _ in range(2):
        with pytest.raises(LoginError):
            await node.sessions.login("dora", WRONG, "127.0.0.1")
    with pytest.raises(LoginError) as asked:
        await node.sessions.login("dora", PASSWORD, "127.0.0.1")
    assert asked.value.code == "mfa_required"
    await node.sessions.check_password(dora, PASSWORD, "127.0.0.1")
    with pytest.raises(LoginError) as wrong_code:
        await node.sessions.login("dora", PASSWORD, "127.0.0.1", otp="12345x")
    assert wrong_code.value.code == "invalid_otp"
    with pytest.raises(LoginError) as limited:
        await node.sessions.login("dora", PASSWORD, "127.0.0.1")
    assert limited.value.code == "too_many_attempts"


async def test_admin_ui_rules_come_after_the_credentials(node: HQ, admin_ui: AdminUI) -> None:
    codes = failed_codes(node)
    assert not await admin_ui.authenticate({"username": "hank", "password": PASSWORD})  # not a director
    assert not await admin_ui.authenticate({"username": "dex", "password": PASSWORD})  # must enrol first
    assert not await admin_ui.authenticate({"username": "dora", "password": PASSWORD})  # no code after it
    assert not await admin_ui.authenticate({"username": "dora", "password": PASSWORD + "12345x"})
    await node.store.set_enabled("dex", False)
    assert not await admin_ui.authenticate({"username": "dex", "password": PASSWORD})
    assert not await admin_ui.authenticate({"username": "dex", "password": WRONG})  # disabled: only after a right one
    assert codes() == ["forbidden", "mfa_enrollment_required", "invalid_credentials", "invalid_otp",
                       "agent_disabled", "invalid_credentials"]
