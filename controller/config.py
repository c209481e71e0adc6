"""Controller configuration: one frozen object read once from TOML, overridable by flags."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Self

from pydantic import AfterValidator, model_validator

from polyfleet.controller.domain.rollout import MIN_WAVE_GAP, ROLLOUT_TICK_S
from polyfleet.controller.settings.security import SecuritySections
from polyfleet.controller.settings.tickets import TicketSections
from polyfleet.controller.settings.web import WebSettings
from polyfleet.shared.config import (
    ConfigModel,
    ConfigPath,
    KeyProblem,
    check,
    positive,
    read_toml,
)

# Callers catch config mistakes as this module's ConfigError: the one of the error tree.
from polyfleet.shared.errors import ConfigError as ConfigError

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
#: A comment line on an idle event stream this often, so proxies keep it open.
DEFAULT_EVENTS_STREAM_KEEPALIVE_S = 15.0
#: An event stream ends after this long; the client resumes with Last-Event-ID (bounds
#: what one forgotten client holds).
DEFAULT_EVENTS_STREAM_MAX_S = 3600.0
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

#: Sections read by their features (``ControllerConfig.section``): checked with the file, also
#: kept as raw tables.
FEATURE_SECTIONS = (
    "entitlement",
    "tickets",
    "smtp",
    "webhook",
    "escalation_webhook",
    "security_webhook",
    "web",
    "rollouts",
)


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
    events_stream_keepalive_s: float = DEFAULT_EVENTS_STREAM_KEEPALIVE_S
    events_stream_max_s: float = DEFAULT_EVENTS_STREAM_MAX_S
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
    try:
        return _split_listen(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_store_url(url: str, *, where: str) -> str:
    """``url`` if it names a PostgreSQL database; the error names ``where`` (never the password)."""
    try:
        return _store_url(url)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_advertise_url(url: str, *, where: str) -> str:
    """``url`` if it is an http(s) URL, without a trailing slash."""
    try:
        return _advertise_url(url)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _split_listen(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8080, got {text!r}")
    return host, int(port_text)


def _listen(text: str) -> str:
    _split_listen(text)
    return text


def _store_url(url: str) -> str:
    if not url.startswith(STORE_URL_SCHEMES):
        raise ValueError(
            "a store URL starts with postgresql:// "
            "(e.g. postgresql://polyfleet@db.example.com/polyfleet)"
        )
    return url


def _advertise_url(url: str) -> str:
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")


# -- the file: one table per section ------------------------------------------------------------

PositiveInt = Annotated[int, positive()]
PositiveFloat = Annotated[float, positive()]


class ServerSection(ConfigModel):
    """``[server]``: the listener, TLS and what it lets through."""

    listen: Annotated[str, AfterValidator(_listen)] = f"{DEFAULT_LISTEN_HOST}:{DEFAULT_LISTEN_PORT}"
    tls_cert: ConfigPath | None = None
    tls_key: ConfigPath | None = None
    metrics_require_token: bool = DEFAULT_METRICS_REQUIRE_TOKEN
    read_timeout_s: PositiveFloat = DEFAULT_READ_TIMEOUT_S
    max_unauthenticated_connections: PositiveInt = DEFAULT_MAX_UNAUTHENTICATED_CONNECTIONS
    auth_failures_per_minute: PositiveInt = DEFAULT_AUTH_FAILURES_PER_MINUTE
    enroll_attempts_per_minute: PositiveInt = DEFAULT_ENROLL_ATTEMPTS_PER_MINUTE
    advertise_url: Annotated[str, AfterValidator(_advertise_url)] | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if self.tls_cert is None and self.tls_key is not None:
            raise KeyProblem("tls_key", "must be set together with server.tls_cert")
        if self.tls_cert is not None and self.tls_key is None:
            raise KeyProblem("tls_cert", "must be set together with server.tls_key")
        return self


class StoreSection(ConfigModel):
    """``[store]``: where the state lives and how much of it is kept."""

    data_dir: ConfigPath = DEFAULT_DATA_DIR
    url: Annotated[str, AfterValidator(_store_url)] | None = None
    snapshot_interval_s: PositiveFloat = DEFAULT_SNAPSHOT_INTERVAL_S
    journal_max_bytes: PositiveInt = DEFAULT_JOURNAL_MAX_BYTES
    write_retry_max_s: PositiveFloat = DEFAULT_WRITE_RETRY_MAX_S
    report_history: PositiveInt = DEFAULT_REPORT_HISTORY
    health_history: PositiveInt = DEFAULT_HEALTH_HISTORY
    events_keep: PositiveInt = DEFAULT_EVENTS_KEEP


class AgentsSection(ConfigModel):
    """``[agents]``: what agents are told, and when silence means trouble."""

    poll_interval_s: PositiveInt = DEFAULT_POLL_INTERVAL_S
    unreachable_after_polls: PositiveInt = DEFAULT_UNREACHABLE_AFTER_POLLS
    liveness_check_s: PositiveFloat = DEFAULT_LIVENESS_CHECK_S
    max_clock_skew_s: PositiveFloat = DEFAULT_MAX_CLOCK_SKEW_S
    enroll_code_ttl_s: PositiveInt = DEFAULT_ENROLL_CODE_TTL_S
    job_lease_s: PositiveInt = DEFAULT_JOB_LEASE_S
    max_artifact_bytes: PositiveInt = DEFAULT_MAX_ARTIFACT_BYTES


class AuditSection(ConfigModel):
    """``[audit]``."""

    retention_days: PositiveInt = DEFAULT_AUDIT_RETENTION_DAYS


class EntitlementSection(ConfigModel):
    """``[entitlement]``: other plan and release catalogue files (default: the shipped ones)."""

    plans: str | None = None
    releases: str | None = None


class RolloutsSection(ConfigModel):
    """``[rollouts]``."""

    tick_s: PositiveFloat = ROLLOUT_TICK_S
    #: The shortest time between two waves a plan may ask for.
    min_wave_gap_s: PositiveFloat = MIN_WAVE_GAP.total_seconds()
    #: A unit back on its new version this long while its job's agent is silent: the job
    #: is handed out again (instead of waiting for ``[agents] job_lease_s``).
    reassign_after_s: PositiveFloat = 60.0


class ControllerFile(TicketSections, SecuritySections):
    """The whole of ``controller.toml``; the ticket sections come from :class:`TicketSections`,
    ``[security_webhook]`` from :class:`SecuritySections`."""

    server: ServerSection = ServerSection()
    store: StoreSection = StoreSection()
    agents: AgentsSection = AgentsSection()
    audit: AuditSection = AuditSection()
    entitlement: EntitlementSection = EntitlementSection()
    rollouts: RolloutsSection = RolloutsSection()
    web: WebSettings = WebSettings()


def load_config(path: Path | None) -> ControllerConfig:
    """Read ``path`` (or the embedded defaults when None) into a validated config."""
    if path is None:
        return ControllerConfig()
    return config_from_mapping(read_toml(path), source=path)


def config_from_mapping(raw: Mapping[str, Any], *, source: Path | None = None) -> ControllerConfig:
    """Validate a parsed TOML document; every error names the file and ``section.key``."""
    where = source if source is not None else "<config>"
    base = source.parent if source is not None else Path()
    file = check(ControllerFile, raw, source=where, base=base)
    server, store, agents = file.server, file.store, file.agents
    host, port = _split_listen(server.listen)
    sections = {name: MappingProxyType(dict(raw[name])) for name in FEATURE_SECTIONS if name in raw}
    return ControllerConfig(
        listen_host=host,
        listen_port=port,
        store_url=store.url,
        audit_retention_days=file.audit.retention_days,
        # Every other key of [server], [store] and [agents] is the config field of its name.
        **server.model_dump(exclude={"listen"}),
        **store.model_dump(exclude={"url"}),
        **agents.model_dump(),
        sections=MappingProxyType(sections),
        source=source,
    )
