"""Access tokens: what HQ issues, and every forged or stale token it must refuse.

Tokens are forged with HQ's own generated secret (read from the server's folder), so a refusal
proves the check itself, not merely a bad signature. Each refusal is judged by a real HQ through
``GET /api/auth/me``; the same verifier serves Socket.IO (see tests/test_realtime.py).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hq.auth.tokens import KeyRing, TokenService
from hq.clock import ManualClock, SystemClock
from hq.config import AuthSettings
from hq.errors import AuthError

from .support import PASSWORD, HQServer
from .threaded_hq import make_in_process_server

REQUIRED = ("sub", "role", "sid", "jti", "iat", "exp", "iss", "aud")


def b64(data: bytes) -> str:
    """base64url without padding, as JWTs use it."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hmac_token(header: dict[str, Any], payload: dict[str, Any], key: bytes | None,
               digest: Any = hashlib.sha256) -> str:
    """A JWT assembled by hand (so nothing refuses to build a bad one); no key means no signature."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), digest).digest() if key is not None else b""
    return f"{signing_input}.{b64(signature)}"


async def me(server: HQServer, token: str) -> tuple[int, dict[str, Any]]:
    """``GET /api/auth/me`` with a Bearer token."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/api/auth/me", headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, await r.json()


async def logged_in(server: HQServer, codename: str) -> dict[str, Any]:
    """The login body, over aiohttp."""
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{server.url}/api/auth/login",
                                json={"username": codename, "password": PASSWORD}) as r:
            assert r.status == 200, await r.text()
            return await r.json()


class Forger:
    """Builds tokens with the server's own secret from a genuine token's header and claims."""

    def __init__(self, secret: bytes, genuine: str) -> None:
        self.secret = secret
        self.header = jwt.get_unverified_header(genuine)
        self.claims = jwt.decode(genuine, options={"verify_signature": False})

    def make(self, header: dict[str, Any] | None = None, drop: tuple[str, ...] = (), key: bytes | None = None,
             digest: Any = hashlib.sha256, **claims: Any) -> str:
        """A fresh token: ``claims`` override, ``drop`` removes claims, ``header`` overrides headers."""
        payload = {**self.claims, "jti": uuid.uuid4().hex, **claims}
        for name in drop:
            payload.pop(name, None)
        head = {**self.header, **(header or {})}
        head = {k: v for k, v in head.items() if v is not None}
        return hmac_token(head, payload, self.secret if key is None else key, digest)


@pytest.fixture(scope="module")
def secret(shared_hq: HQServer) -> bytes:
    """The HMAC secret HQ generated on first start."""
    return (shared_hq.workdir / "hq.secret").read_bytes().strip()


@pytest.fixture(scope="module")
def ana_token(shared_hq: HQServer) -> str:
    return shared_hq.login("ana")["access_token"]


@pytest.fixture(scope="module")
def forger(secret: bytes, ana_token: str) -> Forger:
    return Forger(secret, ana_token)


