"""Clearance: the ordered levels and each channel's read and write minimum, in-process and over
real sockets (every role against every default channel, for join, history and message)."""

from __future__ import annotations

import asyncio
import uuid
from typing import AsyncIterator, Awaitable, Callable

import jwt
import pytest

from hq.auth.clearance import ClearancePolicy
from hq.config import ChannelPolicy, load_settings

from .sio import RecordingClient
from .support import AGENTS, HQServer, write_config

LEVELS = ("analyst", "field-operative", "handler", "director")
DEFAULT_CHANNELS = {"missions": ChannelPolicy("field-operative", "handler"),
                    "hq": ChannelPolicy("handler", "field-operative")}

# role -> channel -> (may read, may write), straight from the contract's defaults.
EXPECTED = {
    "analyst": {"missions": (False, False), "hq": (False, False)},
    "field-operative": {"missions": (True, False), "hq": (False, True)},
    "handler": {"missions": (True, True), "hq": (True, True)},
    "director": {"missions": (True, True), "hq": (True, True)},
}


def test_default_policy_matrix() -> None:
    policy = ClearancePolicy(LEVELS, DEFAULT_CHANNELS)
    for role, channels in EXPECTED.items():
        assert policy.is_role(role)
        for channel, (read, write) in channels.items():
            assert policy.may_read(role, channel) is read, (role, channel)
            assert policy.may_write(role, channel) is write, (role, channel)
    assert policy.readable("field-operative") == ["missions"]
    assert policy.writable("field-operative") == ["hq"]
    assert policy.readable("analyst") == [] and policy.writable("analyst") == []


def test_unknown_roles_and_channels_get_nothing() -> None:
    policy = ClearancePolicy(LEVELS, DEFAULT_CHANNELS)
    for role in ("", "Director", "admin", "root"):
        assert not policy.is_role(role)
        assert not policy.may_read(role, "missions") and not policy.may_write(role, "hq")
    assert not policy.exists("nowhere") and not policy.may_read("director", "nowhere")
    assert not policy.may_write("director", "Missions")


def test_configured_levels_and_channels(tmp_path) -> None:
    config = tmp_path / "config.toml"
    write_config(config, {"clearance": {"levels": ["guest", "member", "chief"]},
                          "channels": {"lobby": {"read": "guest", "write": "member"},
                                       "vault": {"read": "chief", "write": "chief"}}})
    settings = load_settings(config, environ={})
    policy = ClearancePolicy(settings.clearance.levels, settings.channels)
    assert policy.readable("guest") == ["lobby"] and policy.writable("guest") == []
    assert policy.readable("member") == ["lobby"] and policy.writable("member") == ["lobby"]
    assert policy.readable("chief") == ["lobby", "vault"] and policy.writable("chief") == ["lobby", "vault"]
    assert not policy.is_role("director")  # the default levels are replaced, not extended


# Over real sockets --------------------------------------------------------------------------------------

Connect = Callable[[str], Awaitable[RecordingClient]]


@pytest.fixture(scope="module")
def tokens(shared_hq: HQServer) -> dict[str, str]:
    return {codename: shared_hq.login(codename)["access_token"] for codename in AGENTS}


@pytest.fixture
async def connect(shared_hq: HQServer) -> AsyncIterator[Connect]:
    made: list[RecordingClient] = []

    async def open_client(token: str) -> RecordingClient:
        client = RecordingClient()
        made.append(client)
        return await client.connect(shared_hq.url, token)

    yield open_client
    for client in made:
        await client.close()


@pytest.mark.parametrize("codename", list(AGENTS))
async def test_every_role_on_every_channel(connect: Connect, tokens: dict[str, str], codename: str) -> None:
    client = await connect(tokens[codename])
    for channel, (read, write) in EXPECTED[AGENTS[codename]].items():
        for event, payload, allowed in (("join", {"channel": channel}, read),
                                        ("history", {"channel": channel}, read),
                                        ("message", {"channel": channel, "text": f"from {codename}"}, write)):
            ack = await client.call(event, payload)
            if allowed:
                assert ack["ok"] is True, (codename, event, channel, ack)
            else:
                assert ack["ok"] is False and ack["error"]["code"] == "forbidden", (codename, event, channel, ack)
    assert client.sio.connected  # a refusal never disconnects


async def test_write_only_agent_never_sees_the_channel(connect: Connect, tokens: dict[str, str]) -> None:
    # fox (field-operative) may write hq but not read it: a join is refused, so nothing arrives.
    fox = await connect(tokens["fox"])
    assert (await fox.call("join", {"channel": "hq"}))["error"]["code"] == "forbidden"
    hank = await connect(tokens["hank"])
    assert (await hank.call("join", {"channel": "hq"}))["ok"]
    marker = uuid.uuid4().hex
    assert (await fox.call("message", {"channel": "hq", "text": marker}))["ok"]
    assert (await hank.call("message", {"channel": "hq", "text": "reply"}))["ok"]
    assert [m["text"] for m in await hank.wait_for("message")] == [marker]
    await asyncio.sleep(0.2)
    assert fox.received("message") == []


async def test_clearance_comes_from_the_store_not_the_token(shared_hq: HQServer, connect: Connect,
                                                           tokens: dict[str, str]) -> None:
    secret = (shared_hq.workdir / "hq.secret").read_bytes().strip()
    genuine = tokens["ana"]
    header = jwt.get_unverified_header(genuine)
    claims = {**jwt.decode(genuine, options={"verify_signature": False}), "role": "director",
              "jti": uuid.uuid4().hex}
    promoted = jwt.encode(claims, secret, algorithm="HS256", headers={"typ": header["typ"], "kid": header["kid"]})
    ana = await connect(promoted)
    for event, payload in (("join", {"channel": "missions"}), ("history", {"channel": "hq"}),
                           ("message", {"channel": "hq", "text": "I am the director now"})):
        ack = await ana.call(event, payload)
        assert ack["ok"] is False and ack["error"]["code"] == "forbidden", (event, ack)
