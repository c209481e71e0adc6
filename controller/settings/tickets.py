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
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

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
from polyfleet.controller.domain.language import Language
from polyfleet.shared.config import (
    ConfigError,
    ConfigModel,
    ConfigPath,
    KeyProblem,
    at_least,
    check,
    config_error,
)
from polyfleet.shared.schema import ProblemCode

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


class TicketConfigError(ConfigError):
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
    #: Hosts a unit tests its reach to when its plan includes remote diagnostics (H4): the
    #: controller, the SIP proxy, the Teams or Zoom edge the site depends on.
    network_test_targets: tuple[str, ...] = ()
    sent_retention: timedelta = timedelta(days=DEFAULT_SENT_RETENTION_DAYS)
    smtp: SmtpSettings | None = None
    webhook: WebhookSettings | None = None
    #: Escalations only, to the escalation contact (W7); never the desk's own webhook.
    escalation_webhook: WebhookSettings | None = None


# -- the file: [tickets], [smtp], [webhook], [escalation_webhook] -----------------------------

#: A host name or address a unit can ping: letters, digits, dots, dashes, colons.
_HOST = re.compile(r"[A-Za-z0-9.:-]{1,253}")


def _hosts(values: list[str]) -> list[str]:
    for value in values:
        if not _HOST.fullmatch(value):
            raise ValueError(f"{value!r} is not a host name or address")
    return values


#: An e-mail address as mail headers take it: one address, no display name, no spaces.
_ADDRESS = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+")


def _address(value: str) -> str:
    """An e-mail address: it goes into e-mail headers, so it is checked whole."""
    try:
        text = printable_text(value, field="address", max_chars=254)
    except AdminInputError as exc:
        raise ValueError(exc.reason) from None
    if not _ADDRESS.fullmatch(text):
        raise ValueError(f"{text!r} is not one e-mail address (like pomoc@myhezo.pl)")
    return text


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, not {value!r}")
    return value


def _problem_codes(value: list[str]) -> list[str]:
    known = [code.value for code in ProblemCode]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(
            f"unknown problem codes {', '.join(unknown)} (known: {', '.join(sorted(known))})"
        )
    return value


def _absent_when_empty(value: Any) -> Any:
    # An empty table is the same as none: ``[smtp]`` with every key commented out sends nothing.
    return None if value == {} else value


