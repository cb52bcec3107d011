"""Typed, frozen settings: built-in defaults, then a TOML file, then ``HQ_<SECTION>_<KEY>``.

``HQ_`` variables whose first word names no section (``HQ_URL``, read by agent_client) are not
HQ's and are ignored; ``HQ_CONFIG`` names the file.

Every key is validated once, at start-up; a bad one raises :class:`ConfigError` naming the key,
which the CLI turns into one line on stderr and exit code 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DEFAULT_LEVELS = ("analyst", "field-operative", "handler", "director")
CODENAME_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA")
DEFAULT_MFA_ROLES = ("director",)


class ConfigError(Exception):
    """A configuration key is unknown, of the wrong type or has a bad value."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config: {key}: {problem}")
        self.key = key


@dataclass(frozen=True)
class ChannelPolicy:
    """Who may read and who may write one channel, as minimum clearance levels."""

    read: str
    write: str


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 3000
    allowed_origins: tuple[str, ...] = ("http://localhost:3000", "http://127.0.0.1:3000")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    trusted_proxies: tuple[str, ...] = ()
    websocket_compression: bool = False
    max_packet_bytes: int = 65536
    max_buffered_bytes: int = 1048576
    eager_tasks: bool = False
    ping_interval: float = 25.0
    ping_timeout: float = 20.0


@dataclass(frozen=True)
class AuthSettings:
    algorithm: str = "HS256"
    secret: str | None = None
    secret_file: Path | None = None
    private_key: Path | None = None
    public_key: Path | None = None
    key_id: str | None = None
    previous_public_keys: Mapping[str, Path] = field(default_factory=dict)
    issuer: str = "hq"
    audience: str = "hq-agents"
    access_ttl: int = 900
    refresh_ttl: int = 604800
    bcrypt_rounds: int = 12
    bcrypt_workers: int = 2
    expiry_warning: int = 60
    leeway: int = 10
    # Seconds a just-rotated refresh token may come back (a retry after a lost reply); 0 = never.
    refresh_grace: int = 5
    # Roles that must log in with a TOTP second factor (hq/auth/mfa.py); the key that encrypts the
    # TOTP secrets in the store (generated beside the signing secret when unset); the name
    # authenticator apps show.
    mfa_required: tuple[str, ...] = DEFAULT_MFA_ROLES
    mfa_key_file: Path | None = None
    mfa_issuer: str = "HQ"


@dataclass(frozen=True)
class LimitsSettings:
    login_failures_per_codename: int = 5
    login_failures_per_address: int = 20
    login_window: int = 900
    text_max_bytes: int = 16384
    events_per_second: float = 20.0
    events_burst: int = 40
    login_body_max_bytes: int = 65536
    history_max: int = 500
    # The directors' changes (hq/http/guards.py): a token bucket per director, this many at once,
    # then this many a second (30 a minute).
    director_changes_burst: int = 30
    director_changes_per_second: float = 0.5


@dataclass(frozen=True)
class StorageSettings:
    url: str = ""
    revocation_poll: float = 0.25


@dataclass(frozen=True)
class ClusterSettings:
    redis_url: str | None = None
    channel: str = "hq"
    # Presence (hq/cluster/presence.py): each node refreshes its alive key in Redis every
    # presence_heartbeat seconds with a TTL of presence_ttl, so a crashed node's agents leave
    # presence within presence_ttl seconds.
    presence_heartbeat: float = 5.0
    presence_ttl: float = 15.0
    # Channel delivery (hq/realtime/sequencer.py): each node reads from the store what Redis may
    # not have brought (nothing in a healthy cluster) once per catch_up_interval seconds; gaps and a
    # subscription coming back after an outage are filled at once whatever this is.
    catch_up_interval: float = 30.0


@dataclass(frozen=True)
class ClearanceSettings:
    levels: tuple[str, ...] = DEFAULT_LEVELS


@dataclass(frozen=True)
class AuditSettings:
    path: str = "-"