async def test_issued_token_header_and_claims(shared_hq: HQServer, secret: bytes) -> None:
    body = shared_hq.login("hank")
    token = body["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256" and header["typ"] == "at+jwt" and isinstance(header.get("kid"), str)
    claims = jwt.decode(token, secret, algorithms=["HS256"], audience="hq-agents", issuer="hq")
    assert set(REQUIRED) <= set(claims)
    assert (claims["sub"], claims["role"], claims["iss"], claims["aud"]) == ("hank", "handler", "hq", "hq-agents")
    assert claims["exp"] - claims["iat"] == 900 == body["expires_in"]
    assert abs(claims["iat"] - time.time()) < 120
    again = jwt.decode(shared_hq.login("hank")["access_token"], options={"verify_signature": False})
    assert again["jti"] != claims["jti"] and again["sid"] != claims["sid"]  # each login is its own session
    status, who = await me(shared_hq, token)
    assert status == 200 and who == {"codename": "hank", "role": "handler", "exp": claims["exp"]}


async def test_forger_makes_tokens_hq_accepts(shared_hq: HQServer, forger: Forger) -> None:
    # Without this, every refusal below could be the forger's fault rather than HQ's check.
    status, who = await me(shared_hq, forger.make())
    assert status == 200 and who["codename"] == "ana"
    within_leeway = forger.make(exp=int(time.time()) - 3, iat=int(time.time()) - 900)
    assert (await me(shared_hq, within_leeway))[0] == 200
    assert (await me(shared_hq, forger.make(nbf=int(time.time()) - 5)))[0] == 200


async def test_role_comes_from_the_store_not_the_token(shared_hq: HQServer, forger: Forger) -> None:
    status, who = await me(shared_hq, forger.make(role="director"))
    assert status == 200 and who["role"] == "analyst"


def refusal_cases() -> dict[str, dict[str, Any]]:
    """name -> arguments for Forger.make, every one of which HQ must refuse as token_invalid."""
    now = int(time.time())
    cases: dict[str, dict[str, Any]] = {f"missing {claim}": {"drop": (claim,)} for claim in REQUIRED}
    cases.update({
        "wrong iss": {"iss": "not-hq"},
        "wrong aud": {"aud": "someone-else"},
        "nbf in the future": {"nbf": now + 120},
        "typ JWT": {"header": {"typ": "JWT"}},
        "no typ": {"header": {"typ": None}},
        "refresh-looking typ": {"header": {"typ": "rt+jwt"}},
        "unknown kid": {"header": {"kid": "another-key"}},
        "kid as a path": {"header": {"kid": "../../hq.secret"}},
        "kid not a string": {"header": {"kid": ["x"]}},
        "jku header": {"header": {"jku": "https://attacker.example/jwks.json"}},
        "jwk header": {"header": {"jwk": {"kty": "oct", "k": b64(b"k" * 32)}}},
        "x5u header": {"header": {"x5u": "https://attacker.example/cert.pem"}},
        "alg HS512 same secret": {"header": {"alg": "HS512"}, "digest": hashlib.sha512},
        "alg HS384 same secret": {"header": {"alg": "HS384"}, "digest": hashlib.sha384},
        "other secret": {"key": b"k" * 48},
        "unknown agent (deleted)": {"sub": "ghost"},
        "unknown session": {"sid": uuid.uuid4().hex},
        "sub not a string": {"sub": 42},
        "exp not a number": {"exp": "tomorrow"},
        "exp infinite": {"exp": float("inf")},
        "iat not a number": {"iat": [1]},
    })
    return cases


@pytest.mark.parametrize("case", list(refusal_cases()))
async def test_forged_tokens_are_refused(case: str, shared_hq: HQServer, forger: Forger) -> None:
    status, body = await me(shared_hq, forger.make(**refusal_cases()[case]))
    assert status == 401
    assert body["error"]["code"] == "token_invalid", body


@pytest.mark.parametrize("seconds_ago", [45, 3600])
async def test_expired_beyond_leeway(shared_hq: HQServer, forger: Forger, seconds_ago: int) -> None:
    now = int(time.time())
    status, body = await me(shared_hq, forger.make(exp=now - seconds_ago, iat=now - seconds_ago - 900))
    assert status == 401 and body["error"]["code"] == "token_expired"


async def test_alg_none_is_refused(shared_hq: HQServer, forger: Forger) -> None:
    for alg in ("none", "None", "NONE"):
        token = hmac_token({**forger.header, "alg": alg}, {**forger.claims, "jti": uuid.uuid4().hex}, None)
        status, body = await me(shared_hq, token)
        assert (status, body["error"]["code"]) == (401, "token_invalid"), alg
        stripped = token.rsplit(".", 1)[0] + "."
        assert (await me(shared_hq, stripped))[1]["error"]["code"] == "token_invalid"


async def test_rs256_signed_token_is_refused_under_hs256(shared_hq: HQServer, forger: Forger) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({**forger.claims, "jti": uuid.uuid4().hex}, key, algorithm="RS256",
                       headers={"typ": "at+jwt", "kid": forger.header["kid"]})
    assert (await me(shared_hq, token))[1]["error"]["code"] == "token_invalid"


async def test_tampering_breaks_the_signature(shared_hq: HQServer, forger: Forger, ana_token: str) -> None:
    head, payload, signature = ana_token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    promoted = b64(json.dumps({**forger.claims, "sub": "dora", "role": "director"}).encode())
    for token in (f"{head}.{payload}.{flipped}", f"{head}.{promoted}.{signature}", f"{head}.{payload}",
                  "not a token", "a.b.c", ana_token + "x" * 100):
        status, body = await me(shared_hq, token)
        assert (status, body["error"]["code"]) == (401, "token_invalid"), token[:40]


async def test_session_of_another_agent_is_refused(shared_hq: HQServer, forger: Forger) -> None:
    fox_sid = jwt.decode(shared_hq.login("fox")["access_token"], options={"verify_signature": False})["sid"]
    assert (await me(shared_hq, forger.make(sid=fox_sid)))[1]["error"]["code"] == "token_invalid"


async def test_revoked_session_is_refused_at_once(shared_hq: HQServer) -> None:
    first = shared_hq.login("fox")["access_token"]
    second = shared_hq.login("fox")["access_token"]
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{shared_hq.url}/api/auth/logout",
                                headers={"Authorization": f"Bearer {first}"}) as r:
            assert r.status == 204
    status, body = await me(shared_hq, first)
    assert status == 401 and body["error"]["code"] == "token_revoked"
    assert (await me(shared_hq, second))[0] == 200  # only that login session ends


