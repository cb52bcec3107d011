"""Issuing and verifying access tokens, and minting refresh tokens.

Verification knows nothing of HTTP or Socket.IO: it takes a string and answers with the claims
or an :class:`~hq.errors.AuthError` carrying the contract's code (RFC 8725 practices: one
configured algorithm, every claim required, explicit ``typ``, keys only from configuration).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from jwt.algorithms import get_default_algorithms

from ..clock import Clock, SystemClock
from ..config import AuthSettings, Settings
from ..errors import AuthError
from ..key_files import read_or_create

ACCESS_TOKEN_TYPE = "at+jwt"
REQUIRED_CLAIMS = ("sub", "role", "sid", "jti", "iat", "exp", "iss", "aud")
FORBIDDEN_HEADERS = ("jku", "jwk", "x5u", "x5c")
#: The one restricted scope: a token that may only enrol a second factor (hq/auth/mfa.py). A token
#: without a ``scope`` claim is a full one; any other value is not HQ's and is refused.
ENROLL_SCOPE = "mfa_enroll"
SCOPES = frozenset({ENROLL_SCOPE})


@dataclass(frozen=True)
class AccessClaims:
    """The verified claims of an access token, under their JWT names (``sid`` is the login session's id)."""

    sub: str
    role: str
    sid: str
    jti: str
    iat: int
    exp: int
    scope: str | None = None


@dataclass(frozen=True)
class IssuedToken:
    """A freshly signed access token and when it expires (epoch seconds)."""

    token: str
    exp: int
    lifetime: int


class KeyRing:
    """The signing key and every verification key, each named by a ``kid``."""

    def __init__(self, algorithm: str, signing_key: Any, verification_keys: dict[str, Any], kid: str) -> None:
        self.algorithm = algorithm
        self.signing_key = signing_key
        self.verification_keys = verification_keys
        self.kid = kid

    @property
    def is_symmetric(self) -> bool:
        return self.algorithm.startswith("HS")

    @classmethod
    def from_settings(cls, settings: Settings) -> "KeyRing":
        """Load keys from configuration; an unset HMAC secret comes from (or goes to) a 0600 file."""
        auth = settings.auth
        if auth.algorithm.startswith("HS"):
            secret = auth.secret.encode() if auth.secret else load_or_create_secret(settings.secret_path)
            kid = auth.key_id or hashlib.sha256(secret).hexdigest()[:16]
            return cls(auth.algorithm, secret, {kid: secret}, kid)
        return cls._asymmetric(auth)

    @classmethod
    def _asymmetric(cls, auth: AuthSettings) -> "KeyRing":
        algorithm = get_default_algorithms()[auth.algorithm]
        assert auth.private_key is not None and auth.public_key is not None
        private = algorithm.prepare_key(auth.private_key.read_bytes())
        public = algorithm.prepare_key(auth.public_key.read_bytes())
        kid = auth.key_id or _thumbprint(auth.public_key.read_bytes())
        keys = {kid: public}
        for old_kid, path in auth.previous_public_keys.items():
            keys[old_kid] = algorithm.prepare_key(path.read_bytes())
        return cls(auth.algorithm, private, keys, kid)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        """The public keys as a JWK Set (empty for HMAC, which has none to publish)."""
        if self.is_symmetric:
            return {"keys": []}
        algorithm = get_default_algorithms()[self.algorithm]
        keys = []
        for kid, key in self.verification_keys.items():
            jwk = algorithm.to_jwk(key, as_dict=True)
            keys.append({**jwk, "kid": kid, "alg": self.algorithm, "use": "sig"})
        return {"keys": keys}


def _thumbprint(pem: bytes) -> str:
    return hashlib.sha256(pem).hexdigest()[:16]


def load_or_create_secret(path: Path) -> bytes:
    """Read the generated HMAC secret, creating it (owner read/write only) on first start."""
    secret = read_or_create(path, lambda: base64.urlsafe_b64encode(secrets.token_bytes(48)).rstrip(b"="))
    if len(secret) < 32:
        raise ValueError(f"the secret in {path} is shorter than 32 bytes")
    return secret


class TokenService:
    """Signs and verifies HQ's access tokens with one :class:`KeyRing`.

    ``iat`` is written and ``iat``, ``nbf`` and ``exp`` are judged by ``clock``
    (:class:`~hq.clock.SystemClock` unless a test brings its own).
    """

    def __init__(self, keys: KeyRing, auth: AuthSettings, clock: Clock | None = None) -> None:
        self._keys = keys
        self._auth = auth
        self._clock = SystemClock() if clock is None else clock

    @property
    def keys(self) -> KeyRing:
        return self._keys

    def issue(self, codename: str, role: str, session_id: str, now: float | None = None, scope: str | None = None,
              lifetime: int | None = None) -> IssuedToken:
        """Sign an access token for one agent's login session (``scope``: a restricted one)."""
        assert scope is None or scope in SCOPES, scope
        iat = int(now if now is not None else self._clock.time())
        lifetime = self._auth.access_ttl if lifetime is None else lifetime
        exp = iat + lifetime
        claims: dict[str, Any] = {"sub": codename, "role": role, "sid": session_id, "jti": uuid.uuid4().hex, "iat": iat,
                                  "exp": exp, "iss": self._auth.issuer, "aud": self._auth.audience}
        if scope is not None:
            claims["scope"] = scope
        headers = {"typ": ACCESS_TOKEN_TYPE, "kid": self._keys.kid}
        token = jwt.encode(claims, self._keys.signing_key, algorithm=self._keys.algorithm, headers=headers)
        return IssuedToken(token, exp, lifetime)

    def verify(self, token: str) -> AccessClaims:
        """Check signature, algorithm, ``typ``, every claim, ``iss``, ``aud`` and expiry."""
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise AuthError("malformed token", "token_invalid")
        key = self._key_for(token)
        try:
            # PyJWT would judge the times by the system clock; _check_times judges them by ours.
            decoded = jwt.decode_complete(
                token, key, algorithms=[self._keys.algorithm], audience=self._auth.audience,
                issuer=self._auth.issuer,
                options={"require": list(REQUIRED_CLAIMS), "verify_signature": True,
                         "verify_exp": False, "verify_iat": False, "verify_nbf": False})
        except jwt.PyJWTError:
            raise AuthError("token is not valid", "token_invalid") from None
        if decoded["header"].get("typ") != ACCESS_TOKEN_TYPE:
            raise AuthError("token is not an access token", "token_invalid")
        self._check_times(decoded["payload"])
        return _claims(decoded["payload"])

    def _check_times(self, payload: dict[str, Any]) -> None:
        """PyJWT's own time checks, against the clock: ``iat`` and ``nbf`` (when present) not in
        the future, ``exp`` not past, each with ``auth.leeway`` seconds for clock skew."""
        now, leeway = self._clock.time(), self._auth.leeway
        times: dict[str, int] = {}
        for name in ("iat", "nbf", "exp"):
            if name in payload:
                value = payload[name]
                try:
                    # bool is an int to Python, but "exp": true is no time (nor NaN or Infinity).
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise ValueError(name)
                    times[name] = int(value)
                except (ValueError, OverflowError):
                    raise AuthError("token is not valid", "token_invalid") from None
        if times["iat"] > now + leeway or times.get("nbf", 0) > now + leeway:
            raise AuthError("token is not valid yet", "token_invalid")
        if times["exp"] <= now - leeway:
            raise AuthError("token has expired", "token_expired")

    def _key_for(self, token: str) -> Any:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("token is not valid", "token_invalid") from None
        if any(name in header for name in FORBIDDEN_HEADERS):
            raise AuthError("token names its own key", "token_invalid")
        kid = header.get("kid", self._keys.kid)
        key = self._keys.verification_keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise AuthError("token is signed with an unknown key", "token_invalid")
        return key


def _claims(payload: dict[str, Any]) -> AccessClaims:
    try:
        claims = AccessClaims(sub=payload["sub"], role=payload["role"], sid=payload["sid"], jti=payload["jti"],
                              iat=int(payload["iat"]), exp=int(payload["exp"]), scope=payload.get("scope"))
    except (KeyError, TypeError, ValueError):
        raise AuthError("token is not valid", "token_invalid") from None
    if claims.scope is not None and claims.scope not in SCOPES:
        raise AuthError("token is not valid", "token_invalid")
    if not all(isinstance(v, str) and v for v in (claims.sub, claims.role, claims.sid, claims.jti)):
        raise AuthError("token is not valid", "token_invalid")
    return claims


def new_refresh_token() -> tuple[str, str]:
    """A random opaque refresh token (256 bits) and the hash under which it is stored."""
    token = secrets.token_urlsafe(32)
    return token, hash_refresh_token(token)


def hash_refresh_token(token: str) -> str:
    """The stored form of a refresh token (SHA-256; the token itself has 256 bits of entropy)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_session_id() -> str:
    """A login session id for the ``sid`` claim."""
    return uuid.uuid4().hex
