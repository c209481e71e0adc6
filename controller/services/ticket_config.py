"""Settings of fault tickets and their delivery: ``[tickets]``, ``[smtp]``, ``[webhook]``,
``[escalation_webhook]``."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from polyfleet.controller.domain.admin_input import AdminInputError, printable_text
from polyfleet.controller.domain.faults import (
    DEFAULT_CLEAR_AFTER,
    DEFAULT_FLAP_COUNT,
    DEFAULT_FLAP_WINDOW,
    DEFAULT_MIN_DURATION,
    DEFAULT_MIN_REPORTS,
    DEFAULT_SITE_MIN_DEVICES,
    DEFAULT_SITE_UNREACHABLE_RATIO,
    DEFAULT_TICKET_CODES,
    DEFAULT_UNREACHABLE_MIN_DURATION,
    FaultPolicy,
)
from polyfleet.controller.domain.tickets import LANGUAGES, Language

#: W7: the desk's e-mail and the escalation contact.
DEFAULT_DESK_EMAIL = "pomoc@myhezo.pl"
DEFAULT_ESCALATION_EMAIL = "escalation@myhezo.pl"
DEFAULT_LANGUAGE: Language = "en"
DEFAULT_SMTP_PORT = 587
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRY_BASE_S = 30.0
DEFAULT_RETRY_MAX_S = 3600.0
DEFAULT_MAX_ATTEMPTS = 50
DEFAULT_MAX_ATTACHMENT_BYTES = 20 * 1024 * 1024
DEFAULT_WEBHOOK_BUNDLE_BYTES = 2 * 1024 * 1024
DEFAULT_CHECK_INTERVAL_S = 30.0
DEFAULT_DIAGNOSTICS_TIMEOUT_S = 300.0
DEFAULT_SIGNATURE_HEADER = "X-Polyfleet-Signature"
#: Records of delivered (or given-up) messages of finished tickets are kept this long.
DEFAULT_SENT_RETENTION_DAYS = 90.0


class TicketConfigError(ValueError):
    """A ticket setting is wrong; the message names ``section.key`` and the fix."""


class Secret:
    """A password or key that never shows in logs, reprs or stored documents."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, kw_only=True)
class SmtpSettings:
    host: str
    port: int = DEFAULT_SMTP_PORT
    username: str | None = None
    password: Secret | None = field(default=None, repr=False)
    sender: str
    starttls: bool = True
    ca_file: Path | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    #: Name given in EHLO; the host name, never a DNS lookup (which can hang offline).
    helo: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    url: str
    secret: Secret = field(repr=False)
    signature_header: str = DEFAULT_SIGNATURE_HEADER
    ca_file: Path | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_bundle_bytes: int = DEFAULT_WEBHOOK_BUNDLE_BYTES


@dataclass(frozen=True, kw_only=True)
class TicketSettings:
    """Everything tickets need from the config; built once by ``ticket_settings``."""

    enabled: bool = True
    language: Language = DEFAULT_LANGUAGE
    desk_email: str = DEFAULT_DESK_EMAIL
    escalation_email: str = DEFAULT_ESCALATION_EMAIL
    policy: FaultPolicy = field(default_factory=FaultPolicy)
    retry_base: timedelta = timedelta(seconds=DEFAULT_RETRY_BASE_S)
    retry_max: timedelta = timedelta(seconds=DEFAULT_RETRY_MAX_S)
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES
    check_interval_s: float = DEFAULT_CHECK_INTERVAL_S
    diagnostics_timeout_s: float = DEFAULT_DIAGNOSTICS_TIMEOUT_S
    sent_retention: timedelta = timedelta(days=DEFAULT_SENT_RETENTION_DAYS)
    smtp: SmtpSettings | None = None
    webhook: WebhookSettings | None = None
    #: Escalations only, to the escalation contact (W7); never the desk's own webhook.
    escalation_webhook: WebhookSettings | None = None