async def test_disabled_agent_is_refused(shared_hq: HQServer) -> None:
    shared_hq.add_agent("tok_dis", "analyst")
    token = shared_hq.login("tok_dis")["access_token"]
    assert (await me(shared_hq, token))[0] == 200
    assert shared_hq.cli("agents", "disable", "tok_dis").returncode == 0
    status, body = await me(shared_hq, token)
    assert status == 401 and body["error"]["code"] == "agent_disabled"
    assert shared_hq.cli("agents", "enable", "tok_dis").returncode == 0
    # Enabling again does not bring back the sessions that disabling ended.
    assert (await me(shared_hq, token))[1]["error"]["code"] == "token_revoked"


async def test_missing_or_empty_bearer(shared_hq: HQServer) -> None:
    async with aiohttp.ClientSession() as session:
        for headers, code in (({}, "token_missing"), ({"Authorization": "Bearer "}, "token_missing"),
                              ({"Authorization": "Basic YW5hOnB3"}, "token_invalid")):
            async with session.get(f"{shared_hq.url}/api/auth/me", headers=headers) as r:
                assert r.status == 401 and (await r.json())["error"]["code"] == code, headers
                assert "Bearer" in r.headers.get("WWW-Authenticate", "")


# An HQ signing with RS256: the public key must never double as an HMAC secret. ----------------------

@pytest.fixture(scope="module")
def rsa_hq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HQServer, bytes]]:
    """An HQ using RS256 with a key pair made here; yields the server and the public key PEM."""
    folder = tmp_path_factory.mktemp("rsa")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (folder / "keys").mkdir()
    (folder / "keys" / "signing.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    (folder / "keys" / "signing.pub.pem").write_bytes(public)
    server = make_in_process_server(folder / "hq", {"ana": "analyst"}, auth={
        "algorithm": "RS256", "private_key": str(folder / "keys" / "signing.pem"),
        "public_key": str(folder / "keys" / "signing.pub.pem")}).start()
    yield server, public
    server.stop()


async def test_rs256_server_issues_and_publishes_keys(rsa_hq: tuple[HQServer, bytes]) -> None:
    server, _ = rsa_hq
    token = server.login("ana")["access_token"]
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["typ"] == "at+jwt"
    assert (await me(server, token))[0] == 200
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{server.url}/.well-known/jwks.json") as r:
            assert r.status == 200
            keys = (await r.json())["keys"]
    assert [k["kid"] for k in keys] == [header["kid"]]
    assert keys[0]["kty"] == "RSA" and not {"d", "p", "q"} & set(keys[0])
    verified = jwt.decode(token, jwt.PyJWK(keys[0]).key, algorithms=["RS256"], audience="hq-agents")
    assert verified["sub"] == "ana"


async def test_public_key_as_hmac_secret_is_refused(rsa_hq: tuple[HQServer, bytes]) -> None:
    server, public_pem = rsa_hq
    genuine = server.login("ana")["access_token"]
    forger = Forger(public_pem, genuine)
    confused = forger.make(header={"alg": "HS256"})
    assert (await me(server, confused))[1]["error"]["code"] == "token_invalid"
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {**forger.claims, "jti": uuid.uuid4().hex}
    for headers in ({"typ": "at+jwt", "kid": forger.header["kid"]},
                    {"typ": "at+jwt", "jwk": jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key(),
                                                                                 as_dict=True)}):
        token = jwt.encode(claims, attacker, algorithm="RS256", headers=headers)
        assert (await me(server, token))[1]["error"]["code"] == "token_invalid"


def test_secret_file_is_owner_only(shared_hq: HQServer, secret: bytes) -> None:
    path: Path = shared_hq.workdir / "hq.secret"
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(secret) >= 32


