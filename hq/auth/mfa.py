"""The second factor: TOTP codes (RFC 6238) and single-use recovery codes.

- **Secrets at rest.** A TOTP secret is stored only sealed with AES-256-GCM under a key HQ keeps in
  a file of its own beside its signing secret (0600, generated on first use, ``auth.mfa_key_file``),
  with the agent's codename as associated data, so a copy of the database alone yields no secret
  and a sealed secret moved to another agent's row does not open.
- **Codes.** Six digits, 30-second steps; the code of the previous and of the next step is also
  accepted (a phone clock a little off). A step is good once: the step a code matched is written to
  the store with a conditional UPDATE (``last_step < step``), so the same code, or an older one, is
  refused on every node of a cluster however close the attempts come.
- **Recovery codes.** Ten per enrolment, 80 random bits each, shown once, stored as SHA-256 hashes
  and spent with a conditional UPDATE, so each works once.

Nothing here logs a secret or a code.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import pyotp
import segno
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import UnavailableError
from ..key_files import read_or_create
from ..store import Agent, MfaRecord, Store

log = logging.getLogger(__name__)

STEP_SECONDS = 30
DIGITS = 6
#: Steps on either side of the current one whose codes are accepted.
WINDOW = 1
RECOVERY_CODE_COUNT = 10
#: Recovery codes are 16 characters of this alphabet (80 bits), shown in four groups of four.
#: Crockford's base32 alphabet: no i, l, o or u, so a code read aloud or off paper is not misread.
_RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
#: What a person may type for a letter the alphabet leaves out.
_LOOKALIKES = str.maketrans({"o": "0", "i": "1", "l": "1"})
_RECOVERY_LENGTH = 16
#: Longer ``otp`` values are refused before any work: no code HQ issues is that long.
MAX_OTP_LENGTH = 64
_SEALED_PREFIX = "v1:"
_KEY_BYTES = 32


class OtpRejected(Exception):
    """A code that is wrong, malformed, already used in its step, or a spent recovery code."""


class MfaKeyError(UnavailableError):
    """A sealed TOTP secret does not open with this HQ's key (the key file does not match the database).

    An operator's problem, not the agent's: answered as ``unavailable`` (HTTP 503), never a 500.
    """


# -- the key and the sealed secrets ---------------------------------------------------------------
class SecretBox:
    """Seals and opens TOTP secrets with AES-256-GCM; the codename is bound as associated data."""

    def __init__(self, key: bytes) -> None:
        if len(key) != _KEY_BYTES:
            raise ValueError(f"the MFA key must be {_KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    @classmethod
    def from_file(cls, path: Path) -> "SecretBox":
        """The key in ``path``, generated there (owner read/write only) if the file does not exist."""
        return cls(load_or_create_key(path))

    def seal(self, secret: str, codename: str) -> str:
        """The stored form of ``secret`` for ``codename`` (text: a version, then base64)."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode("ascii"), _associated(codename))
        return _SEALED_PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, sealed: str, codename: str) -> str:
        """The secret sealed for ``codename``; :class:`MfaKeyError` if it does not open."""
        try:
            if not sealed.startswith(_SEALED_PREFIX):
                raise ValueError("unknown format")
            raw = base64.b64decode(sealed.removeprefix(_SEALED_PREFIX), validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], _associated(codename)).decode("ascii")
        except (InvalidTag, ValueError, UnicodeDecodeError):
            # The codename only: never the sealed text, let alone a secret.
            log.error("the TOTP secret of %s does not open with the MFA key file: is it the key this "
                      "database was enrolled with?", codename.lower())
            raise MfaKeyError("HQ cannot check second factors right now") from None


def _associated(codename: str) -> bytes:
    return b"hq-totp:" + codename.lower().encode("ascii")


def load_or_create_key(path: Path) -> bytes:
    """Read the MFA key file, creating it (32 random bytes, base64, mode 0600) on first use."""
    text = read_or_create(path, lambda: base64.urlsafe_b64encode(secrets.token_bytes(_KEY_BYTES)))
    try:
        key = base64.urlsafe_b64decode(text)
    except ValueError:
        key = b""
    if len(key) != _KEY_BYTES:
        raise ValueError(f"the MFA key in {path} is not {_KEY_BYTES} bytes of base64")
    return key


# -- TOTP -----------------------------------------------------------------------------------------
def new_totp_secret() -> str:
    """A fresh TOTP secret: 160 random bits in base32 (RFC 4226's recommended length)."""
    return pyotp.random_base32(32)


