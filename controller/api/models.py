"""Pydantic shapes of the admin API's requests and answers (the OpenAPI document uses them)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema

from polyfleet.controller.domain.admin_input import NAME_MAX_CHARS, PRINTABLE_OR_EMPTY, NameText
from polyfleet.shared.schema import ErrorBody, Firmware, Health, JobKind, Peripheral, Serial


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorResponse(_Out):
    error: ErrorBody


#: A site's time zone: an IANA name (the inventory checks it; the document lists them).
TimezoneName = Annotated[
    str,
    Field(min_length=1, max_length=64),
    WithJsonSchema({"type": "string", "enum": sorted(available_timezones())}),
]


class SiteIn(_In):
    id: str = Field(min_length=1, max_length=64)
    # Checked by the inventory's name rules (empty: the id is the name), documented here.
    name: Annotated[
        str,
        Field(max_length=256),
        WithJsonSchema(
            {"type": "string", "maxLength": NAME_MAX_CHARS, "pattern": PRINTABLE_OR_EMPTY}
        ),
    ] = ""
    timezone: TimezoneName = "Europe/Warsaw"


class ContactIn(_In):
    """The fields of the authorised reporter to set ("" clears one; absent: unchanged)."""

    name: str | None = Field(default=None, max_length=256)
    phone: str | None = Field(default=None, max_length=256)
    email: str | None = Field(default=None, max_length=256)


class AddressIn(_In):
    """The fields of the RMA delivery address to set ("" clears one; absent: unchanged)."""

    street: str | None = Field(default=None, max_length=256)
    postal_code: str | None = Field(default=None, max_length=256)
    city: str | None = Field(default=None, max_length=256)
    country: str | None = Field(default=None, max_length=256)


class SitePatch(_In):
    """What changes: the name, the time zone, the authorised reporter (``contact``), the
    RMA ``delivery_address``, the ``admin_networks`` (the whole list), any of them."""

    # At least one of them not null (a null one is left as it is).
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": kind}}}
                for name, kind in (
                    ("name", "string"),
                    ("timezone", "string"),
                    ("contact", "object"),
                    ("delivery_address", "object"),
                    ("admin_networks", "array"),
                )
            ]
        },
    )

    name: NameText | None = None
    timezone: TimezoneName | None = None
    contact: ContactIn | None = None
    delivery_address: AddressIn | None = None
    admin_networks: list[str] | None = Field(default=None, max_length=256)


class ContactOut(_Out):
    name: str
    phone: str
    email: str


class AddressOut(_Out):
    street: str
    postal_code: str
    city: str
    country: str


class SiteOut(_Out):
    id: str
    name: str
    timezone: str
    agent_online: bool | None
    agents: int
    devices: int
    contact: ContactOut | None = Field(
        default=None, description="the authorised reporter the desk contacts (W2)"
    )
    delivery_address: AddressOut | None = Field(
        default=None, description="where replacement hardware is delivered (RMA)"
    )
    admin_networks: list[str] = Field(
        default_factory=list,
        description="networks admins sign in to the units from; other addresses are a "
        "security event",
    )
    ticket_fields_missing: list[str] = Field(
        default_factory=list,
        description="what tickets of this site are held for until it is set "
        "(contact_name, address_city...)",
    )


class SiteList(_Out):
    sites: list[SiteOut]


class DeviceOut(_Out):
    serial: str
    model: str
    provider: str
    firmware: Firmware
    health: Health
    site: str
    room: str | None
    system_name: str
    host_serial: str | None
    last_seen: str | None
    monitoring: Literal["polled", "not_monitored"] = Field(
        default="polled",
        description="polled: an agent reports it; not_monitored: a registered Poly product the "
        "agents do not poll, listed from the asset registry (health state not_monitored, no "
        "mode, firmware or report)",
    )


class DeviceList(_Out):
    devices: list[DeviceOut]
    total: int = Field(description="devices matching the filters, before offset and limit")


class HealthChange(_Out):
    at: str
    state: str
    problems: list[dict[str, Any]]


class DeviceDetail(DeviceOut):
    model_raw: str
    in_call: bool
    uptime_s: float | None
    via: str | None
    collected_at: str | None
    first_seen: str | None
    peripherals: list[Peripheral]
    cameras: list[str] = Field(description="serials of cameras (E70) hanging off this device")
    health_history: list[HealthChange]
    reports: list[str] = Field(description="ids of the retained reports, oldest first")
    entitlement: dict[str, Any] | None = Field(
        default=None,
        description="only for monitoring not_monitored: its verdict as "
        "GET /api/v1/devices/{serial}/entitlement gives it (without at); null when unjudged",
    )
    registry: dict[str, Any] | None = Field(
        default=None,
        description="only for monitoring not_monitored: the asset registry's facts (model as "
        "printed, purchase date, site, room, contracts) as GET /api/v1/assets lists them",
    )


class AdminSessionOut(_Out):
    user: str = Field(description="the unit's user name of the session (empty if not told)")
    role: str
    address: str = Field(description="the client's address as the unit saw it")
    kind: Literal["web", "ssh", "other"]
    since: str | None = Field(description="when the unit says the session started")
    first_seen: str | None = Field(description="when an agent's report first showed it")
    outside_admin_networks: bool = Field(
        description="its address is outside the site's admin networks (a security event "
        "admin_session.unexpected was recorded when it first appeared)"
    )


class AdminSessionList(_Out):
    serial: str
    read: bool = Field(
        description="false while no agent reported the unit's sessions (agent or firmware "
        "without the list, SSH polling): sessions is then empty without meaning none"
    )
    sessions: list[AdminSessionOut] = Field(
        description="other admins' sessions at the latest reading, oldest first; the agents' "
        "own never appear, and no session id is given out"
    )


class ReportOut(_Out):
    id: str
    serial: str
    site_id: str
    agent_id: str
    received_at: str
    snapshot: dict[str, Any]


class ReportList(_Out):
    reports: list[ReportOut]


class MoveIn(_In):
    site: str = Field(min_length=1, max_length=64)


class DevicePatch(_In):
    room: str | None = Field(default=None, max_length=256)


class EventOut(_Out):
    id: int
    kind: str
    at: str
    site_id: str | None
    serial: str | None
    data: dict[str, Any]


class EventList(_Out):
    events: list[EventOut]
    #: With ``after``: the cursor to ask with next (the last id returned, or ``after``).
    next: int | None = None


class AgentClock(_Out):
    state: Literal["ok", "ahead"] = Field(
        description="ahead: its reports were collected in the future by the controller's clock"
    )
    skew_s: float | None = Field(description="how far ahead, in seconds, when found")
    since: str | None


class TokenIn(_In):
    role: Literal["admin", "viewer"]
    name: str = Field(default="", max_length=256)
    expires_at: AwareDatetime | None = Field(
        default=None, description="when the token stops working (with offset); none: never"
    )


class TokenOut(_Out):
    id: str
    role: str
    name: str
    created_at: str
    expires_at: str | None = Field(default=None, description="when it stops working; none: never")
    expired: bool = False
    last_used_at: str | None = Field(default=None, description="its last use known, if any")


class TokenCreated(TokenOut):
    token: str = Field(description="shown once; only its sha256 is stored")


class TokenList(_Out):
    tokens: list[TokenOut]


class AgentOut(_Out):
    id: str
    site_id: str
    name: str
    hostname: str
    enrolled_at: str
    last_seen: str | None = Field(description="its last call (report, jobs poll) known")
    token_id: str | None = Field(description="id of its credential (never the secret)")
    clock: AgentClock


class AgentList(_Out):
    agents: list[AgentOut]


class InviteIn(_In):
    site: str = Field(min_length=1, max_length=64)


class InviteOut(_Out):
    code: str
    site: str
    expires_at: str


class JobIn(_In):
    kind: JobKind
    params: dict[str, Any] = Field(default_factory=dict)


class JobOut(_Out):
    id: str
    kind: str
    serial: Serial
    site_id: str
    params: dict[str, Any]
    status: str
    created_at: str
    created_by: str
    sent_at: str | None
    finished_at: str | None
    result: dict[str, Any] | None
    artifact: dict[str, Any] | None
    cancelled_by: str | None = Field(default=None, description="who cancelled it, if cancelled")


class JobOutList(_Out):
    jobs: list[JobOut]


class ArtifactOut(_Out):
    sha256: str
    size: int
    uploaded_at: str


class Ok(_Out):
    ok: bool


class AuditActor(_Out):
    name: str = Field(description="token name (or id), or the local OS user")
    role: str
    token_id: str | None


class AuditOrigin(_Out):
    via: Literal["http", "control_socket", "local_store"] = Field(
        description="http: over the network (address is the client); control_socket: a CLI "
        "command through the running server; local_store: a CLI command while none ran"
    )
    address: str | None
    user: str | None = Field(description="the local OS user, for commands on this machine")
    pid: int | None


class AuditEntry(_Out):
    id: int
    at: str
    action: str = Field(description="<object>.<verb>, e.g. token.revoke, device.move")
    target: str = Field(description="<kind>:<id>, e.g. device:X50-1")
    site: str | None
    details: dict[str, Any]
    actor: AuditActor
    origin: AuditOrigin


class AuditPage(_Out):
    entries: list[AuditEntry]
    more: bool = Field(description="more entries match: ask again with before (or after)")


class SignInLinkIn(_In):
    token_id: str = Field(min_length=1, max_length=64)


class SignInLinkOut(_Out):
    """A one-time dashboard sign-in link: open ``path`` on the controller's address."""

    path: str
    token_id: str
    expires_at: str