# judged by HQ's clock ------------------------------------------------------------------------------
# Verification checks iat, nbf and exp against the injected clock (PyJWT would read the system
# time): the edges below are exact because the clock only moves when the test moves it.
LEEWAY = 10
SIGNING_SECRET = b"s" * 40


@pytest.fixture
def clocked_tokens() -> tuple[TokenService, ManualClock]:
    """A TokenService (HS256, 60 s tokens, 10 s leeway) on a manual clock."""
    clock = ManualClock(start=1_700_000_000.0)
    auth = dataclasses.replace(AuthSettings(), access_ttl=60, leeway=LEEWAY)
    keys = KeyRing("HS256", SIGNING_SECRET, {"k1": SIGNING_SECRET}, "k1")
    return TokenService(keys, auth, clock), clock


def test_an_expired_token_is_refused_by_the_clock_from_exp_plus_leeway(
        clocked_tokens: tuple[TokenService, ManualClock]) -> None:
    tokens, clock = clocked_tokens
    issued = tokens.issue("ana", "analyst", "session-1")
    assert issued.exp == int(clock.time()) + 60
    clock.advance(60 + LEEWAY - 1)
    assert tokens.verify(issued.token).exp == issued.exp  # past exp, inside the leeway
    clock.advance(1)
    with pytest.raises(AuthError) as refused:
        tokens.verify(issued.token)
    assert refused.value.code == "token_expired"
    clock.advance(3600)
    with pytest.raises(AuthError) as refused:
        tokens.verify(issued.token)
    assert refused.value.code == "token_expired"


def test_the_clock_not_the_system_time_decides(clocked_tokens: tuple[TokenService, ManualClock]) -> None:
    tokens, clock = clocked_tokens
    # Issued (by the clock) in 2023: long expired by the system time, alive by the clock.
    issued = tokens.issue("ana", "analyst", "session-1")
    assert issued.exp < time.time()
    assert tokens.verify(issued.token).sub == "ana"
    # Alive by the system time, expired by the clock.
    fresh = SystemClock().time()
    alive_now = tokens.issue("ana", "analyst", "session-2", now=fresh)
    clock.advance(fresh - clock.time() + 60 + LEEWAY)
    with pytest.raises(AuthError) as refused:
        tokens.verify(alive_now.token)
    assert refused.value.code == "token_expired"


@pytest.mark.parametrize(("claims", "code"), [
    ({"exp": 1_700_000_000 - LEEWAY}, "token_expired"),      # exp <= now - leeway
    ({"iat": 1_700_000_000 + LEEWAY + 1}, "token_invalid"),  # issued in the future
    ({"nbf": 1_700_000_000 + LEEWAY + 1}, "token_invalid"),  # not valid yet
    ({"exp": True}, "token_invalid"),
    ({"exp": "1800000000"}, "token_invalid"),
    ({"iat": None}, "token_invalid"),
    ({"nbf": [1]}, "token_invalid"),
    ({"exp": None}, "token_invalid"),
])
def test_time_claims_are_checked_against_the_clock(clocked_tokens: tuple[TokenService, ManualClock],
                                                   claims: dict[str, Any], code: str) -> None:
    tokens, _ = clocked_tokens
    genuine = tokens.issue("ana", "analyst", "session-1").token
    forged = Forger(SIGNING_SECRET, genuine).make(**claims)
    with pytest.raises(AuthError) as refused:
        tokens.verify(forged)
    assert refused.value.code == code


@pytest.mark.parametrize("claim", ["iat", "exp"])
def test_time_claims_are_still_required(clocked_tokens: tuple[TokenService, ManualClock], claim: str) -> None:
    tokens, _ = clocked_tokens
    forged = Forger(SIGNING_SECRET, tokens.issue("ana", "analyst", "session-1").token).make(drop=(claim,))
    with pytest.raises(AuthError) as refused:
        tokens.verify(forged)
    assert refused.value.code == "token_invalid"


def test_times_within_the_leeway_are_accepted(clocked_tokens: tuple[TokenService, ManualClock]) -> None:
    tokens, _ = clocked_tokens
    genuine = tokens.issue("ana", "analyst", "session-1").token
    skewed = Forger(SIGNING_SECRET, genuine).make(iat=1_700_000_000 + LEEWAY, nbf=1_700_000_000 + LEEWAY,
                                                  exp=1_700_000_000 - LEEWAY + 1)
    assert tokens.verify(skewed).sub == "ana"