@dataclass(frozen=True)
class AdminSettings:
    enabled: bool = False
    read_only: bool = True


def _default_channels() -> dict[str, ChannelPolicy]:
    return {
        "missions": ChannelPolicy(read="field-operative", write="handler"),
        "hq": ChannelPolicy(read="handler", write="field-operative"),
    }


@dataclass(frozen=True)
class Settings:
    """Everything HQ reads from its configuration, validated."""

    server: ServerSettings = field(default_factory=ServerSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    clearance: ClearanceSettings = field(default_factory=ClearanceSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    channels: Mapping[str, ChannelPolicy] = field(default_factory=_default_channels)
    base_dir: Path = field(default_factory=Path.cwd)

    @property
    def secret_path(self) -> Path:
        """Where the generated HMAC secret lives when none is configured."""
        return self.auth.secret_file or self.base_dir / "hq.secret"

    @property
    def mfa_key_path(self) -> Path:
        """Where the key encrypting TOTP secrets lives: configured, else beside the HMAC secret file."""
        return self.auth.mfa_key_file or self.secret_path.with_name("hq.mfa-key")

    @property
    def mfa_roles(self) -> frozenset[str]:
        """The clearance levels that must use a second factor (the default names ``director`` only
        where such a level exists; a configured list is checked against the levels)."""
        return frozenset(self.auth.mfa_required) & frozenset(self.clearance.levels)

    @property
    def storage_url(self) -> str:
        """The configured store, or an SQLite file beside the config (or in the working folder)."""
        url = self.storage.url or "sqlite:///hq.sqlite3"
        if url.startswith("sqlite:///"):
            return f"sqlite:///{_resolve(self.base_dir, url.removeprefix('sqlite:///'))}"
        return url


_SECTIONS: dict[str, type] = {
    "server": ServerSettings,
    "auth": AuthSettings,
    "limits": LimitsSettings,
    "storage": StorageSettings,
    "cluster": ClusterSettings,
    "clearance": ClearanceSettings,
    "audit": AuditSettings,
    "admin": AdminSettings,
}
_PATH_KEYS = {"tls_cert", "tls_key", "secret_file", "private_key", "public_key"}


def find_config(explicit: str | None) -> Path | None:
    """The config file to read: ``--config``, else ``$HQ_CONFIG``, else ``./config.toml``."""
    if explicit:
        return Path(explicit)
    if os.environ.get("HQ_CONFIG"):
        return Path(os.environ["HQ_CONFIG"])
    local = Path("config.toml")
    return local if local.is_file() else None


def load_settings(path: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read defaults, then ``path`` (if any), then ``HQ_*`` variables, and validate the result."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(str(path), "config file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), f"cannot read config file ({exc})") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"invalid TOML ({exc})") from None
        base_dir = path.resolve().parent
    _apply_environment(raw, environ)
    return _build(raw, base_dir)


