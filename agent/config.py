"""The agent's frozen configuration, read once from TOML; errors name the file and the key."""

from __future__ import annotations

import ipaddress
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator

from polyfleet.shared.config import (
    ConfigModel,
    ConfigPath,
    at_least,
    between,
    check,
    config_error,
    read_toml,
)
from polyfleet.shared.errors import ConfigError, os_error_words
from polyfleet.shared.fingerprint import normalise_fingerprint

DEFAULT_POLL_INTERVAL_S = 60.0
DEFAULT_JITTER_S = 5.0
DEFAULT_CONCURRENCY = 50
DEFAULT_DEVICE_TIMEOUT_S = 30.0
DEFAULT_LOCKOUT_BACKOFF_S = 900.0
DEFAULT_LOCKOUT_BACKOFF_MAX_S = 4 * 3600.0
DEFAULT_REST_PORT = 443
DEFAULT_SSH_PORT = 22
DEFAULT_USER = "admin"
DEFAULT_DRIVER = "videoos"
DEFAULT_OUTBOX_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_OUTBOX_SEGMENT_BYTES = 1024 * 1024
DEFAULT_BATCH_SIZE = 200
DEFAULT_SEND_INTERVAL_S = 2.0
DEFAULT_JOBS_INTERVAL_S = 10.0
#: How often the room calendars of the site's units are read for the controller's plans.
DEFAULT_UPDATES_CALENDAR_INTERVAL_S = 900.0
#: How far ahead they are read (a rollout's next nights).
DEFAULT_UPDATES_CALENDAR_AHEAD_S = 3 * 86400.0
DEFAULT_BACKOFF_MAX_S = 300.0
#: How often reports the controller refused (device at another site...) are offered again.
DEFAULT_HELD_RETRY_S = 300.0
DEFAULT_HELD_MAX_BYTES = 16 * 1024 * 1024
#: Every this many REST polls, model/serial/firmware are checked over SSH too (0 = never).
DEFAULT_SSH_CROSS_CHECK_EVERY = 10
DEFAULT_CREDENTIAL_FILE = "credential.json"
#: Where ``agent run`` answers ``polyfleet agent status`` and metrics scrapes (loopback).
DEFAULT_STATUS_LISTEN = "127.0.0.1:9180"
#: The site update server: where devices fetch packages from, and its package cache.
DEFAULT_UPDATES_LISTEN = "127.0.0.1:0"
DEFAULT_UPDATES_CACHE_MAX_BYTES = 4 * 1024 * 1024 * 1024
#: How long a unit may take to come back from an update before it counts as not returned.
DEFAULT_UPDATES_RETURN_TIMEOUT_S = 1800.0
#: How often a unit in a call is looked at again before its update starts.
DEFAULT_UPDATES_CALL_RECHECK_S = 60.0


@dataclass(frozen=True, kw_only=True)
class Secret:
    """Where a password comes from: a file (owner-only mode) or an environment variable.

    The value is read when needed and never kept in the config object, so a
    config printed or logged cannot leak it.
    """

    file: Path | None = None
    env: str | None = None
    origin: str = ""

    def read(self) -> str:
        """The secret's value; raises ConfigError naming where it should have come from."""
        if self.file is not None:
            return read_secret_file(self.file, origin=self.origin)
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None or value == "":
                raise ConfigError(f"{self.origin}: environment variable {self.env} is not set")
            return value
        raise ConfigError(f"{self.origin}: no password_file or password_env given")

    def __repr__(self) -> str:
        return f"Secret(file={self.file!s}, env={self.env})"