def step_at(now: float) -> int:
    """The TOTP time step (counter) at ``now``."""
    return int(now // STEP_SECONDS)


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The step within ``WINDOW`` of ``now`` whose code ``code`` is, or None.

    Every candidate is computed and compared in constant time, match or not.
    """
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS)
    current = step_at(now)
    # Bytes: compare_digest refuses str with non-ASCII characters, and ``code`` is whatever was sent.
    typed = code.encode("utf-8", "surrogatepass")
    found = None
    for step in range(current - WINDOW, current + WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(step).encode("ascii"), typed) and found is None:
            found = step
    return found


def is_totp_code(text: str) -> bool:
    """Whether ``text`` has the shape of a TOTP code (six ASCII digits)."""
    return len(text) == DIGITS and text.isascii() and text.isdigit()


@dataclass(frozen=True)
class Enrollment:
    """What an agent needs to set up its authenticator app, shown once: never stored in the clear."""

    codename: str
    secret: str
    otpauth_uri: str

    def qr_svg(self) -> str:
        """The ``otpauth://`` URI as an SVG QR code (markup of HQ's making, no client text)."""
        return segno.make(self.otpauth_uri, error="m").svg_inline(scale=4)

    def qr_data_uri(self) -> str:
        """The same QR code as a ``data:image/svg+xml`` URI, for an ``<img src>``."""
        return segno.make(self.otpauth_uri, error="m").svg_data_uri(scale=4)

    def terminal_qr(self) -> str:
        """The QR code drawn with text blocks, for a terminal."""
        out = io.StringIO()
        segno.make(self.otpauth_uri, error="m").terminal(out=out, compact=True)
        return out.getvalue()

    def to_json(self) -> dict[str, str]:
        """The HTTP body of a started enrolment."""
        return {"otpauth_uri": self.otpauth_uri, "secret": self.secret, "qr_svg": self.qr_svg(),
                "qr_data_uri": self.qr_data_uri()}


def enrollment_for(codename: str, secret: str, issuer: str) -> Enrollment:
    """The URI an authenticator app scans: ``otpauth://totp/ISSUER:CODENAME?secret=...&issuer=ISSUER``."""
    uri = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(name=codename,
                                                                                    issuer_name=issuer)
    return Enrollment(codename, secret, uri)


# -- recovery codes -------------------------------------------------------------------------------
def new_recovery_codes(count: int = RECOVERY_CODE_COUNT) -> list[str]:
    """``count`` random codes like ``k3q9-x2mf-7t0a-hcwp`` (80 bits each)."""
    codes = []
    for _ in range(count):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH))
        codes.append("-".join(raw[i:i + 4] for i in range(0, _RECOVERY_LENGTH, 4)))
    return codes


def normalise_recovery_code(text: str) -> str | None:
    """A typed recovery code without dashes and spaces, in lower case; None if it cannot be one."""
    cleaned = "".join(text.split()).replace("-", "").lower().translate(_LOOKALIKES)
    if len(cleaned) != _RECOVERY_LENGTH or not set(cleaned) <= set(_RECOVERY_ALPHABET):
        return None
    return cleaned


def hash_recovery_code(text: str) -> str:
    """The stored form of a recovery code (SHA-256 of its normalised form; 80 random bits behind it)."""
    normal = normalise_recovery_code(text)
    assert normal is not None, "hash only well-formed codes"
    return hashlib.sha256(b"hq-recovery:" + normal.encode("ascii")).hexdigest()


# -- checking a second factor at login --------------------------------------------------------------
class SecondFactor:
    """Checks an agent's ``otp`` at login: a TOTP code once per step, or an unspent recovery code."""

    def __init__(self, store: Store, box: SecretBox, issuer: str, required_roles: frozenset[str]) -> None:
        self._store = store
        self._box = box
        self._issuer = issuer
        self._required = required_roles
        # Spent on a wrong password, so that checking a code costs the same whether or not it is reached.
        self._decoy = new_totp_secret()

    @property
    def box(self) -> SecretBox:
        """The key sealing TOTP secrets."""
        return self._box

    @property
    def issuer(self) -> str:
        """The name authenticator apps show above the codename."""
        return self._issuer

    def required_for(self, agent: Agent) -> bool:
        """Whether the agent's stored role must log in with a second factor (``auth.mfa_required``)."""
        return agent.role in self._required

    async def record(self, codename: str) -> MfaRecord | None:
        """The agent's enrolment (confirmed or pending), or None."""
        return await self._store.get_mfa(codename)

    def spend_like_a_check(self, otp: str) -> None:
        """Do the work of checking ``otp`` against nothing (a wrong password must take as long)."""
        if len(otp) <= MAX_OTP_LENGTH:
            matching_step(self._decoy, otp.strip(), time.time())
            normalise_recovery_code(otp)

    async def check(self, agent: Agent, record: MfaRecord, otp: str, now: float | None = None) -> str:
        """Accept ``otp`` for a confirmed enrolment and spend it; the factor used (``totp`` or
        ``recovery_code``). Raises :class:`OtpRejected` for anything else, replays included."""
        now = time.time() if now is None else now
        if not record.confirmed or len(otp) > MAX_OTP_LENGTH:
            raise OtpRejected("no such code")
        code = otp.strip().replace(" ", "")
        if is_totp_code(code):
            step = matching_step(self._box.open(record.secret_box, agent.codename), code, now)
            # The conditional UPDATE decides: the same step, or an older one, is refused everywhere.
            if step is None or not await self._store.use_totp_step(agent.codename, step):
                raise OtpRejected("wrong or already used code")
            return "totp"
        if normalise_recovery_code(code) is None:
            raise OtpRejected("not a code")
        if not await self._store.use_recovery_code(agent.codename, hash_recovery_code(code), now):
            raise OtpRejected("unknown or spent recovery code")
        return "recovery_code"


__all__ = ["DIGITS", "Enrollment", "MfaKeyError", "OtpRejected", "RECOVERY_CODE_COUNT", "STEP_SECONDS",
           "SecondFactor", "SecretBox", "WINDOW", "enrollment_for", "hash_recovery_code", "is_totp_code",
           "load_or_create_key", "matching_step", "new_recovery_codes", "new_totp_secret",
           "normalise_recovery_code", "step_at"]