def _apply_environment(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith("HQ_") or name == "HQ_CONFIG":
            continue
        section, _, key = name[3:].lower().partition("_")
        if section == "channels":
            raw.setdefault("channels", {})[key] = _parse_env_json(name, value)
            continue
        if section not in _SECTIONS:
            # Other programs share the prefix (agent_client reads HQ_URL): a name outside HQ's
            # sections is not HQ's to refuse. A typo inside a known section still stops start-up.
            continue
        fields = {f.name: f for f in dataclasses.fields(_SECTIONS[section])}
        if key not in fields:
            raise ConfigError(name, "unknown setting")
        is_text = fields[key].type in ("str", "str | None", "Path | None")
        raw.setdefault(section, {})[key] = value if is_text else _parse_env_json(name, value)


def _parse_env_json(name: str, value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        raise ConfigError(name, f"not valid JSON: {value[:40]!r}") from None


def _build(raw: dict[str, Any], base_dir: Path) -> Settings:
    sections: dict[str, Any] = {}
    for name, table in raw.items():
        if name == "channels":
            continue
        if name not in _SECTIONS:
            raise ConfigError(name, "unknown section")
        if not isinstance(table, dict):
            raise ConfigError(name, "must be a table")
        sections[name] = _build_section(name, _SECTIONS[name], table, base_dir)
    channels = _build_channels(raw.get("channels"))
    settings = Settings(**sections, channels=channels, base_dir=base_dir)
    _validate(settings)
    return settings


def _build_section(name: str, cls: type, table: dict[str, Any], base_dir: Path) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"{name}.{key}", "unknown key")
        values[key] = _coerce(f"{name}.{key}", str(fields[key].type), value, base_dir)
    return cls(**values)


def _coerce(key: str, type_name: str, value: Any, base_dir: Path) -> Any:
    optional = type_name.endswith("| None")
    if value is None and optional:
        return None
    base = type_name.removesuffix(" | None")
    checks: dict[str, tuple[type, ...]] = {
        "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "Path": (str,),
    }
    if base in checks:
        if not isinstance(value, checks[base]) or (base in ("int", "float") and isinstance(value, bool)):
            raise ConfigError(key, f"must be {'a path' if base == 'Path' else base}, got {value!r}")
        if base == "Path":
            return _resolve(base_dir, value)
        return float(value) if base == "float" else value
    if base == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"must be a list of strings, got {value!r}")
        return tuple(value)
    if base == "Mapping[str, Path]":
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(key, "must be a table of key id = path")
        return {k: _resolve(base_dir, v) for k, v in value.items()}
    raise ConfigError(key, f"unsupported type {type_name}")


