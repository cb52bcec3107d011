"""Asymmetric signing keys, the JWKS, key rotation by kid, forged kids, and TLS."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import jwt
import pytest

from .keys import write_key_pair, write_self_signed
from .sio import RecordingClient
from .support import HQServer, base_config, write_config


def asym(tmp_path: Path, algorithm: str, key_id: str = "k1", **auth: object) -> dict:
    private, public = write_key_pair(tmp_path, algorithm, key_id)
    return {"algorithm": algorithm, "private_key": str(private), "public_key": str(public), "key_id": key_id, **auth}


async def me_status(hq: HQServer, token: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{hq.url}/api/auth/me", headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, await r.json()


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
async def test_asymmetric_tokens_verify_against_published_jwks(hq_factory, tmp_path: Path, algorithm: str) -> None:
    hq = hq_factory(auth=asym(tmp_path, algorithm))
    token = hq.login("fox")["access_token"]
    header = jwt.get_unverified_header(token)
    assert header == {"alg": algorithm, "typ": "at+jwt", "kid": "k1"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{hq.url}/.well-known/jwks.json") as response:
            jwks = await response.json()
    assert [k["kid"] for k in jwks["keys"]] == ["k1"]
    assert not any(field in jwks["keys"][0] for field in ("d", "p", "q")), "private material published"
    public = jwt.PyJWKSet.from_dict(jwks)["k1"]
    claims = jwt.decode(token, public.key, algorithms=[algorithm], audience="hq-agents", issuer="hq")
    assert claims["sub"] == "fox"
    assert (await me_status(hq, token))[0] == 200
    client = await RecordingClient().connect(hq.url, token)
    assert (await client.call("join", {"channel": "missions"}))["ok"]
    await client.close()


async def test_key_rotation_keeps_old_tokens_valid(hq_factory, tmp_path: Path) -> None:
    old_auth = asym(tmp_path, "ES256", "2026-10")
    hq = hq_factory(auth=old_auth)
    old_token = hq.login("fox")["access_token"]
    hq.stop()
    new_private, new_public = write_key_pair(tmp_path, "ES256", "2026-11")
    rotated = {**old_auth, "private_key": str(new_private), "public_key": str(new_public), "key_id": "2026-11",
               "previous_public_keys": {"2026-10": old_auth["public_key"]}}
    write_config(hq.config, base_config(hq.port, auth=rotated))
    hq.start()
    assert (await me_status(hq, old_token))[0] == 200
    new_token = hq.login("fox")["access_token"]
    assert jwt.get_unverified_header(new_token)["kid"] == "2026-11"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{hq.url}/.well-known/jwks.json") as response:
            assert sorted(k["kid"] for k in (await response.json())["keys"]) == ["2026-10", "2026-11"]


async def test_forged_kids_and_key_headers_are_refused(hq_factory, tmp_path: Path) -> None:
    auth = asym(tmp_path, "RS256")
    hq = hq_factory(auth=auth)
    good = hq.login("fox")["access_token"]
    claims = jwt.decode(good, options={"verify_signature": False})
    private = Path(auth["private_key"]).read_bytes()
    public_pem = Path(auth["public_key"]).read_bytes()
    forged = [
        jwt.encode(claims, private, "RS256", headers={"typ": "at+jwt", "kid": "../../hq.secret"}),
        jwt.encode(claims, private, "RS256", headers={"typ": "at+jwt", "kid": "https://evil.example/key"}),
        jwt.encode(claims, private, "RS256", headers={"typ": "at+jwt", "kid": "k1", "jku": "https://evil.example/jwks"}),
        jwt.encode(claims, private, "RS256", headers={"typ": "at+jwt", "kid": "k1", "x5u": "https://evil.example/c"}),
    ]
    # Algorithm confusion: the public key used as an HMAC secret.
    confused = jwt.api_jws.PyJWS(algorithms=None)
    confused._algorithms["HS256"].prepare_key = lambda key: key  # allow a PEM as HMAC key for the attack
    forged.append(confused.encode(jwt.utils.force_bytes(__import__("json").dumps(claims)), public_pem, "HS256",
                                  headers={"typ": "at+jwt", "kid": "k1"}))
    for token in forged:
        status, body = await me_status(hq, token)
        assert (status, body["error"]["code"]) == (401, "token_invalid"), token
        client = RecordingClient()
        with pytest.raises(Exception):
            await client.connect(hq.url, token)
        assert client.connect_error["data"] == {"code": "token_invalid"}


async def test_jwks_is_404_under_hmac(hq: HQServer) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{hq.url}/.well-known/jwks.json") as response:
            assert response.status == 404
            assert (await response.json())["error"]["code"] == "not_found"


async def test_tls_serves_https_and_wss(hq_factory, tmp_path: Path) -> None:
    cert, key = write_self_signed(tmp_path)
    hq = hq_factory(server={"tls_cert": str(cert), "tls_key": str(key)})
    assert hq.url.startswith("https://")
    token = hq.login("hank")["access_token"]
    client = await RecordingClient(ssl_context=hq.ssl_context()).connect(hq.url, token, transports=["websocket"])
    assert (await client.call("message", {"channel": "missions", "text": "over TLS"}))["ok"]
    await client.close()
    untrusting = aiohttp.ClientSession()
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await untrusting.get(f"{hq.url}/healthz")
    await untrusting.close()


def test_a_generated_key_file_is_never_read_half_written(tmp_path: Path) -> None:
    """Processes starting at once on one folder all get the one complete key (hq/key_files.py): the
    file appears only once written whole, and the first to link it wins."""
    from concurrent.futures import ThreadPoolExecutor

    from hq.auth.mfa import load_or_create_key
    from hq.auth.tokens import load_or_create_secret
    for load, name in ((load_or_create_secret, "hq.secret"), (load_or_create_key, "hq.mfa-key")):
        path = tmp_path / name
        with ThreadPoolExecutor(16) as pool:
            keys = list(pool.map(lambda _: load(path), range(64)))
        assert len(set(keys)) == 1 and keys[0] == load(path)
        assert path.stat().st_mode & 0o777 == 0o600
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