def read_secret_file(path: Path, *, origin: str = "") -> str:
    """Read a password file; refuse one that group or others may read (like ssh does)."""
    where = f"{origin}: " if origin else ""
    try:
        info = path.stat()
    except OSError as exc:
        raise ConfigError(
            f"{where}cannot read password file {path}: {os_error_words(exc)}"
        ) from exc
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{where}password file {path} is readable by others "
            f"(mode {stat.S_IMODE(info.st_mode):o}); run: chmod 600 {path}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"{where}cannot read password file {path}: {os_error_words(exc)}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}password file {path} is not UTF-8 text") from exc
    value = text.rstrip("\r\n")
    if not value:
        raise ConfigError(f"{where}password file {path} is empty")
    return value


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    """One device the agent polls."""

    host: str
    rest_port: int = DEFAULT_REST_PORT
    ssh_port: int | None = DEFAULT_SSH_PORT
    user: str = DEFAULT_USER
    password: Secret
    driver: str = DEFAULT_DRIVER
    name: str = ""
    serial: str = ""
    tls_fingerprint: str | None = None
    ssh_fingerprint: str | None = None
    #: Log in to SSH with this private key instead of the password (where the unit allows it).
    ssh_key_file: Path | None = None
    #: Where this device was configured (``agent.toml: devices[2]``), for errors about it.
    origin: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        """Stable identity of this configured device: ``host:rest_port``."""
        return f"{self.host}:{self.rest_port}"


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Everything ``polyfleet agent run`` needs; build it directly or with :func:`load_config`."""

    data_dir: Path
    controller_url: str = ""
    #: Every controller to try (active and standbys), ``controller_url`` first.
    controller_urls: tuple[str, ...] = ()
    credential_file: Path | None = None
    enrollment_code: Secret | None = None
    controller_ca_file: Path | None = None
    agent_name: str = ""
    devices: tuple[DeviceConfig, ...] = ()
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    jitter_s: float = DEFAULT_JITTER_S
    concurrency: int = DEFAULT_CONCURRENCY
    device_timeout_s: float = DEFAULT_DEVICE_TIMEOUT_S
    lockout_backoff_s: float = DEFAULT_LOCKOUT_BACKOFF_S
    lockout_backoff_max_s: float = DEFAULT_LOCKOUT_BACKOFF_MAX_S
    trust_on_first_use: bool = True
    outbox_max_bytes: int = DEFAULT_OUTBOX_MAX_BYTES
    outbox_segment_bytes: int = DEFAULT_OUTBOX_SEGMENT_BYTES
    batch_size: int = DEFAULT_BATCH_SIZE
    send_interval_s: float = DEFAULT_SEND_INTERVAL_S
    jobs_interval_s: float = DEFAULT_JOBS_INTERVAL_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    held_retry_s: float = DEFAULT_HELD_RETRY_S
    held_max_bytes: int = DEFAULT_HELD_MAX_BYTES
    ssh_cross_check_every: int = DEFAULT_SSH_CROSS_CHECK_EVERY
    #: host:port the site update server listens on (HTTPS); port 0 lets the OS choose.
    updates_listen: str = DEFAULT_UPDATES_LISTEN
    #: The host devices reach the update server by (default: the listen host).
    updates_advertise: str = ""
    updates_cache_max_bytes: int = DEFAULT_UPDATES_CACHE_MAX_BYTES
    updates_return_timeout_s: float = DEFAULT_UPDATES_RETURN_TIMEOUT_S
    updates_call_recheck_s: float = DEFAULT_UPDATES_CALL_RECHECK_S
    updates_calendar_interval_s: float = DEFAULT_UPDATES_CALENDAR_INTERVAL_S
    updates_calendar_ahead_s: float = DEFAULT_UPDATES_CALENDAR_AHEAD_S
    #: HOST:PORT of the status and metrics listener (``""``: none); loopback is the point.
    status_listen: str = DEFAULT_STATUS_LISTEN
    #: Send to a plain http:// controller that is not on this machine (token and reports
    #: unencrypted); without it such a URL is refused. ``--allow-insecure-uplink`` sets it.
    allow_insecure_uplink: bool = False
    source: str = field(default="<built in code>", compare=False)

    @property
    def credential_path(self) -> Path:
        return self.credential_file or self.data_dir / DEFAULT_CREDENTIAL_FILE

    def check_uplink(self, url: str | None = None) -> str:
        """:func:`check_controller_url` for ``url`` (default: ``controller.url`` and every one of
        ``controller.urls``) by this config; the first warning."""
        if url is not None:
            return check_controller_url(url, allow_insecure=self.allow_insecure_uplink)
        warnings = [
            check_controller_url(
                target,
                allow_insecure=self.allow_insecure_uplink,
                where=f"{self.source}: controller.{'url' if index == 0 else 'urls'}",
            )
            for index, target in enumerate(self.controller_urls or (self.controller_url,))
            if target
        ]
        return next((warning for warning in warnings if warning), "")


#: Names that mean "this machine" without asking DNS.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``: traffic that never leaves this machine."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class InsecureUplinkRefused(ConfigError):
    """A plain http:// controller URL off this machine, not allowed by the admin."""


