"""Controller configuration: one frozen object read once from TOML, overridable by flags."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

DEFAULT_LISTEN_HOST = "127.0.0.1"
DEFAULT_LISTEN_PORT = 8080
DEFAULT_DATA_DIR = Path("polyfleet-data")
DEFAULT_POLL_INTERVAL_S = 60
DEFAULT_UNREACHABLE_AFTER_POLLS = 3
DEFAULT_LIVENESS_CHECK_S = 5.0
DEFAULT_ENROLL_CODE_TTL_S = 24 * 3600
#: How far into the future (by the controller's clock) a report's collection time may be;
#: a later one is stored with the time the controller received it, and its agent's clock is
#: shown as ahead.
DEFAULT_MAX_CLOCK_SKEW_S = 300.0
DEFAULT_JOB_LEASE_S = 600
DEFAULT_MAX_ARTIFACT_BYTES = 256 * 1024 * 1024
DEFAULT_SNAPSHOT_INTERVAL_S = 30.0
#: The journal size that forces a snapshot before the interval is up (a burst of reports, such
#: as agents emptying their outboxes after an outage). Replaying it after a crash runs at
#: about 115 MB/s (10,000 devices, measured), so this bounds a restart at ~2 s, while a
#: snapshot in a burst is obsolete within seconds and costs as much as encoding the whole state.
DEFAULT_JOURNAL_MAX_BYTES = 256 * 1024 * 1024
#: Longest wait between two attempts to write to a disk that refused a write.
DEFAULT_WRITE_RETRY_MAX_S = 30.0
DEFAULT_REPORT_HISTORY = 5
DEFAULT_HEALTH_HISTORY = 100
DEFAULT_EVENTS_KEEP = 10_000
DEFAULT_METRICS_REQUIRE_TOKEN = True
#: How long a request may take to arrive: its headers (from the connection's start or the
#: previous answer, which is also how long an idle connection is kept) and its body (this
#: plus the time its size takes at ``MIN_BODY_RATE``).
DEFAULT_READ_TIMEOUT_S = 60.0
#: Connections that have not yet shown a credential (new ones, enrollment, public metrics);
#: past this many, the oldest of them is closed.
DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS = 256
#: Failed credentials (bearer tokens, dashboard sign-ins) one client address may present a
#: minute before it is answered 429 (see controller/http/throttle.py).
DEFAULT_AUTH_FAILURES_PER_MINUTE = 20
#: Failed enrollment attempts (unknown, used or expired codes) one client address may make a
#: minute.
DEFAULT_ENROLL_ATTEMPTS_PER_MINUTE = 10
#: Audit log entries are kept this long (a little over a year: last year's audit included).
DEFAULT_AUDIT_RETENTION_DAYS = 400
#: Schemes of a PostgreSQL store URL (``[store] url``, ``--store-url``).
STORE_URL_SCHEMES = ("postgresql://", "postgres://")

#: Sections other features parse themselves; kept here as raw tables.
FEATURE_SECTIONS = (
    "entitlement",
    "tickets",
    "smtp",
    "webhook",
    "escalation_webhook",
    "web",
    "rollouts",
)


class ConfigError(ValueError):
    """A configuration file or value is wrong; the message names the file and the key."""


@dataclass(frozen=True, kw_only=True)
class ControllerConfig:
    """What the controller reads from ``controller.toml`` (deploy/controller.example.toml)."""

    listen_host: str = DEFAULT_LISTEN_HOST
    listen_port: int = DEFAULT_LISTEN_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_require_token: bool = DEFAULT_METRICS_REQUIRE_TOKEN
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    max_unauthenticated_connections: int = DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS
    auth_failures_per_minute: int = DEFAULT_AUTH_FAILURES_PER_MINUTE
    enroll_attempts_per_minute: int = DEFAULT_ENROLL_ATTEMPTS_PER_MINUTE
    #: The URL agents and admins reach this controller at, told to them by a standby
    #: (default: the URL of the listener as bound).
    advertise_url: str | None = None
    data_dir: Path = DEFAULT_DATA_DIR
    #: A PostgreSQL store (``postgresql://...``) instead of the embedded one in ``data_dir``.
    store_url: str | None = None
    snapshot_interval_s: float = DEFAULT_SNAPSHOT_INTERVAL_S
    journal_max_bytes: int = DEFAULT_JOURNAL_MAX_BYTES
    write_retry_max_s: float = DEFAULT_WRITE_RETRY_MAX_S
    report_history: int = DEFAULT_REPORT_HISTORY
    health_history: int = DEFAULT_HEALTH_HISTORY
    events_keep: int = DEFAULT_EVENTS_KEEP
    poll_interval_s: int = DEFAULT_POLL_INTERVAL_S
    unreachable_after_polls: int = DEFAULT_UNREACHABLE_AFTER_POLLS
    liveness_check_s: float = DEFAULT_LIVENESS_CHECK_S
    max_clock_skew_s: float = DEFAULT_MAX_CLOCK_SKEW_S
    enroll_code_ttl_s: int = DEFAULT_ENROLL_CODE_TTL_S
    job_lease_s: int = DEFAULT_JOB_LEASE_S
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    audit_retention_days: int = DEFAULT_AUDIT_RETENTION_DAYS
    #: Raw tables of ``[entitlement]``, ``[tickets]``, ``[smtp]``, ``[webhook]``, ``[web]``.
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: MappingProxyType({}))
    source: Path | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def silence_s(self) -> float:
        """How long without a mention before a device or agent counts as gone."""
        return float(self.poll_interval_s * self.unreachable_after_polls)

    def section(self, name: str) -> Mapping[str, Any]:
        """The raw table of a feature section (empty when absent)."""
        if name not in FEATURE_SECTIONS:
            raise KeyError(
                f"{name!r} is not a feature section; known: {', '.join(FEATURE_SECTIONS)}"
            )
        return self.sections.get(name, MappingProxyType({}))

    def with_overrides(
        self,
        *,
        data_dir: Path | None = None,
        listen: str | None = None,
        store_url: str | None = None,
    ) -> ControllerConfig:
        """The config with ``--data-dir``, ``--listen HOST:PORT`` and ``--store-url`` applied."""
        result = self
        if data_dir is not None:
            result = replace(result, data_dir=data_dir)
        if store_url is not None:
            result = replace(result, store_url=check_store_url(store_url, where="--store-url"))
        if listen is not None:
            host, port = parse_listen(listen, where="--listen")
            result = replace(result, listen_host=host, listen_port=port)
        return result


def parse_listen(text: str, *, where: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8080`` for IPv6); the error names ``where``."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{where}: expected HOST:PORT such as 127.0.0.1:8080, got {text!r}")
    return host, int(port_text)


def check_store_url(url: str, *, where: str) -> str:
    """``url`` if it names a PostgreSQL database; the error names ``where`` (never the password)."""
    if not url.startswith(STORE_URL_SCHEMES):
        raise ConfigError(
            f"{where}: a store URL starts with postgresql:// "
            "(e.g. postgresql://polyfleet@db.example.com/polyfleet)"
        )
    return url


def check_advertise_url(url: str, *, where: str) -> str:
    """``url`` if it is an http(s) URL, without a trailing slash."""
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise ConfigError(f"{where}: expected an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


# section -> key -> (field name, type); a plain table so the file format is readable in one place.
_KEYS: dict[str, dict[str, tuple[str, type]]] = {
    "server": {
        "listen": ("listen", str),
        "tls_cert": ("tls_cert", Path),
        "tls_key": ("tls_key", Path),
        "metrics_require_token": ("metrics_require_token", bool),
        "read_timeout_s": ("read_timeout_s", float),
        "max_unauthenticated_connections": ("max_unauthenticated_connections", int),
        "auth_failures_per_minute": ("auth_failures_per_minute", int),
        "enroll_attempts_per_minute": ("enroll_attempts_per_minute", int),
        "advertise_url": ("advertise_url", str),
    },
    "store": {
        "data_dir": ("data_dir", Path),
        "url": ("store_url", str),
        "snapshot_interval_s": ("snapshot_interval_s", float),
        "journal_max_bytes": ("journal_max_bytes", int),
        "write_retry_max_s": ("write_retry_max_s", float),
        "report_history": ("report_history", int),
        "health_history": ("health_history", int),
        "events_keep": ("events_keep", int),
    },
    "agents": {
        "poll_interval_s": ("poll_interval_s", int),
        "unreachable_after_polls": ("unreachable_after_polls", int),
        "liveness_check_s": ("liveness_check_s", float),
        "max_clock_skew_s": ("max_clock_skew_s", float),
        "enroll_code_ttl_s": ("enroll_code_ttl_s", int),
        "job_lease_s": ("job_lease_s", int),
        "max_artifact_bytes": ("max_artifact_bytes", int),
    },
    "audit": {
        "retention_days": ("audit_retention_days", int),
    },
}

_POSITIVE = {
    "read_timeout_s",
    "max_unauthenticated_connections",
    "auth_failures_per_minute",
    "enroll_attempts_per_minute",
    "snapshot_interval_s",
    "journal_max_bytes",
    "write_retry_max_s",
    "report_history",
    "health_history",
    "events_keep",
    "poll_interval_s",
    "unreachable_after_polls",
    "liveness_check_s",
    "max_clock_skew_s",
    "enroll_code_ttl_s",
    "job_lease_s",
    "max_artifact_bytes",
    "audit_retention_days",
}


def load_config(path: Path | None) -> ControllerConfig:
    """Read ``path`` (or the embedded defaults when None) into a validated config."""
    if path is None:
        return ControllerConfig()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return config_from_mapping(raw, source=path)


def config_from_mapping(raw: Mapping[str, Any], *, source: Path | None = None) -> ControllerConfig:
    """Validate a parsed TOML document; every error names the file and ``section.key``."""
    where = str(source) if source is not None else "<config>"
    values: dict[str, Any] = {}
    sections: dict[str, Mapping[str, Any]] = {}
    base = source.parent if source is not None else Path()
    for section_name, table in raw.items():
        if section_name in FEATURE_SECTIONS:
            if not isinstance(table, Mapping):
                raise ConfigError(f"{where}: [{section_name}] must be a table")
            sections[section_name] = MappingProxyType(dict(table))
            continue
        keys = _KEYS.get(section_name)
        if keys is None:
            known = ", ".join([*_KEYS, *FEATURE_SECTIONS])
            raise ConfigError(f"{where}: unknown section [{section_name}]; known sections: {known}")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: [{section_name}] must be a table")
        for key, value in table.items():
            spec = keys.get(key)
            if spec is None:
                raise ConfigError(
                    f"{where}: unknown key {section_name}.{key}; known keys: {', '.join(keys)}"
                )
            name, kind = spec
            values[name] = _coerce(value, kind, f"{where}: {section_name}.{key}", base)
            if name in _POSITIVE and values[name] <= 0:
                raise ConfigError(f"{where}: {section_name}.{key} must be positive, got {value!r}")
    listen = values.pop("listen", None)
    if listen is not None:
        values["listen_host"], values["listen_port"] = parse_listen(
            listen, where=f"{where}: server.listen"
        )
    if "store_url" in values:
        values["store_url"] = check_store_url(values["store_url"], where=f"{where}: store.url")
    if "advertise_url" in values:
        values["advertise_url"] = check_advertise_url(
            values["advertise_url"], where=f"{where}: server.advertise_url"
        )
    if (values.get("tls_cert") is None) != (values.get("tls_key") is None):
        raise ConfigError(f"{where}: server.tls_cert and server.tls_key must be set together")
    return ControllerConfig(**values, sections=MappingProxyType(sections), source=source)


def _coerce(value: Any, kind: type, where: str, base: Path) -> Any:
    if kind is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where} must be a non-empty path string, got {value!r}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else base / path
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value