Text = Annotated[str, AfterValidator(_text)]
Address = Annotated[str, AfterValidator(_address)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
Seconds = Annotated[float, at_least(0)]
Count = Annotated[int, at_least(1)]


def _one_secret(table: ConfigModel, key: str) -> None:
    given = [
        name for name in (key, f"{key}_file", f"{key}_env") if getattr(table, name) is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give only one of {key}, {key}_file, {key}_env")


class TicketsSection(ConfigModel):
    """``[tickets]``: when a problem is a fault, where tickets go, how delivery retries."""

    enabled: bool = True
    language: Language = DEFAULT_LANGUAGE
    desk_email: Address = DEFAULT_DESK_EMAIL
    escalation_email: Address = DEFAULT_ESCALATION_EMAIL
    codes: Annotated[list[str], AfterValidator(_problem_codes)] = sorted(DEFAULT_TICKET_CODES)
    min_reports: Count = DEFAULT_MIN_REPORTS
    min_duration_s: Seconds = DEFAULT_MIN_DURATION.total_seconds()
    unreachable_min_duration_s: Seconds = DEFAULT_UNREACHABLE_MIN_DURATION.total_seconds()
    clear_after_s: Seconds = DEFAULT_CLEAR_AFTER.total_seconds()
    flap_window_s: Seconds = DEFAULT_FLAP_WINDOW.total_seconds()
    flap_count: Annotated[int, at_least(2)] = DEFAULT_FLAP_COUNT
    site_unreachable_ratio: float = DEFAULT_SITE_UNREACHABLE_RATIO
    site_min_devices: Count = DEFAULT_SITE_MIN_DEVICES
    retry_base_s: Seconds = DEFAULT_RETRY_BASE_S
    retry_max_s: Seconds = DEFAULT_RETRY_MAX_S
    max_attempts: Count = DEFAULT_MAX_ATTEMPTS
    max_attachment_bytes: Count = DEFAULT_MAX_ATTACHMENT_BYTES
    check_interval_s: Annotated[float, at_least(0.01)] = DEFAULT_CHECK_INTERVAL_S
    diagnostics_timeout_s: Seconds = DEFAULT_DIAGNOSTICS_TIMEOUT_S
    network_test_targets: Annotated[list[str], AfterValidator(_hosts)] = []
    sent_retention_days: Annotated[float, at_least(0)] = DEFAULT_SENT_RETENTION_DAYS

    @model_validator(mode="after")
    def _ratio(self) -> Self:
        if not 0 < self.site_unreachable_ratio < 1:
            raise KeyProblem(
                "site_unreachable_ratio",
                f"must be above 0 and below 1, not {self.site_unreachable_ratio!r}",
            )
        return self


class SmtpSection(ConfigModel):
    """``[smtp]``: e-mail to the desk."""

    host: Text = Field(description="the mail relay tickets are sent through")
    port: Count = DEFAULT_SMTP_PORT
    sender: Address = Field(alias="from", description="the address tickets are sent from")
    username: Text | None = None
    password: Text | None = None
    password_file: ConfigPath | None = None
    password_env: Text | None = None
    starttls: bool = True
    ca_file: ConfigPath | None = None
    timeout_s: Annotated[float, at_least(0.1)] = DEFAULT_TIMEOUT_S
    #: Name given in EHLO; the host name when absent.
    helo: Text | None = None

    @model_validator(mode="after")
    def _login(self) -> Self:
        _one_secret(self, "password")
        has_password = any(
            value is not None for value in (self.password, self.password_file, self.password_env)
        )
        if (self.username is None) == has_password:
            raise KeyProblem(
                "username", "must be given together with password, password_file or password_env"
            )
        if has_password and not self.starttls:
            # Never send a password in clear over the network.
            raise KeyProblem("starttls", "must be true when a password is configured")
        return self


class WebhookSection(ConfigModel):
    """``[webhook]`` and ``[escalation_webhook]``: signed JSON POSTs."""

    url: HttpUrl = Field(description="the receiver's http:// or https:// URL")
    secret: Text | None = None
    secret_file: ConfigPath | None = None
    secret_env: Text | None = None
    signature_header: Text = DEFAULT_SIGNATURE_HEADER
    ca_file: ConfigPath | None = None
    timeout_s: Annotated[float, at_least(0.1)] = DEFAULT_TIMEOUT_S
    max_bundle_bytes: Annotated[int, at_least(0)] = DEFAULT_WEBHOOK_BUNDLE_BYTES

    @model_validator(mode="after")
    def _secret(self) -> Self:
        _one_secret(self, "secret")
        if self.secret is None and self.secret_file is None and self.secret_env is None:
            raise KeyProblem("secret", "missing (or secret_file / secret_env)")
        return self


#: An empty table (``[webhook]`` with no keys) is the section left out.
EMPTY_IS_ABSENT = BeforeValidator(_absent_when_empty)


class TicketSections(ConfigModel):
    """The sections of ``controller.toml`` that tickets read."""

    tickets: TicketsSection = TicketsSection()
    smtp: Annotated[SmtpSection | None, EMPTY_IS_ABSENT] = None
    webhook: Annotated[WebhookSection | None, EMPTY_IS_ABSENT] = None
    #: Escalations only, to the escalation contact (W7); never the desk's own webhook.
    escalation_webhook: Annotated[WebhookSection | None, EMPTY_IS_ABSENT] = None

    @model_validator(mode="after")
    def _escalation_elsewhere(self) -> Self:
        if (
            self.webhook is not None
            and self.escalation_webhook is not None
            and self.webhook.url == self.escalation_webhook.url
        ):
            raise KeyProblem(
                "escalation_webhook.url",
                "must not be the desk's own webhook.url: an escalation goes to the escalation "
                "contact; "
                "give its receiver's URL (or leave [escalation_webhook] out)",
            )
        return self


#: The sections :func:`ticket_settings` reads.
TICKET_SECTIONS = tuple(TicketSections.model_fields)


def ticket_settings(
    sections: Mapping[str, Mapping[str, Any]],
    *,
    base: Path | None = None,
    env: Mapping[str, str] | None = None,
    source: str | Path | None = None,
) -> TicketSettings:
    """Validate the raw ``[tickets]``, ``[smtp]`` and ``[webhook]`` tables (of ``source``)."""
    env = os.environ if env is None else env
    given = {name: sections[name] for name in TICKET_SECTIONS if name in sections}
    try:
        checked = check(TicketSections, given, source=source, base=base)
    except ConfigError as exc:
        raise TicketConfigError(str(exc)) from None
    t = checked.tickets
    policy = FaultPolicy(
        min_reports=t.min_reports,
        min_duration=timedelta(seconds=t.min_duration_s),
        unreachable_min_duration=timedelta(seconds=t.unreachable_min_duration_s),
        clear_after=timedelta(seconds=t.clear_after_s),
        flap_window=timedelta(seconds=t.flap_window_s),
        flap_count=t.flap_count,
        site_unreachable_ratio=t.site_unreachable_ratio,
        site_min_devices=t.site_min_devices,
        ticket_codes=frozenset(t.codes),
    )
    return TicketSettings(
        enabled=t.enabled,
        language=t.language,
        desk_email=t.desk_email,
        escalation_email=t.escalation_email,
        policy=policy,
        retry_base=timedelta(seconds=t.retry_base_s),
        retry_max=timedelta(seconds=t.retry_max_s),
        max_attempts=t.max_attempts,
        max_attachment_bytes=t.max_attachment_bytes,
        check_interval_s=t.check_interval_s,
        diagnostics_timeout_s=t.diagnostics_timeout_s,
        network_test_targets=tuple(t.network_test_targets),
        sent_retention=timedelta(days=t.sent_retention_days),
        smtp=_smtp(checked.smtp, env, source),
        webhook=webhook_settings(checked.webhook, env, source, "webhook"),
        escalation_webhook=webhook_settings(
            checked.escalation_webhook, env, source, "escalation_webhook"
        ),
    )


def _secret(
    table: ConfigModel, key: str, env: Mapping[str, str], source: str | Path | None, section: str
) -> Secret | None:
    """``key`` inline, ``key_file`` (a file holding it) or ``key_env`` (a variable's name)."""
    inline: str | None = getattr(table, key)
    from_file: Path | None = getattr(table, f"{key}_file")
    env_name: str | None = getattr(table, f"{key}_env")
    if inline is not None:
        return Secret(inline)
    if from_file is not None:
        try:
            return Secret(from_file.read_text(encoding="utf-8").strip())
        except OSError as exc:
            problem = f"cannot read {from_file}: {exc.strerror}"
            raise _error(source, (section, f"{key}_file"), problem) from exc
    if env_name is not None:
        value = env.get(env_name)
        if not value:
            problem = f"environment variable {env_name} is not set"
            raise _error(source, (section, f"{key}_env"), problem)
        return Secret(value)
    return None


def _error(source: str | Path | None, loc: tuple[str, ...], problem: str) -> TicketConfigError:
    return TicketConfigError(str(config_error(source, loc, problem)))


def _smtp(
    table: SmtpSection | None, env: Mapping[str, str], source: str | Path | None
) -> SmtpSettings | None:
    if table is None:
        return None
    return SmtpSettings(
        host=table.host,
        port=table.port,
        username=table.username,
        password=_secret(table, "password", env, source, "smtp"),
        sender=table.sender,
        starttls=table.starttls,
        ca_file=table.ca_file,
        timeout_s=table.timeout_s,
        helo=table.helo or socket.gethostname(),
    )


def webhook_settings(
    table: WebhookSection | None, env: Mapping[str, str], source: str | Path | None, name: str
) -> WebhookSettings | None:
    if table is None:
        return None
    secret = _secret(table, "secret", env, source, name)
    assert secret is not None  # the section's validator requires one of the three
    return WebhookSettings(
        url=table.url,
        secret=secret,
        signature_header=table.signature_header,
        ca_file=table.ca_file,
        timeout_s=table.timeout_s,
        max_bundle_bytes=table.max_bundle_bytes,
    )
