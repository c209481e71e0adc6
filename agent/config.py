"""The agent's frozen configuration, read once from TOML; errors name the file and the key."""

from __future__ import annotations

import ipaddress
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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


class _Table:
    """A TOML table read with type checks; every error names the file and the dotted key."""

    def __init__(self, data: dict[str, Any], *, source: str, prefix: str) -> None:
        self.data = data
        self.source = source
        self.prefix = prefix
        self.used: set[str] = set()

    def where(self, key: str) -> str:
        return f"{self.source}: {self.prefix}{key}"

    def _get(self, key: str, types: tuple[type, ...], what: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            return None
        value = self.data[key]
        if isinstance(value, bool) and bool not in types:
            raise ConfigError(f"{self.where(key)} must be {what}, not {value!r}")
        if not isinstance(value, types):
            raise ConfigError(f"{self.where(key)} must be {what}, not {value!r}")
        return value

    def text(self, key: str, default: str | None = None) -> str | None:
        value = self._get(key, (str,), "a string")
        return default if value is None else str(value)

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self._get(key, (int, float), "a number")
        if value is None:
            return default
        if float(value) < minimum:
            raise ConfigError(f"{self.where(key)} must be at least {minimum:g}, not {value!r}")
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int = 0, maximum: int = 2**62) -> int:
        value = self._get(key, (int,), "a whole number")
        if value is None:
            return default
        if not minimum <= int(value) <= maximum:
            raise ConfigError(
                f"{self.where(key)} must be between {minimum} and {maximum}, not {value!r}"
            )
        return int(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._get(key, (bool,), "true or false")
        return default if value is None else bool(value)

    def strings(self, key: str) -> list[str] | None:
        value = self._get(key, (list,), "a list of strings")
        if value is not None and not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{self.where(key)} must be a list of strings, not {value!r}")
        return None if value is None else [str(item) for item in value]

    def table(self, key: str) -> _Table:
        value = self._get(key, (dict,), "a table")
        return _Table(value or {}, source=self.source, prefix=f"{self.prefix}{key}.")

    def fingerprint(self, key: str) -> str | None:
        value = self.text(key)
        if value is None:
            return None
        try:
            return normalise_fingerprint(value)
        except ValueError as exc:
            raise ConfigError(f"{self.where(key)}: {exc}") from exc

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(
                f"{self.where(unknown[0])}: unknown key (known: {', '.join(sorted(self.used))})"
            )


def _secret(t: _Table, defaults: _Table | None, base: Path, origin: str) -> Secret:
    file_text = t.text("password_file")
    env = t.text("password_env")
    if file_text is None and env is None and defaults is not None:
        file_text = defaults.text("password_file")
        env = defaults.text("password_env")
    if file_text is not None and env is not None:
        raise ConfigError(
            f"{t.where('password_file')}: give password_file or password_env, not both"
        )
    if file_text is None and env is None:
        raise ConfigError(f"{t.where('password_file')}: missing (or set password_env)")
    path = None if file_text is None else _path(file_text, base)
    return Secret(file=path, env=env, origin=origin)


def _optional_path(text: str | None, base: Path) -> Path | None:
    return None if text is None else _path(text, base)


def _path(text: str, base: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Read, validate and freeze an agent config file (keys: ``deploy/agent.example.toml``)."""
    file = Path(path)
    source = str(file)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {os_error_words(exc)}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    return parse_config(raw, source=source, base=file.resolve().parent)


def parse_config(raw: dict[str, Any], *, source: str, base: Path) -> AgentConfig:
    """Validate an already parsed TOML document (``source`` names it in errors)."""
    root = _Table(raw, source=source, prefix="")
    agent = root.table("agent")
    controller = root.table("controller")
    outbox = root.table("outbox")
    updates = root.table("updates")
    defaults = root.table("defaults")
    devices_raw = root._get("devices", (list,), "an array of tables ([[devices]])") or []
    root.reject_unknown()

    data_dir_text = agent.text("data_dir")
    if data_dir_text is None:
        raise ConfigError(f"{agent.where('data_dir')}: missing (where the outbox and pins live)")
    data_dir = _path(data_dir_text, base)

    d_rest = defaults.integer("rest_port", DEFAULT_REST_PORT, minimum=1, maximum=65535)
    # ssh_port = 0 means "this device has no SSH".
    d_ssh = defaults.integer("ssh_port", DEFAULT_SSH_PORT, minimum=0, maximum=65535)
    d_user = defaults.text("user", DEFAULT_USER) or DEFAULT_USER
    d_driver = defaults.text("driver", DEFAULT_DRIVER) or DEFAULT_DRIVER

    devices: list[DeviceConfig] = []
    seen: set[str] = set()
    for index, item in enumerate(devices_raw):
        if not isinstance(item, dict):
            raise ConfigError(f"{source}: devices[{index}] must be a table")
        t = _Table(item, source=source, prefix=f"devices[{index}].")
        host = t.text("host")
        if not host:
            raise ConfigError(f"{t.where('host')}: missing")
        rest_port = t.integer("rest_port", d_rest, minimum=1, maximum=65535)
        ssh_port = t.integer("ssh_port", d_ssh, minimum=0, maximum=65535) or None
        device = DeviceConfig(
            host=host,
            rest_port=rest_port,
            ssh_port=ssh_port,
            user=t.text("user", d_user) or d_user,
            password=_secret(t, defaults, base, origin=f"{source}: {t.prefix}password"),
            driver=t.text("driver", d_driver) or d_driver,
            name=t.text("name", "") or "",
            serial=t.text("serial", "") or "",
            tls_fingerprint=t.fingerprint("tls_fingerprint"),
            ssh_fingerprint=t.fingerprint("ssh_fingerprint"),
            ssh_key_file=_optional_path(t.text("ssh_key_file"), base),
            origin=f"{source}: devices[{index}]",
        )
        t.reject_unknown()
        if device.key in seen:
            raise ConfigError(f"{t.where('host')}: {device.key} is listed twice")
        seen.add(device.key)
        devices.append(device)
    defaults.text("password_file")
    defaults.text("password_env")
    defaults.reject_unknown()

    code_env = controller.text("enrollment_code_env")
    code_file = controller.text("enrollment_code_file")
    enrollment: Secret | None = None
    if code_env is not None or code_file is not None:
        enrollment = Secret(
            file=None if code_file is None else _path(code_file, base),
            env=code_env,
            origin=f"{source}: controller.enrollment_code",
        )
    credential_text = controller.text("credential_file")
    ca_text = controller.text("ca_file")
    url = controller.text("url", "") or ""
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"{controller.where('url')}: must start with http:// or https://")
    # Several controllers on one database: the agent moves to the one answering as active.
    urls = controller.strings("urls") or []
    for other in urls:
        if not other.startswith(("http://", "https://")):
            raise ConfigError(
                f"{controller.where('urls')}: {other!r} must start with http:// or https://"
            )
    every_url = tuple(dict.fromkeys(u.rstrip("/") for u in [url, *urls] if u))

    config = AgentConfig(
        data_dir=data_dir,
        controller_url=every_url[0] if every_url else "",
        controller_urls=every_url,
        credential_file=None if credential_text is None else _path(credential_text, base),
        enrollment_code=enrollment,
        controller_ca_file=None if ca_text is None else _path(ca_text, base),
        agent_name=agent.text("name", "") or "",
        devices=tuple(devices),
        poll_interval_s=agent.number("poll_interval_s", DEFAULT_POLL_INTERVAL_S, minimum=0.05),
        jitter_s=agent.number("jitter_s", DEFAULT_JITTER_S),
        concurrency=agent.integer("concurrency", DEFAULT_CONCURRENCY, minimum=1, maximum=10000),
        device_timeout_s=agent.number("device_timeout_s", DEFAULT_DEVICE_TIMEOUT_S, minimum=0.05),
        lockout_backoff_s=agent.number("lockout_backoff_s", DEFAULT_LOCKOUT_BACKOFF_S),
        lockout_backoff_max_s=agent.number("lockout_backoff_max_s", DEFAULT_LOCKOUT_BACKOFF_MAX_S),
        trust_on_first_use=agent.flag("trust_on_first_use", True),
        outbox_max_bytes=outbox.integer("max_bytes", DEFAULT_OUTBOX_MAX_BYTES, minimum=16 * 1024),
        outbox_segment_bytes=outbox.integer(
            "segment_bytes", DEFAULT_OUTBOX_SEGMENT_BYTES, minimum=4 * 1024
        ),
        batch_size=controller.integer("batch_size", DEFAULT_BATCH_SIZE, minimum=1, maximum=500),
        send_interval_s=controller.number("send_interval_s", DEFAULT_SEND_INTERVAL_S, minimum=0.01),
        jobs_interval_s=controller.number("jobs_interval_s", DEFAULT_JOBS_INTERVAL_S, minimum=0.05),
        backoff_max_s=controller.number("backoff_max_s", DEFAULT_BACKOFF_MAX_S, minimum=0.05),
        held_retry_s=controller.number("held_retry_s", DEFAULT_HELD_RETRY_S, minimum=0.05),
        held_max_bytes=outbox.integer("held_max_bytes", DEFAULT_HELD_MAX_BYTES, minimum=16 * 1024),
        ssh_cross_check_every=agent.integer(
            "ssh_cross_check_every", DEFAULT_SSH_CROSS_CHECK_EVERY, minimum=0, maximum=1_000_000
        ),
        updates_listen=_listen(updates, "listen", DEFAULT_UPDATES_LISTEN),
        updates_advertise=updates.text("advertise", "") or "",
        updates_cache_max_bytes=updates.integer(
            "cache_max_bytes", DEFAULT_UPDATES_CACHE_MAX_BYTES, minimum=1024 * 1024
        ),
        updates_return_timeout_s=updates.number(
            "return_timeout_s", DEFAULT_UPDATES_RETURN_TIMEOUT_S, minimum=0.05
        ),
        updates_call_recheck_s=updates.number(
            "call_recheck_s", DEFAULT_UPDATES_CALL_RECHECK_S, minimum=0.01
        ),
        allow_insecure_uplink=controller.flag("allow_insecure_uplink", False),
        status_listen=_status_listen(agent),
        source=source,
    )
    for t in (agent, controller, outbox, updates):
        t.reject_unknown()
    return config


def _listen(table: _Table, key: str, default: str) -> str:
    text = table.text(key, default) or default
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{table.where(key)}: {text!r} is not HOST:PORT (e.g. 0.0.0.0:8443)")
    return text


def _status_listen(table: _Table, key: str = "status_listen") -> str:
    text = (table.text(key, DEFAULT_STATUS_LISTEN) or "").strip()
    if text in ("", "off"):
        return ""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            f"{table.where(key)}: {text!r} is not HOST:PORT (e.g. {DEFAULT_STATUS_LISTEN}), "
            'or "off"'
        )
    return text