def check_controller_url(url: str, *, allow_insecure: bool, where: str = "controller URL") -> str:
    """Refuse a plain ``http://`` controller off this machine unless the admin allows it.

    Returns a warning to show (plain HTTP that is allowed: loopback, or by the admin's
    choice), ``""`` for https. Raises ConfigError naming ``where`` and the way out.
    """
    parts = urlsplit(url)
    if parts.scheme == "https":
        return ""
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"{where}: {url!r} is not an http:// or https:// URL")
    host = parts.hostname
    if is_loopback_host(host):
        return (
            f"the controller URL {url} is plain http://: the agent token and reports are "
            "unencrypted, acceptable only because the controller is on this machine"
        )
    if not allow_insecure:
        raise InsecureUplinkRefused(
            f"{where}: {url} is plain http:// to {host}, which is not this machine: the "
            "agent token and every report would cross the network unencrypted; use "
            "https:// (with controller.ca_file), or accept the risk with "
            "--allow-insecure-uplink (config: controller.allow_insecure_uplink = true)"
        )
    return (
        f"the controller URL {url} is plain http:// to {host}, allowed by "
        "allow_insecure_uplink: the agent token and reports cross the network unencrypted"
    )


# -- the file ------------------------------------------------------------------------------------


def _http_url(url: str) -> str:
    if url and not url.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, not {url!r}")
    return url


def _host_port(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 0.0.0.0:8443)")
    return text


def _status_listen(text: str) -> str:
    text = text.strip()
    if text in ("", "off"):
        return ""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f'{text!r} is not HOST:PORT (e.g. {DEFAULT_STATUS_LISTEN}), or "off"')
    return text


def _fingerprint(text: str) -> str:
    return normalise_fingerprint(text)


def _text(value: str) -> str:
    if not value:
        raise ValueError("missing")
    return value


Port = Annotated[int, between(1, 65535)]
#: 0 means "this device has no SSH".
SshPort = Annotated[int, between(0, 65535)]
Fingerprint = Annotated[str, AfterValidator(_fingerprint)]


class AgentTable(ConfigModel):
    """``[agent]``: where its state lives, how it polls."""

    data_dir: ConfigPath = Field(description="where the outbox and pins live")
    name: str = ""
    poll_interval_s: Annotated[float, at_least(0.05)] = DEFAULT_POLL_INTERVAL_S
    jitter_s: Annotated[float, at_least(0)] = DEFAULT_JITTER_S
    concurrency: Annotated[int, between(1, 10000)] = DEFAULT_CONCURRENCY
    device_timeout_s: Annotated[float, at_least(0.05)] = DEFAULT_DEVICE_TIMEOUT_S
    lockout_backoff_s: Annotated[float, at_least(0)] = DEFAULT_LOCKOUT_BACKOFF_S
    lockout_backoff_max_s: Annotated[float, at_least(0)] = DEFAULT_LOCKOUT_BACKOFF_MAX_S
    trust_on_first_use: bool = True
    ssh_cross_check_every: Annotated[int, between(0, 1_000_000)] = DEFAULT_SSH_CROSS_CHECK_EVERY
    status_listen: Annotated[str, AfterValidator(_status_listen)] = DEFAULT_STATUS_LISTEN


