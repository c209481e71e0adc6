"""The agent-controller wire protocol, version 1: one schema for encoding and validation."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
)

PROTOCOL_VERSION = 1
#: The protocol version a request names: the document lists the one this side speaks; the
#: controller refuses another with ``unsupported_protocol_version`` (checked before the model).
ProtocolVersion = Annotated[int, WithJsonSchema({"type": "integer", "enum": [PROTOCOL_VERSION]})]
#: Protocol versions the controller accepts.
SUPPORTED_PROTOCOL_VERSIONS = frozenset({1})
#: Most snapshots in one ``POST /api/v1/agent/reports``.
MAX_BATCH_SNAPSHOTS = 500
#: Largest request body the controller reads, in bytes.
MAX_BODY_BYTES = 8 * 1024 * 1024
#: A standby controller answers 503 with this error code, and names the active controller's
#: advertised URL in this header (absent while none is active): clients move there.
NOT_ACTIVE_CODE = "not_active"
ACTIVE_CONTROLLER_HEADER = "Polyfleet-Active-Controller"

Serial = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._\-]+$")
]
ShortText = Annotated[str, StringConstraints(max_length=256)]
ReportId = Annotated[
    str, StringConstraints(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9._:\-]+$")
]


class Model(StrEnum):
    STUDIO_X30 = "studio_x30"
    STUDIO_X50 = "studio_x50"
    STUDIO_X70 = "studio_x70"
    STUDIO_E70 = "studio_e70"
    G7500 = "g7500"
    UNKNOWN = "unknown"


class Provider(StrEnum):
    TEAMS = "teams"
    ZOOM = "zoom"
    POLY = "poly"
    DEVICE_MODE = "device_mode"
    UNKNOWN = "unknown"


class HealthState(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    FAULT = "fault"
    UNREACHABLE = "unreachable"


class ProblemCode(StrEnum):
    LAN_DOWN = "lan_down"
    CAMERA_DOWN = "camera_down"
    MICROPHONE_DOWN = "microphone_down"
    SIP_UNREGISTERED = "sip_unregistered"
    LOG_STORAGE_FULL = "log_storage_full"
    REBOOT_NEEDED = "reboot_needed"
    PERIPHERAL_DISCONNECTED = "peripheral_disconnected"
    API_ERROR = "api_error"
    AUTH_FAILED = "auth_failed"
    LOCKED_OUT = "locked_out"
    UNREACHABLE = "unreachable"
    CERTIFICATE_CHANGED = "certificate_changed"


#: How bad each problem is on its own (the device document's mapping table).
PROBLEM_SEVERITY: dict[ProblemCode, HealthState] = {
    ProblemCode.LAN_DOWN: HealthState.FAULT,
    ProblemCode.CAMERA_DOWN: HealthState.FAULT,
    ProblemCode.MICROPHONE_DOWN: HealthState.FAULT,
    ProblemCode.SIP_UNREGISTERED: HealthState.DEGRADED,
    ProblemCode.LOG_STORAGE_FULL: HealthState.DEGRADED,
    ProblemCode.REBOOT_NEEDED: HealthState.DEGRADED,
    ProblemCode.PERIPHERAL_DISCONNECTED: HealthState.DEGRADED,
    ProblemCode.API_ERROR: HealthState.FAULT,
    ProblemCode.AUTH_FAILED: HealthState.DEGRADED,
    ProblemCode.LOCKED_OUT: HealthState.DEGRADED,
    ProblemCode.UNREACHABLE: HealthState.UNREACHABLE,
    ProblemCode.CERTIFICATE_CHANGED: HealthState.DEGRADED,
}

#: Health states from best to worst (a room's colour is its worst device's state).
SEVERITY_ORDER = (HealthState.OK, HealthState.DEGRADED, HealthState.FAULT, HealthState.UNREACHABLE)


def worst_state(states: Iterable[HealthState]) -> HealthState:
    """The worst of several health states (ok < degraded < fault < unreachable)."""
    return max(states, key=SEVERITY_ORDER.index, default=HealthState.OK)


class Via(StrEnum):
    REST = "rest"
    SSH = "ssh"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Problem(_Strict):
    code: ProblemCode
    detail: ShortText = ""


class Health(_Strict):
    state: HealthState
    problems: list[Problem] = Field(default_factory=list, max_length=64)

    @classmethod
    def from_problems(cls, problems: list[Problem]) -> Health:
        """Health whose state is the worst severity among ``problems``."""
        state = worst_state([PROBLEM_SEVERITY[p.code] for p in problems])
        return cls(state=state, problems=problems)


class Firmware(_Strict):
    version: ShortText = ""
    build: ShortText = ""


class Peripheral(_Strict):
    kind: Literal["camera", "touch_controller", "microphone", "remote", "other"]
    model_raw: ShortText = ""
    serial: ShortText = ""
    firmware: ShortText = ""
    state: ShortText = ""


#: Most admin sessions one snapshot lists (real units have shown 8 at once).
MAX_ADMIN_SESSIONS = 64
SessionKey = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9]+$")
]


class AdminSession(_Strict):
    """One admin session open on a unit when it was read (``GET /rest/current/session/sessions``).

    ``key`` tells sessions apart without being one: a digest of the unit's session id, which
    is a credential and never leaves the agent. ``agent``: a session this agent opened (its
    poll's own, or one a crash left that it is closing). ``address``: the client's address
    as the unit saw it; ``since``: when it began, by the unit's clock (None: not said).
    """

    key: SessionKey
    user: Annotated[str, StringConstraints(max_length=128)] = ""
    role: Annotated[str, StringConstraints(max_length=64)] = ""
    address: Annotated[str, StringConstraints(max_length=64)] = ""
    kind: Literal["web", "ssh", "other"] = "other"
    since: AwareDatetime | None = None
    agent: bool = False


class Snapshot(_Strict):
    """What an agent saw of one device at one moment (``polyfleet agent probe --json``)."""

    serial: Serial
    model: Model
    model_raw: ShortText = ""
    system_name: ShortText = ""
    firmware: Firmware
    provider: Provider
    health: Health
    in_call: bool = False
    uptime_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    peripherals: list[Peripheral] = Field(default_factory=list, max_length=64)
    #: Set on a camera's own entry: the serial of the system it hangs off (E70).
    host_serial: Serial | None = None
    collected_at: AwareDatetime
    via: Via
    #: The unit's open admin sessions; None when not read (over SSH, on a camera's own
    #: entry, a firmware without the list, agents before this field).
    sessions: list[AdminSession] | None = Field(default=None, max_length=MAX_ADMIN_SESSIONS)


class Report(_Strict):
    """One snapshot with the agent's idempotency id: resending it stores it once."""

    id: ReportId
    snapshot: Snapshot


class AgentNotice(_Strict):
    """Something the agent wants the controller to know (e.g. what its full outbox dropped)."""

    kind: Literal[
        "outbox_dropped",
        "certificate_changed",
        "agent_started",
        "reports_held",
        "outbox_failing",
        "outbox_recovered",
    ]
    detail: ShortText = ""
    count: int = Field(default=0, ge=0)
    at: AwareDatetime


class AgentStatus(_Strict):
    """How the agent itself is doing when it sends a batch (shown on the dashboard)."""

    version: ShortText = ""
    #: Reports waiting in its outbox, this batch's included.
    outbox_reports: int = Field(default=0, ge=0)
    #: Reports the controller refused that it keeps aside (``polyfleet agent held``).
    held_reports: int = Field(default=0, ge=0)
    #: False while the disk refuses the outbox's writes (reports wait in memory meanwhile).
    outbox_disk_ok: bool = True
    #: What is wrong with the outbox and what the agent does about it, in words ("" if nothing).
    outbox_problem: ShortText = ""


class ReportBatch(_Strict):
    protocol_version: ProtocolVersion
    reports: list[Report] = Field(max_length=MAX_BATCH_SNAPSHOTS)
    notices: list[AgentNotice] = Field(default_factory=list, max_length=64)
    #: Optional: agents before this field send none.
    agent: AgentStatus | None = None


def reports_json(raw: bytes, batch: ReportBatch) -> list[dict[str, Any]]:
    """``batch.model_dump(mode="json")["reports"]``, read from ``raw`` (the body ``batch`` was
    validated from) wherever it is already written in that form.

    An agent sends its reports in exactly that form (every field, times in UTC as
    ``...:SSZ`` or ``...:SS.ffffffZ``), so parsing the body again is all most of a batch
    needs: half the cost of serialising the validated models in isolation, a fifth less
    under load, where both mostly wait on memory. Any report written otherwise (a field
    left to its default, a time with an offset, a number where the schema has a float, a
    value validation converted) is serialised from its model, as is the whole batch when
    the body does not parse the same way.
    """
    try:
        given = orjson.loads(raw)["reports"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        given = None
    if not isinstance(given, list) or len(given) != len(batch.reports):
        return batch.model_dump(mode="json")["reports"]  # type: ignore[no-any-return]
    return [
        report if _in_json_form(report) else model.model_dump(mode="json")
        for report, model in zip(given, batch.reports, strict=True)
    ]


_REPORT_FIELDS = len(Report.model_fields)
_SNAPSHOT_FIELDS = len(Snapshot.model_fields)
_FIRMWARE_FIELDS = len(Firmware.model_fields)
_HEALTH_FIELDS = len(Health.model_fields)
_PROBLEM_FIELDS = len(Problem.model_fields)
_PERIPHERAL_FIELDS = len(Peripheral.model_fields)
_SESSION_FIELDS = len(AdminSession.model_fields)


def _in_json_form(report: Any) -> bool:
    """Whether a parsed report (valid: the batch was validated) is as its model would dump it.

    Valid and with every field present (no extra ones are allowed), only these can differ:
    values validation converts (a bool or float given as something else) and times, whose
    dumped form is UTC with ``Z`` and six fractional digits when there are any.
    """
    snap = report["snapshot"]
    if len(report) != _REPORT_FIELDS or len(snap) != _SNAPSHOT_FIELDS:
        return False
    uptime = snap["uptime_s"]
    if type(snap["in_call"]) is not bool or (uptime is not None and type(uptime) is not float):
        return False
    health = snap["health"]
    if len(snap["firmware"]) != _FIRMWARE_FIELDS or len(health) != _HEALTH_FIELDS:
        return False
    for problem in health["problems"]:
        if len(problem) != _PROBLEM_FIELDS:
            return False
    for peripheral in snap["peripherals"]:
        if len(peripheral) != _PERIPHERAL_FIELDS:
            return False
    for session in snap["sessions"] or ():
        if len(session) != _SESSION_FIELDS or type(session["agent"]) is not bool:
            return False
        if session["since"] is not None and not _utc_text(session["since"]):
            return False
    return _utc_text(snap["collected_at"])


def _utc_text(text: Any) -> bool:
    """Whether a valid time is written as its model dumps it: UTC, ``Z``, micros if any."""
    if type(text) is not str:  # a number of seconds is a valid time too
        return False
    if len(text) == 20:
        return text[10] == "T" and text[19] == "Z"
    return (
        len(text) == 27
        and text[10] == "T"
        and text[19] == "."
        and text[26] == "Z"
        and text[20:26] != "000000"
    )


class RefusedReport(_Strict):
    """A report of a batch that the controller did not store, and why (the rest was)."""

    id: str = Field(max_length=128)
    serial: str = Field(max_length=64)
    #: Why, in one word: ``collected_too_early``, ``collected_too_late``,
    #: ``host_at_other_site``.
    code: str = Field(max_length=64)
    message: str = Field(max_length=2000)
    #: Where in the batch, e.g. ``reports.3.snapshot.collected_at``.
    field: str | None = Field(default=None, max_length=128)


class ReportBatchAck(BaseModel):
    """The controller's answer to a batch. Fields may be added: an agent ignores those it
    does not know (and a controller leaves out ``refused`` when it refused nothing)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    accepted: int
    duplicates: int
    #: Reports refused one by one; the others were stored (or were duplicates).
    refused: list[RefusedReport] = Field(default_factory=list)


class EnrollRequest(_Strict):
    protocol_version: ProtocolVersion
    code: Annotated[str, StringConstraints(min_length=8, max_length=128)]
    agent_name: ShortText = ""
    hostname: ShortText = ""


class EnrollResponse(_Strict):
    agent_id: str
    site_id: str
    token: str
    poll_interval_s: int


class JobKind(StrEnum):
    COLLECT_DIAGNOSTICS = "collect_diagnostics"
    REBOOT = "reboot"
    FIRMWARE_UPDATE = "firmware_update"


class Job(_Strict):
    id: str
    kind: JobKind
    serial: Serial
    params: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime


class JobList(_Strict):
    jobs: list[Job]


class FailureCode(StrEnum):
    """Why a job was not done, in one word the controller acts on (``detail`` is for people).

    One value per way a job ends unfinished on the agent: the controller decides from it
    what a failure means (the breaker, the penalty box, another attempt), never from words.
    """

    #: The agent has no such device (moved to another site?).
    NOT_AT_SITE = "not_at_site"
    #: Not something this agent or unit does (a job kind, a camera on its own).
    NOT_SUPPORTED = "not_supported"
    #: The unit does not answer; nothing was done to it.
    DEVICE_UNREACHABLE = "device_unreachable"
    #: The unit answers but refuses us (credentials, lock-out, a wedged API...).
    DEVICE_ERROR = "device_error"
    #: The unit was (or went) into a call: never disturbed.
    IN_CALL = "in_call"
    #: The package could not be fetched from the controller; the unit was not touched.
    DOWNLOAD_FAILED = "download_failed"
    #: The package fetched is not the one ordered (size or SHA-256); the unit was not touched.
    CHECKSUM_MISMATCH = "checksum_mismatch"
    #: After the order the unit answers with another TLS certificate: nothing it says is trusted.
    CERTIFICATE_CHANGED = "certificate_changed"
    #: After the order the unit did not come back in time (it may be bricked).
    DID_NOT_RETURN = "did_not_return"
    #: The unit came back saying its install failed, on its old version.
    INSTALL_FAILED = "install_failed"
    #: The unit came back but a check against the baseline failed (version, mode, A/V...).
    VERIFICATION_FAILED = "verification_failed"
    #: The job's artifact could not be uploaded to the controller.
    UPLOAD_FAILED = "upload_failed"
    #: The unit's room is booked over the whole time the update needs, until its window
    #: closes: not started (the meeting's start and end are in the job's evidence).
    ROOM_BOOKED = "room_booked"


class JobResult(_Strict):
    """Posted to ``/api/v1/agent/jobs/{id}/result``; a bundle goes to ``.../artifact`` first.

    ``code`` says why a job was not done (``failed`` or ``refused``). Agents before it send
    none, and the controller judges their results by their status as it always did; an
    agent sends it only when set, and again without it to a controller that refuses it
    by name (one from before it: models here forbid unknown fields).
    """

    status: Literal["done", "failed", "refused"]
    detail: ShortText = ""
    artifact_sha256: str | None = None
    code: FailureCode | None = None


class Meeting(_Strict):
    """One booked meeting of a room: when only (its subject never leaves the unit)."""

    start: AwareDatetime
    end: AwareDatetime


class JobProgress(_Strict):
    """Posted to ``/api/v1/agent/jobs/{id}/progress`` while a firmware update runs.

    ``settings``: the unit's own update settings, saved before the order (with
    ``installing``), so that an agent that finishes the job in another's place can put them
    back; ``meeting``: with ``postponed_booked``, the meeting waited out. Sent only when
    set; a controller from before them refuses them by name and then gets the progress
    without them.
    """

    status: Literal[
        "postponed_in_call", "postponed_booked", "downloading", "installing", "verifying"
    ]
    detail: ShortText = ""
    settings: dict[Annotated[str, StringConstraints(max_length=128)], ShortText] | None = Field(
        default=None, max_length=16
    )
    #: With ``postponed_booked``: the meeting the update waits out.
    meeting: Meeting | None = None


class RoomCalendarReport(_Strict):
    """What an agent read of one unit's room calendar between ``start`` and ``end``.

    ``state``: ``read`` (``meetings`` are all there are in that span), ``off`` (no calendar
    set up on the unit, or a firmware without one), ``unreadable`` (the unit or its
    calendar service could not say: ``detail`` says why).
    """

    serial: Serial
    state: Literal["read", "off", "unreadable"]
    detail: ShortText = ""
    read_at: AwareDatetime
    start: AwareDatetime
    end: AwareDatetime
    meetings: list[Meeting] = Field(default_factory=list, max_length=500)


class RoomCalendarBatch(_Strict):
    """Posted to ``/api/v1/agent/calendars``: the calendars an agent read, one per unit."""

    protocol_version: int
    calendars: list[RoomCalendarReport] = Field(max_length=MAX_BATCH_SNAPSHOTS)


class ErrorBody(_Strict):
    """Every 4xx/5xx from the controller: ``{"error": {...}}``."""

    code: str
    message: str
    field: str | None = None