class _Table:
    """Typed reads from one raw TOML table; errors name ``section.key``; unknown keys refused."""

    def __init__(self, name: str, raw: Mapping[str, Any], base: Path) -> None:
        self.name = name
        self.raw = raw
        self.base = base
        self.used: set[str] = set()

    def _get(self, key: str) -> Any:
        self.used.add(key)
        return self.raw.get(key)

    def where(self, key: str) -> str:
        return f"{self.name}.{key}"

    def str_(self, key: str, default: str | None = None) -> str | None:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value.strip():
            raise TicketConfigError(f"{self.where(key)} must be a non-empty string, got {value!r}")
        return value.strip()

    def int_(self, key: str, default: int, *, minimum: int = 1) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise TicketConfigError(f"{self.where(key)} must be an integer >= {minimum}")
        return value

    def float_(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise TicketConfigError(f"{self.where(key)} must be a number >= {minimum}")
        return float(value)

    def bool_(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise TicketConfigError(f"{self.where(key)} must be true or false")
        return value

    def path(self, key: str) -> Path | None:
        text = self.str_(key)
        if text is None:
            return None
        path = Path(text).expanduser()
        return path if path.is_absolute() else self.base / path

    def secret(self, key: str, env: Mapping[str, str]) -> Secret | None:
        """``key`` inline, ``key_file`` (a file holding it) or ``key_env`` (a variable's name)."""
        inline = self.str_(key)
        from_file = self.path(f"{key}_file")
        env_name = self.str_(f"{key}_env")
        given = [x for x in (inline, from_file, env_name) if x is not None]
        if len(given) > 1:
            raise TicketConfigError(f"{self.name}: give only one of {key}, {key}_file, {key}_env")
        if inline is not None:
            return Secret(inline)
        if from_file is not None:
            try:
                return Secret(from_file.read_text(encoding="utf-8").strip())
            except OSError as exc:
                raise TicketConfigError(
                    f"{self.where(key + '_file')}: cannot read {from_file}: {exc.strerror}"
                ) from exc
        if env_name is not None:
            value = env.get(env_name)
            if not value:
                raise TicketConfigError(
                    f"{self.where(key + '_env')}: environment variable {env_name} is not set"
                )
            return Secret(value)
        return None

    def check_unknown(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise TicketConfigError(
                f"{self.name}: unknown key(s) {', '.join(unknown)}; known: "
                + ", ".join(sorted(self.used))
            )


#: An e-mail address as mail headers take it: one address, no display name, no spaces.
_ADDRESS = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+")


def _address(table: _Table, key: str, default: str | None) -> str | None:
    """An e-mail address from ``key``: it goes into e-mail headers, so it is checked whole."""
    value = table.str_(key, default)
    if value is None:
        return None
    try:
        text = printable_text(value, field=table.where(key), max_chars=254)
    except AdminInputError as exc:
        raise TicketConfigError(str(exc)) from None
    if not _ADDRESS.fullmatch(text):
        raise TicketConfigError(
            f"{table.where(key)}: {text!r} is not one e-mail address (like pomoc@myhezo.pl)"
        )
    return text


def _seconds(table: _Table, key: str, default: timedelta) -> timedelta:
    return timedelta(seconds=table.float_(key, default.total_seconds()))


def ticket_settings(
    sections: Mapping[str, Mapping[str, Any]],
    *,
    base: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> TicketSettings:
    """Validate the raw ``[tickets]``, ``[smtp]`` and ``[webhook]`` tables."""
    base = base or Path()
    env = os.environ if env is None else env
    t = _Table("tickets", sections.get("tickets", {}), base)
    language = t.str_("language", DEFAULT_LANGUAGE)
    if language not in LANGUAGES:
        raise TicketConfigError(f"tickets.language must be one of {', '.join(LANGUAGES)}")
    codes_raw = t._get("codes")
    codes = DEFAULT_TICKET_CODES
    if codes_raw is not None:
        if not isinstance(codes_raw, list) or not all(isinstance(c, str) for c in codes_raw):
            raise TicketConfigError("tickets.codes must be a list of problem codes")
        codes = frozenset(codes_raw)
    try:
        policy = FaultPolicy(
            min_reports=t.int_("min_reports", DEFAULT_MIN_REPORTS),
            min_duration=_seconds(t, "min_duration_s", DEFAULT_MIN_DURATION),
            unreachable_min_duration=_seconds(
                t, "unreachable_min_duration_s", DEFAULT_UNREACHABLE_MIN_DURATION
            ),
            clear_after=_seconds(t, "clear_after_s", DEFAULT_CLEAR_AFTER),
            flap_window=_seconds(t, "flap_window_s", DEFAULT_FLAP_WINDOW),
            flap_count=t.int_("flap_count", DEFAULT_FLAP_COUNT, minimum=2),
            site_unreachable_ratio=t.float_(
                "site_unreachable_ratio", DEFAULT_SITE_UNREACHABLE_RATIO
            ),
            site_min_devices=t.int_("site_min_devices", DEFAULT_SITE_MIN_DEVICES),
            ticket_codes=codes,
        )
    except ValueError as exc:
        raise TicketConfigError(f"tickets.{exc}") from exc
    settings = TicketSettings(
        enabled=t.bool_("enabled", True),
        language=language,
        desk_email=_address(t, "desk_email", DEFAULT_DESK_EMAIL) or DEFAULT_DESK_EMAIL,
        escalation_email=_address(t, "escalation_email", DEFAULT_ESCALATION_EMAIL)
        or DEFAULT_ESCALATION_EMAIL,
        policy=policy,
        retry_base=_seconds(t, "retry_base_s", timedelta(seconds=DEFAULT_RETRY_BASE_S)),
        retry_max=_seconds(t, "retry_max_s", timedelta(seconds=DEFAULT_RETRY_MAX_S)),
        max_attempts=t.int_("max_attempts", DEFAULT_MAX_ATTEMPTS),
        max_attachment_bytes=t.int_("max_attachment_bytes", DEFAULT_MAX_ATTACHMENT_BYTES),
        check_interval_s=t.float_("check_interval_s", DEFAULT_CHECK_INTERVAL_S, minimum=0.01),
        diagnostics_timeout_s=t.float_(
            "diagnostics_timeout_s", DEFAULT_DIAGNOSTICS_TIMEOUT_S, minimum=0.0
        ),
        sent_retention=timedelta(
            days=t.float_("sent_retention_days", DEFAULT_SENT_RETENTION_DAYS, minimum=0.0)
        ),
        smtp=_smtp(sections.get("smtp"), base, env),
        webhook=_webhook(sections.get("webhook"), base, env),
        escalation_webhook=_webhook(
            sections.get("escalation_webhook"), base, env, name="escalation_webhook"
        ),
    )
    t.check_unknown()
    if (
        settings.webhook is not None
        and settings.escalation_webhook is not None
        and settings.webhook.url == settings.escalation_webhook.url
    ):
        raise TicketConfigError(
            "escalation_webhook.url is the desk's own webhook.url: an escalation goes to the "
            "escalation contact; give its receiver's URL (or leave [escalation_webhook] out)"
        )
    return settings


def _smtp(raw: Mapping[str, Any] | None, base: Path, env: Mapping[str, str]) -> SmtpSettings | None:
    if not raw:
        return None
    s = _Table("smtp", raw, base)
    host = s.str_("host")
    sender = _address(s, "from", None)
    if host is None:
        raise TicketConfigError("smtp.host is required when [smtp] is present")
    if sender is None:
        raise TicketConfigError("smtp.from is required: the address tickets are sent from")
    username = s.str_("username")
    password = s.secret("password", env)
    if (username is None) != (password is None):
        raise TicketConfigError("smtp.username and smtp.password must be given together")
    settings = SmtpSettings(
        host=host,
        port=s.int_("port", DEFAULT_SMTP_PORT),
        username=username,
        password=password,
        sender=sender,
        starttls=s.bool_("starttls", True),
        ca_file=s.path("ca_file"),
        timeout_s=s.float_("timeout_s", DEFAULT_TIMEOUT_S, minimum=0.1),
        helo=s.str_("helo") or socket.gethostname(),
    )
    if settings.password is not None and not settings.starttls:
        # Never send a password in clear over the network.
        raise TicketConfigError("smtp.starttls must be true when a password is configured")
    s.check_unknown()
    return settings


def _webhook(
    raw: Mapping[str, Any] | None,
    base: Path,
    env: Mapping[str, str],
    *,
    name: str = "webhook",
) -> WebhookSettings | None:
    if not raw:
        return None
    w = _Table(name, raw, base)
    url = w.str_("url")
    if url is None or not url.startswith(("http://", "https://")):
        raise TicketConfigError(f"{name}.url must be an http:// or https:// URL")
    secret = w.secret("secret", env)
    if secret is None:
        raise TicketConfigError(f"{name}.secret (or secret_file / secret_env) is required")
    settings = WebhookSettings(
        url=url,
        secret=secret,
        signature_header=w.str_("signature_header", DEFAULT_SIGNATURE_HEADER)
        or DEFAULT_SIGNATURE_HEADER,
        ca_file=w.path("ca_file"),
        timeout_s=w.float_("timeout_s", DEFAULT_TIMEOUT_S, minimum=0.1),
        max_bundle_bytes=w.int_("max_bundle_bytes", DEFAULT_WEBHOOK_BUNDLE_BYTES, minimum=0),
    )
    w.check_unknown()
    return settings