class ControllerTable(ConfigModel):
    """``[controller]``: where reports go, and how."""

    url: Annotated[str, AfterValidator(_http_url)] = ""
    #: Several controllers on one database: the agent moves to the one answering as active.
    urls: list[Annotated[str, AfterValidator(_http_url)]] = []
    credential_file: ConfigPath | None = None
    enrollment_code_env: str | None = None
    enrollment_code_file: ConfigPath | None = None
    ca_file: ConfigPath | None = None
    batch_size: Annotated[int, between(1, 500)] = DEFAULT_BATCH_SIZE
    send_interval_s: Annotated[float, at_least(0.01)] = DEFAULT_SEND_INTERVAL_S
    jobs_interval_s: Annotated[float, at_least(0.05)] = DEFAULT_JOBS_INTERVAL_S
    backoff_max_s: Annotated[float, at_least(0.05)] = DEFAULT_BACKOFF_MAX_S
    held_retry_s: Annotated[float, at_least(0.05)] = DEFAULT_HELD_RETRY_S
    allow_insecure_uplink: bool = False


class OutboxTable(ConfigModel):
    """``[outbox]``: how much the agent keeps while the controller is away."""

    max_bytes: Annotated[int, at_least(16 * 1024)] = DEFAULT_OUTBOX_MAX_BYTES
    segment_bytes: Annotated[int, at_least(4 * 1024)] = DEFAULT_OUTBOX_SEGMENT_BYTES
    held_max_bytes: Annotated[int, at_least(16 * 1024)] = DEFAULT_HELD_MAX_BYTES


class UpdatesTable(ConfigModel):
    """``[updates]``: the site update server devices fetch firmware from."""

    listen: Annotated[str, AfterValidator(_host_port)] = DEFAULT_UPDATES_LISTEN
    advertise: str = ""
    cache_max_bytes: Annotated[int, at_least(1024 * 1024)] = DEFAULT_UPDATES_CACHE_MAX_BYTES
    return_timeout_s: Annotated[float, at_least(0.05)] = DEFAULT_UPDATES_RETURN_TIMEOUT_S
    call_recheck_s: Annotated[float, at_least(0.01)] = DEFAULT_UPDATES_CALL_RECHECK_S
    calendar_interval_s: Annotated[float, at_least(0.05)] = DEFAULT_UPDATES_CALENDAR_INTERVAL_S
    calendar_ahead_s: Annotated[float, at_least(60.0)] = DEFAULT_UPDATES_CALENDAR_AHEAD_S


class DefaultsTable(ConfigModel):
    """``[defaults]``: what every ``[[devices]]`` entry has unless it says otherwise."""

    rest_port: Port = DEFAULT_REST_PORT
    ssh_port: SshPort = DEFAULT_SSH_PORT
    user: str = DEFAULT_USER
    driver: str = DEFAULT_DRIVER
    password_file: ConfigPath | None = None
    password_env: str | None = None


class DeviceTable(ConfigModel):
    """One ``[[devices]]`` entry."""

    host: Annotated[str, AfterValidator(_text)]
    rest_port: Port | None = None
    ssh_port: SshPort | None = None
    user: str | None = None
    driver: str | None = None
    password_file: ConfigPath | None = None
    password_env: str | None = None
    name: str = ""
    serial: str = ""
    tls_fingerprint: Fingerprint | None = None
    ssh_fingerprint: Fingerprint | None = None
    ssh_key_file: ConfigPath | None = None