def _resolve(base_dir: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def _build_channels(table: Any) -> dict[str, ChannelPolicy]:
    if table is None:
        return _default_channels()
    if not isinstance(table, dict):
        raise ConfigError("channels", "must be a table of channel tables")
    channels = {}
    for name, policy in table.items():
        key = f"channels.{name}"
        if not isinstance(policy, dict) or set(policy) != {"read", "write"}:
            raise ConfigError(key, 'must be a table with exactly "read" and "write"')
        if not all(isinstance(v, str) for v in policy.values()):
            raise ConfigError(key, "read and write must be clearance level names")
        channels[name] = ChannelPolicy(read=policy["read"], write=policy["write"])
    return channels


def _validate(s: Settings) -> None:
    _require(0 <= s.server.port < 65536, "server.port", "must be between 0 (any free port) and 65535")
    _require(bool(s.server.allowed_origins), "server.allowed_origins",
             "must list at least one origin (an empty list would disable the origin check)")
    _require("*" not in s.server.allowed_origins, "server.allowed_origins",
             '"*" is not allowed; list each origin')
    _require((s.server.tls_cert is None) == (s.server.tls_key is None), "server.tls_cert",
             "tls_cert and tls_key must be set together")
    _require(s.server.max_packet_bytes >= 1024, "server.max_packet_bytes", "must be at least 1024")
    _require(s.server.max_buffered_bytes >= 4 * s.server.max_packet_bytes, "server.max_buffered_bytes",
             "must be at least four times max_packet_bytes")
    # Measured on 3.12 (bench/README.md); on 3.13 with uvloop and aiohttp 3.14 start-up fails.
    _require(not s.server.eager_tasks or sys.version_info[:2] == (3, 12), "server.eager_tasks",
             "needs Python 3.12 (asyncio.eager_task_factory; not yet working on 3.13 with uvloop)")
    _validate_auth(s.auth)
    if s.auth.mfa_required != DEFAULT_MFA_ROLES:  # a typo must not silently exempt a role
        for role in s.auth.mfa_required:
            _require(role in s.clearance.levels, "auth.mfa_required", f"unknown clearance level {role!r}")
    _require(bool(s.auth.mfa_issuer) and ":" not in s.auth.mfa_issuer, "auth.mfa_issuer",
             "must be a non-empty name without ':'")
    _validate_limits(s.limits)
    levels = s.clearance.levels
    _require(len(levels) > 0 and len(set(levels)) == len(levels), "clearance.levels",
             "must be a non-empty list of distinct names")
    for name, policy in s.channels.items():
        _require(_is_codename(name), f"channels.{name}", "channel names use A-Z a-z 0-9 _ . -")
        for which in ("read", "write"):
            _require(getattr(policy, which) in levels, f"channels.{name}.{which}",
                     f"unknown clearance level {getattr(policy, which)!r}")
    _require(s.storage.revocation_poll > 0, "storage.revocation_poll", "must be positive")
    _validate_cluster(s.cluster)
    _require(not s.storage.url or s.storage.url.startswith(("sqlite:///", "postgresql://", "postgres://")),
             "storage.url", "must start with sqlite:/// or postgresql://")


def _validate_auth(a: AuthSettings) -> None:
    _require(a.algorithm in ALGORITHMS, "auth.algorithm", f"must be one of {', '.join(ALGORITHMS)}")
    if a.algorithm.startswith("HS"):
        _require(a.secret is None or len(a.secret.encode()) >= 32, "auth.secret",
                 "an HMAC secret must be at least 32 bytes")
    else:
        _require(a.private_key is not None and a.public_key is not None, "auth.private_key",
                 f"{a.algorithm} needs private_key and public_key PEM files")
    _require(a.access_ttl >= 1, "auth.access_ttl", "must be at least 1 second")
    _require(a.refresh_ttl >= a.access_ttl, "auth.refresh_ttl", "must be at least access_ttl")
    _require(4 <= a.bcrypt_rounds <= 16, "auth.bcrypt_rounds", "must be between 4 and 16")
    _require(1 <= a.bcrypt_workers <= 64, "auth.bcrypt_workers", "must be between 1 and 64")
    _require(a.expiry_warning >= 0, "auth.expiry_warning", "must not be negative")
    _require(0 <= a.leeway <= 30, "auth.leeway", "must be between 0 and 30 seconds")
    # Longer windows give a thief with a copied token more time to race the owner unnoticed.
    _require(0 <= a.refresh_grace <= 60, "auth.refresh_grace", "must be between 0 and 60 seconds")
    _require(bool(a.issuer) and bool(a.audience), "auth.issuer", "issuer and audience must be set")


def _validate_cluster(c: ClusterSettings) -> None:
    # A heartbeat far below 0.1 s would keep Redis and the node busy for nothing.
    _require(0.1 <= c.presence_heartbeat <= 3600, "cluster.presence_heartbeat",
             "must be between 0.1 and 3600 seconds")
    # Not above the heartbeat: a live node's alive key would expire between two refreshes.
    _require(c.presence_heartbeat < c.presence_ttl <= 3600, "cluster.presence_ttl",
             "must be greater than presence_heartbeat and at most 3600 seconds")
    # Below a second it would be the per-second polling the routing design removed.
    _require(1 <= c.catch_up_interval <= 3600, "cluster.catch_up_interval", "must be between 1 and 3600 seconds")


def _validate_limits(lim: LimitsSettings) -> None:
    for name in ("login_failures_per_codename", "login_failures_per_address", "login_window",
                 "text_max_bytes", "events_burst", "login_body_max_bytes", "director_changes_burst"):
        _require(getattr(lim, name) >= 1, f"limits.{name}", "must be at least 1")
    for name in ("events_per_second", "director_changes_per_second"):
        _require(getattr(lim, name) > 0, f"limits.{name}", "must be positive")
    _require(1 <= lim.history_max <= 500, "limits.history_max", "must be between 1 and 500")


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


def _is_codename(name: str) -> bool:
    return 1 <= len(name) <= 64 and set(name) <= CODENAME_ALPHABET


def is_valid_codename(name: str) -> bool:
    """Codenames (and channel names) are 1-64 characters of ``A-Z a-z 0-9 _ . -``."""
    return _is_codename(name)