class AgentFile(ConfigModel):
    """The whole of ``agent.toml`` (deploy/agent.example.toml)."""

    agent: AgentTable
    controller: ControllerTable = ControllerTable()
    outbox: OutboxTable = OutboxTable()
    updates: UpdatesTable = UpdatesTable()
    defaults: DefaultsTable = DefaultsTable()
    devices: list[DeviceTable] = []

    @model_validator(mode="before")
    @classmethod
    def _agent_table(cls, data: Any) -> Any:
        # Without [agent] the mistake to name is its one required key.
        if isinstance(data, dict) and "agent" not in data:
            return {**data, "agent": {}}
        return data


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read, validate and freeze an agent config file (keys: ``deploy/agent.example.toml``)."""
    file = Path(path)
    return parse_config(read_toml(file), source=str(file), base=file.resolve().parent)


def parse_config(raw: dict[str, Any], *, source: str, base: Path) -> AgentConfig:
    """Validate an already parsed TOML document (``source`` names it in errors)."""
    checked = check(AgentFile, raw, source=source, base=base)
    agent, controller, outbox, updates = (
        checked.agent,
        checked.controller,
        checked.outbox,
        checked.updates,
    )
    devices: list[DeviceConfig] = []
    seen: set[str] = set()
    for index, entry in enumerate(checked.devices):
        device = _device(entry, checked.defaults, source, index)
        if device.key in seen:
            raise config_error(source, ("devices", index, "host"), f"{device.key} is listed twice")
        seen.add(device.key)
        devices.append(device)

    enrollment: Secret | None = None
    if controller.enrollment_code_env is not None or controller.enrollment_code_file is not None:
        enrollment = Secret(
            file=controller.enrollment_code_file,
            env=controller.enrollment_code_env,
            origin=f"{source}: controller.enrollment_code",
        )
    every_url = tuple(dict.fromkeys(u.rstrip("/") for u in [controller.url, *controller.urls] if u))
    return AgentConfig(
        data_dir=agent.data_dir,
        controller_url=every_url[0] if every_url else "",
        controller_urls=every_url,
        credential_file=controller.credential_file,
        enrollment_code=enrollment,
        controller_ca_file=controller.ca_file,
        agent_name=agent.name,
        devices=tuple(devices),
        poll_interval_s=agent.poll_interval_s,
        jitter_s=agent.jitter_s,
        concurrency=agent.concurrency,
        device_timeout_s=agent.device_timeout_s,
        lockout_backoff_s=agent.lockout_backoff_s,
        lockout_backoff_max_s=agent.lockout_backoff_max_s,
        trust_on_first_use=agent.trust_on_first_use,
        outbox_max_bytes=outbox.max_bytes,
        outbox_segment_bytes=outbox.segment_bytes,
        batch_size=controller.batch_size,
        send_interval_s=controller.send_interval_s,
        jobs_interval_s=controller.jobs_interval_s,
        backoff_max_s=controller.backoff_max_s,
        held_retry_s=controller.held_retry_s,
        held_max_bytes=outbox.held_max_bytes,
        ssh_cross_check_every=agent.ssh_cross_check_every,
        updates_listen=updates.listen,
        updates_advertise=updates.advertise,
        updates_cache_max_bytes=updates.cache_max_bytes,
        updates_return_timeout_s=updates.return_timeout_s,
        updates_call_recheck_s=updates.call_recheck_s,
        updates_calendar_interval_s=updates.calendar_interval_s,
        updates_calendar_ahead_s=updates.calendar_ahead_s,
        allow_insecure_uplink=controller.allow_insecure_uplink,
        status_listen=agent.status_listen,
        source=source,
    )


def _device(entry: DeviceTable, defaults: DefaultsTable, source: str, index: int) -> DeviceConfig:
    """One ``[[devices]]`` entry with ``[defaults]`` filled in."""
    file, env = entry.password_file, entry.password_env
    if file is None and env is None:
        file, env = defaults.password_file, defaults.password_env
    where = ("devices", index, "password_file")
    if file is not None and env is not None:
        raise config_error(source, where, "give password_file or password_env, not both")
    if file is None and env is None:
        raise config_error(source, where, "missing (or set password_env)")
    ssh_port = defaults.ssh_port if entry.ssh_port is None else entry.ssh_port
    return DeviceConfig(
        host=entry.host,
        rest_port=defaults.rest_port if entry.rest_port is None else entry.rest_port,
        ssh_port=ssh_port or None,
        user=entry.user or defaults.user,
        password=Secret(file=file, env=env, origin=f"{source}: devices[{index}].password"),
        driver=entry.driver or defaults.driver,
        name=entry.name,
        serial=entry.serial,
        tls_fingerprint=entry.tls_fingerprint,
        ssh_fingerprint=entry.ssh_fingerprint,
        ssh_key_file=entry.ssh_key_file,
        origin=f"{source}: devices[{index}]",
    )
