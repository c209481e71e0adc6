"""Firmware rollout planning: devices, catalogues, contracts and now in; waves, hops, reasons out.

A plan puts every device in scope into one of three states:

- ``planned``: it gets a wave and a window (site time), and one hop per catalogue step from
  its installed version to the target (E7), each placed in the window one after another
  (``hop_length`` apart, elapsed time) and judged for entitlement at its own install moment
  (S3, S4); hops that no longer fit in the night's window go to the next night's. Teams
  mode units are planned too, as ``teams_admin_center``: the rollout tracks and verifies
  them, it never orders them.
- ``held``: it could be updated but not now (open ticket, unhealthy, unreachable, penalty
  box, or no entitled moment in any wave): no wave.
- ``excluded``: it will not be updated by this rollout (already current, no path, an E70
  that follows its host, or the admin said so): no wave.

Wave 0 is the canary: per site, the healthiest devices of the most common model and mode
among those the rollout will really update on the canary night (an agent's unit entitled
then). The other waves take cumulative shares of each site's remaining devices
(``10%,50%,100%``). A device not entitled in its wave moves (S4): to the latest earlier
wave still inside its entitlement, the canary wave included; else, when its contract
starts later, to the first later wave inside it; its entry says so in ``notes``.

Windows are judged night by night in each site's zone (``rollout_windows``): a window that
is shortened or does not exist on a night (clock changes) or is already over is said in
its wave's ``notes`` and moved to the next moment that exists.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from enum import StrEnum
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo

from polyfleet.controller.domain.assets import Asset
from polyfleet.controller.domain.calendar import moment_text, warsaw_date
from polyfleet.controller.domain.entitlement import Span, coverage
from polyfleet.controller.domain.plans import PlanCatalogue
from polyfleet.controller.domain.releases import Release, ReleaseCatalogue, hop_kind, is_newer
from polyfleet.controller.domain.rollout_windows import (
    DEFAULT_HOP_LENGTH,
    Busy,
    place_hops,
    split_shift,
    utc,
)
from polyfleet.controller.domain.rollout_windows import (  # the services and faces find them here
    Night as Night,
)
from polyfleet.controller.domain.rollout_windows import (
    PlanError as PlanError,
)
from polyfleet.controller.domain.rollout_windows import (
    Window as Window,
)
from polyfleet.controller.domain.tickets import contract_flag_text, eligibility_of, fault_text
from polyfleet.controller.errors import Conflict
from polyfleet.shared.schema import FailureCode
from polyfleet.shared.version import FirmwareVersion, VersionError

DEFAULT_CANARY = 1
DEFAULT_WAVES = (10, 50, 100)
DEFAULT_WINDOW = "01:00-05:00"
DEFAULT_MAX_FAILURES = 10
DEFAULT_PER_SITE = 5
#: The longest rollout name people may give.
ROLLOUT_NAME_MAX_CHARS = 200
#: Each wave opens this long after the one before it (a night, by default).
DEFAULT_WAVE_GAP = timedelta(days=1)
#: How often the controller moves running rollouts on, in seconds.
ROLLOUT_TICK_S = 5.0
#: The planned length of one hop (install, reboot, verify): the spacing of hops in a window.
HOP_SPACING = DEFAULT_HOP_LENGTH
#: The shortest time between two waves, unless the controller is configured otherwise.
MIN_WAVE_GAP = timedelta(minutes=1)

Channel = Literal["agent", "teams_admin_center", "none"]
ReasonCode = Literal[
    "already_current",
    "not_entitled",
    "no_path",
    "open_ticket",
    "unhealthy",
    "unreachable",
    "in_penalty_box",
    "follows_host",
    "teams_managed",
    "excluded_by_admin",
]
REASON_CODES: tuple[str, ...] = get_args(ReasonCode)
#: Reasons that leave a device out of this rollout for good.
EXCLUDING = frozenset({"already_current", "no_path", "follows_host", "excluded_by_admin"})
#: Reasons that hold a device that could otherwise be updated.
HOLDING = frozenset({"not_entitled", "open_ticket", "unhealthy", "unreachable", "in_penalty_box"})


class DeviceStatus(StrEnum):
    """Where one device stands in a rollout; the value is what documents and the API hold."""

    #: The plan's three verdicts.
    PLANNED = "planned"
    HELD = "held"
    EXCLUDED = "excluded"
    #: Started: waits for its wave and its window (again after a hop, a retry or a refusal).
    WAITING_WINDOW = "waiting_window"
    #: Not started because its room is booked: waits for a free slot in its window (its
    #: agent waiting, with a job) or for its next window (no job); ``booked`` says when.
    POSTPONED_BOOKED = "postponed_booked"
    #: Ordered: the agent's word on the update under way.
    POSTPONED_IN_CALL = "postponed_in_call"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    VERIFYING = "verifying"
    #: Over.
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


#: Every status a device entry may have, planned ones first, then the running ones.
DEVICE_STATUSES: tuple[str, ...] = tuple(status.value for status in DeviceStatus)
#: An update under way: ordered, its job not finished; pause and abort let these finish.
UNDER_WAY = frozenset(
    {
        DeviceStatus.POSTPONED_IN_CALL,
        DeviceStatus.DOWNLOADING,
        DeviceStatus.INSTALLING,
        DeviceStatus.VERIFYING,
    }
)
#: Which status a device entry may move to from which; nothing leaves a final one.
DEVICE_MOVES: dict[DeviceStatus, frozenset[DeviceStatus]] = {
    # start; abort
    DeviceStatus.PLANNED: frozenset({DeviceStatus.WAITING_WINDOW, DeviceStatus.SKIPPED}),
    DeviceStatus.HELD: frozenset(),
    DeviceStatus.EXCLUDED: frozenset(),
    **{
        status: frozenset(
            {
                DeviceStatus.WAITING_WINDOW,  # its window passed: the next one
                DeviceStatus.POSTPONED_BOOKED,  # its room is booked at its install moment
                DeviceStatus.DOWNLOADING,  # ordered
                DeviceStatus.DONE,  # a Teams unit reported on the target
                DeviceStatus.FAILED,  # a Teams unit not on it when its window closed
                DeviceStatus.SKIPPED,  # abort
                DeviceStatus.HELD,  # not entitled at its new install moment (S4)
            }
        )
        | (UNDER_WAY if status is DeviceStatus.POSTPONED_BOOKED else frozenset())
        for status in (DeviceStatus.WAITING_WINDOW, DeviceStatus.POSTPONED_BOOKED)
    },
    **{
        status: UNDER_WAY  # the agent's progress, in any order (an agent resumes a job)
        | {
            DeviceStatus.WAITING_WINDOW,  # a hop done with more to go, a retry, a refusal
            DeviceStatus.POSTPONED_BOOKED,  # the room is booked: a free slot, or later
            DeviceStatus.DONE,
            DeviceStatus.FAILED,
            DeviceStatus.SKIPPED,  # a hop done after an abort: the others are not ordered
            DeviceStatus.HELD,  # a hop done, the next one not entitled at its moment (S4)
        }
        for status in UNDER_WAY
    },
    DeviceStatus.DONE: frozenset(),
    DeviceStatus.FAILED: frozenset(),
    DeviceStatus.SKIPPED: frozenset(),
}
#: Entries waiting for a moment to be ordered (no job out, unless an agent waits out a booking).
WAITING = frozenset({DeviceStatus.WAITING_WINDOW, DeviceStatus.POSTPONED_BOOKED})


class RolloutStatus(StrEnum):
    PLANNED = "planned"
    RUNNING = "running"
    PAUSED = "paused"
    HALTED = "halted"
    ABORTED = "aborted"
    DONE = "done"


ROLLOUT_STATUSES: tuple[str, ...] = tuple(status.value for status in RolloutStatus)
#: Which admin action is allowed from which rollout status, and where it leads.
ADMIN_ACTIONS: dict[str, dict[RolloutStatus, RolloutStatus]] = {
    "start": {RolloutStatus.PLANNED: RolloutStatus.RUNNING},
    "pause": {RolloutStatus.RUNNING: RolloutStatus.PAUSED},
    "resume": {
        RolloutStatus.PAUSED: RolloutStatus.RUNNING,
        RolloutStatus.HALTED: RolloutStatus.RUNNING,
    },
    "abort": {
        status: RolloutStatus.ABORTED
        for status in (
            RolloutStatus.PLANNED,
            RolloutStatus.RUNNING,
            RolloutStatus.PAUSED,
            RolloutStatus.HALTED,
        )
    },
}
#: Every move of a rollout's status: the admin's and the runner's own.
ROLLOUT_MOVES: dict[str, dict[RolloutStatus, RolloutStatus]] = {
    **ADMIN_ACTIONS,
    "halt": {RolloutStatus.RUNNING: RolloutStatus.HALTED},  # the circuit breaker
    "finish": {RolloutStatus.RUNNING: RolloutStatus.DONE},  # every device's part is over
}


class IllegalMove(Conflict, RuntimeError):
    """A status change the tables do not allow: a bug in the code that asked for it, or an
    agent's word on an update that is no longer under way (409 ``conflict``).

    Nothing is stored when it is raised: the document keeps the status it had.
    """

    def __init__(self, subject: str, current: str, change: str, why: str) -> None:
        super().__init__(f"{subject}: {current} cannot {change} ({why})")
        self.subject = subject
        self.current = current
        self.change = change


def device_move(subject: str, current: str, wanted: DeviceStatus) -> DeviceStatus:
    """``wanted`` when an entry in ``current`` may move there; IllegalMove otherwise."""
    change = f"move to {wanted.value}"
    try:
        allowed = DEVICE_MOVES[DeviceStatus(current)]
    except ValueError:
        raise IllegalMove(subject, current, change, "no device status is called so") from None
    if wanted not in allowed:
        can = ", ".join(sorted(allowed))
        why = f"it may move to {can}" if can else "it is final"
        raise IllegalMove(subject, current, change, why)
    return wanted


def rollout_move(subject: str, current: str, action: str) -> RolloutStatus:
    """Where ``action`` takes a rollout in ``current``; IllegalMove when it may not."""
    moves = ROLLOUT_MOVES.get(action)
    if moves is None:
        raise IllegalMove(subject, current, action, f"no such action: {', '.join(ROLLOUT_MOVES)}")
    try:
        return moves[RolloutStatus(current)]
    except (KeyError, ValueError):
        froms = ", ".join(sorted(moves))
        raise IllegalMove(subject, current, action, f"{action} needs it {froms}") from None


#: Problems that keep the agent from ordering an update even though the unit answers.
BLOCKING_PROBLEMS = frozenset({"auth_failed", "locked_out", "certificate_changed"})
#: Health order for the canary choice: the best first.
_HEALTH_RANK = {"ok": 0, "degraded": 1, "fault": 2, "unreachable": 3}
#: Models whose firmware comes with their host's (E70 cameras).
CAMERA_MODELS = frozenset({"studio_e70"})


def parse_waves(text: str) -> tuple[int, ...]:
    """``10%,50%,100%``: rising cumulative shares ending at 100; PlanError names the problem."""
    shares: list[int] = []
    for part in text.split(","):
        value = part.strip().removesuffix("%").strip()
        if not value.isdigit() or not 1 <= int(value) <= 100:
            raise PlanError("waves", f"{part.strip()!r} is not a share from 1% to 100%")
        shares.append(int(value))
    if any(b <= a for a, b in itertools.pairwise(shares)):
        raise PlanError("waves", f"{text!r}: each wave's share must be larger than the one before")
    if not shares or shares[-1] != 100:
        raise PlanError("waves", f"{text!r}: the last wave must reach 100%")
    return tuple(shares)


_DURATION_UNITS = {
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}


def parse_gap(text: str, field: str = "wave_gap") -> timedelta:
    """``1d``, ``12h``, ``30m``, ``20s``: a duration (between two waves' windows, of a hop)."""
    text = text.strip().lower()
    units = _DURATION_UNITS
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) < 1:
        raise PlanError(field, f"{text!r} is not a duration such as 1d, 12h, 30m or 20s")
    return int(text[:-1]) * units[text[-1]]


def format_gap(gap: timedelta) -> str:
    seconds = int(gap.total_seconds())
    if seconds % 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes % (24 * 60) == 0:
        return f"{minutes // (24 * 60)}d"
    if minutes % 60 == 0:
        return f"{minutes // 60}h"
    return f"{minutes}m"


@dataclass(frozen=True, kw_only=True)
class PlanRequest:
    """What an admin asks for (the ``rollout plan`` flags), already validated by type."""

    target: str
    sites: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    canary: int = DEFAULT_CANARY
    waves: tuple[int, ...] = DEFAULT_WAVES
    window: Window = field(default_factory=lambda: Window.parse(DEFAULT_WINDOW))
    start: date | None = None
    wave_gap: timedelta = DEFAULT_WAVE_GAP
    max_failures: int = DEFAULT_MAX_FAILURES
    per_site: int = DEFAULT_PER_SITE
    name: str = ""
    exclude: tuple[str, ...] = ()
    #: When the breaker halts the rollout; None: the defaults, with ``max_failures``.
    abort_criteria: tuple[AbortCriterion, ...] | None = None
    #: How long one hop takes on one unit (elapsed): hops are placed this far apart, and an
    #: install starts only when this much of its window is left and its room is free.
    hop_length: timedelta = DEFAULT_HOP_LENGTH
    #: The shortest ``wave_gap`` accepted (the controller's ``[rollouts] min_wave_gap_s``).
    min_wave_gap: timedelta = MIN_WAVE_GAP

    @property
    def criteria(self) -> tuple[AbortCriterion, ...]:
        if self.abort_criteria is None:
            return default_abort_criteria(self.max_failures)
        return self.abort_criteria

    def check(self) -> None:
        if self.canary < 0:
            raise PlanError("canary", f"{self.canary} devices per site: 0 or more expected")
        if not 0 <= self.max_failures <= 100:
            raise PlanError("max_failures", f"{self.max_failures}%: a share from 0 to 100")
        if self.per_site < 1:
            raise PlanError("per_site", f"{self.per_site}: at least 1 update at once per site")
        if len(self.name) > ROLLOUT_NAME_MAX_CHARS:
            raise PlanError("name", f"at most {ROLLOUT_NAME_MAX_CHARS} characters")
        if self.wave_gap < self.min_wave_gap:
            raise PlanError("wave_gap", f"at least {format_gap(self.min_wave_gap)} between waves")
        if self.hop_length > self.window.nominal:
            raise PlanError(
                "hop_length",
                f"{format_gap(self.hop_length)} does not fit in the window {self.window} "
                f"({format_gap(self.window.nominal)})",
            )


def installed_text(version: str, build: str) -> str:
    """An installed version as people read it: ``4.1.0_00.180034`` (the build added when the
    version text has none)."""
    if not version:
        return ""
    try:
        has_build = FirmwareVersion.parse(version).build != 0
    except VersionError:
        return version
    return f"{version}.{build}" if build and not has_build else version


@dataclass(kw_only=True, slots=True)
class PlanDevice:
    """One device as the inventory knows it, with what the planner needs about it."""

    serial: str
    site: str
    model: str
    provider: str
    room: str = ""
    version: str = ""
    build: str = ""
    health: str = "ok"
    problems: tuple[str, ...] = ()
    host_serial: str | None = None
    open_tickets: tuple[str, ...] = ()
    #: Why the device sits in the penalty box of an earlier rollout, when it does.
    penalty: str | None = None

    @property
    def installed_text(self) -> str:
        return installed_text(self.version, self.build)

    def installed(self) -> FirmwareVersion | None:
        try:
            return FirmwareVersion.parse(self.version, build=self.build or None)
        except VersionError:
            return None


@dataclass(frozen=True)
class RoomCalendar:
    """What a unit's agent last read of its room's calendar (only start and end of each
    meeting ever leave the unit). ``state``: ``read``; ``off`` (no calendar set up on the
    unit); ``unreadable`` (the unit could not say). Off or unreadable counts as free."""

    state: Literal["read", "off", "unreadable"]
    meetings: tuple[Busy, ...] = ()
    read_at: datetime | None = None
    detail: str = ""

    def busy(self) -> tuple[Busy, ...]:
        return self.meetings if self.state == "read" else ()

    def in_window(self, start: datetime, end: datetime) -> list[Busy]:
        return [m for m in self.busy() if utc(m[0]) < end and utc(m[1]) > start]

    def free_text(self) -> str:
        """Why an unread calendar lets the install go on, for the entry."""
        if self.state == "off":
            return "the unit has no room calendar set up: its room counts as free"
        why = f": {self.detail}" if self.detail else ""
        return f"the room calendar could not be read{why}; its room counts as free"

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> RoomCalendar:
        state = doc.get("state")
        meetings = tuple(
            (datetime.fromisoformat(str(m["start"])), datetime.fromisoformat(str(m["end"])))
            for m in doc.get("meetings") or ()
        )
        read_at = doc.get("read_at")
        return cls(
            state=state if state in ("read", "off", "unreadable") else "unreadable",
            meetings=meetings,
            read_at=datetime.fromisoformat(str(read_at)) if read_at else None,
            detail=str(doc.get("detail") or ""),
        )


def meetings_json(meetings: Iterable[Busy], zone: tzinfo) -> list[dict[str, str]]:
    """Meetings as entries show them: start and end in the site's zone, nothing else."""
    return [
        {"start": start.astimezone(zone).isoformat(), "end": end.astimezone(zone).isoformat()}
        for start, end in meetings
    ]


@dataclass(frozen=True, kw_only=True)
class Hop:
    """One catalogue step of a device's way to the target, judged at its install time."""

    version: str
    kind: str
    install_at: datetime
    entitled: bool
    entitled_until: date | None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "kind": self.kind,
            "install_at": self.install_at.isoformat(),
            "entitled": self.entitled,
            "entitled_until": self.entitled_until.isoformat() if self.entitled_until else None,
        }


@dataclass(frozen=True)
class Reason:
    code: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "text": self.text}


def status_of(reasons: Sequence[Reason]) -> DeviceStatus:
    """The plan's verdict its reasons give: excluded, held, else planned."""
    codes = {reason.code for reason in reasons}
    if codes & EXCLUDING:
        return DeviceStatus.EXCLUDED
    if codes & HOLDING:
        return DeviceStatus.HELD
    return DeviceStatus.PLANNED


@dataclass(kw_only=True)
class DeviceEntry:
    """One device's line in a plan."""

    device: PlanDevice
    channel: Channel
    hops: list[Hop] = field(default_factory=list)
    wave: int | None = None
    window: tuple[datetime, datetime] | None = None
    reasons: list[Reason] = field(default_factory=list)
    notes: list[Reason] = field(default_factory=list)
    #: The installed version as shown; the planner fills it from its cache (None: compute).
    installed_text: str | None = None
    #: The hops' and the window's JSON, shared by devices with the same ones (read-only).
    hops_json: list[dict[str, Any]] | None = None
    window_json: dict[str, str] | None = None
    #: The flagged contract in force at its install moment (H1, H5, renewals), as tickets say.
    eligibility: dict[str, Any] | None = None
    #: What its room calendar says in its windows (None: nothing read yet).
    calendar: dict[str, Any] | None = None
    #: The reasons' JSON and the status they give, shared by devices judged alike
    #: (read-only); None: worked out from ``reasons``. ``add_reason`` drops both.
    reasons_json: list[dict[str, str]] | None = None
    known_status: DeviceStatus | None = None

    def add_reason(self, reason: Reason) -> None:
        self.reasons.append(reason)
        self.reasons_json = None
        self.known_status = None

    @property
    def status(self) -> DeviceStatus:
        if self.known_status is None:
            self.known_status = status_of(self.reasons)
        return self.known_status

    def to_json(self) -> dict[str, Any]:
        device = self.device
        return {
            "serial": device.serial,
            "site": device.site,
            "room": device.room,
            "model": device.model,
            "provider": device.provider,
            "installed": (
                self.installed_text if self.installed_text is not None else device.installed_text
            )
            or None,
            # Shared by devices with the same hops: read-only, like every plan document.
            "hops": (
                self.hops_json
                if self.hops_json is not None
                else [hop.to_json() for hop in self.hops]
            ),
            "channel": self.channel,
            "wave": self.wave,
            "window": (
                self.window_json
                if self.window_json is not None
                else (
                    {"start": self.window[0].isoformat(), "end": self.window[1].isoformat()}
                    if self.window
                    else None
                )
            ),
            "reasons": (
                self.reasons_json
                if self.reasons_json is not None
                else [reason.to_json() for reason in self.reasons]
            ),
            "notes": [note.to_json() for note in self.notes],
            "status": self.status.value,
            "eligibility": self.eligibility,
            "calendar": self.calendar,
        }


@dataclass(frozen=True, kw_only=True)
class WaveNote:
    """Something a wave's planner says about one site's window (or canary)."""

    code: str
    site: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "site": self.site, "text": self.text}


@dataclass(frozen=True, kw_only=True)
class Wave:
    index: int
    name: str
    opens_at: datetime | None
    devices: tuple[str, ...]
    notes: tuple[WaveNote, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "opens_at": self.opens_at.isoformat() if self.opens_at else None,
            "devices": list(self.devices),
            "notes": [note.to_json() for note in self.notes],
        }


def plan_summary(devices: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts of a plan's entries by status and reason: they add up to its entries."""
    statuses: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    total = 0
    for entry in devices:
        total += 1
        statuses[entry["status"]] += 1
        for reason in entry.get("reasons") or ():
            reasons[reason["code"]] += 1
    return {
        "devices": total,
        "by_status": dict(sorted(statuses.items())),
        "by_reason": {code: reasons[code] for code in REASON_CODES if reasons[code]},
    }


@dataclass(frozen=True, kw_only=True)
class RolloutPlan:
    """The computed plan; ``to_json`` is the stored and shown document (without id/status)."""

    request: PlanRequest
    target: str
    start: date
    waves: tuple[Wave, ...]
    entries: tuple[DeviceEntry, ...]

    def to_json(self) -> dict[str, Any]:
        request = self.request
        devices = [entry.to_json() for entry in self.entries]
        return {
            "name": request.name,
            "target": self.target,
            "sites": list(request.sites),
            "models": list(request.models),
            "canary": request.canary,
            "wave_shares": [f"{share}%" for share in request.waves],
            "window": str(request.window),
            "start": self.start.isoformat(),
            "wave_gap": format_gap(request.wave_gap),
            "hop_length": format_gap(request.hop_length),
            "max_failures": request.max_failures,
            "abort_criteria": [criterion.to_json() for criterion in request.criteria],
            "per_site": request.per_site,
            "exclude": list(request.exclude),
            "waves": [wave.to_json() for wave in self.waves],
            "devices": devices,
            "summary": plan_summary(devices),
        }


def path_to(
    catalogue: ReleaseCatalogue, installed: FirmwareVersion, target: Release, day: date
) -> list[Release] | None:
    """The catalogue steps from ``installed`` to ``target`` (E7); None when there is no way.

    Each step is the newest release not beyond the target whose "needs at least" the
    current version meets, among those published on or before ``day``.
    """
    hops: list[Release] = []
    current = installed
    while not current.same_release(target.version):
        steps = [
            release
            for release in catalogue.candidates(current, day)
            if not is_newer(release.version, target.version)
        ]
        if not steps:
            return None
        hops.append(steps[-1])
        current = steps[-1].version
    return hops


@dataclass(frozen=True)
class Covering:
    """The windows of one device's rights, computed once (coverage walks every contract)."""

    patches: tuple[Span, ...]
    upgrades: tuple[Span, ...]

    def span(self, kind: str, day: date) -> Span | None:
        spans = self.patches if kind == "patch" else self.upgrades
        return next((span for span in spans if span.covers(day)), None)

    def next_span(self, kind: str, day: date) -> Span | None:
        spans = self.patches if kind == "patch" else self.upgrades
        return next((span for span in spans if span.end >= day), None)

    def last_end_before(self, kind: str, day: date) -> date | None:
        spans = self.patches if kind == "patch" else self.upgrades
        ended = [span.end for span in spans if span.end < day]
        return ended[-1] if ended else None


_NOTHING = Covering((), ())


def covering(asset: Asset | None, plans: PlanCatalogue) -> Covering:
    """The patch and upgrade windows of ``asset`` (none without one)."""
    if asset is None:
        return _NOTHING
    cover = coverage(asset, plans)
    return Covering(cover.patches.spans, cover.upgrades.spans)


@dataclass(frozen=True, kw_only=True)
class MomentVerdict:
    """Whether a hop of ``kind`` may be installed at one moment (S4), and if not, why."""

    kind: str
    day: date
    #: The covered run holding the day, when there is one.
    until: date | None = None
    #: Not covered: the last covered day before it, and the first one after it.
    ended: date | None = None
    starts: date | None = None

    @property
    def entitled(self) -> bool:
        return self.until is not None

    def why(self) -> str:
        """Why not, in words (for ``not_entitled``)."""
        kind = "patches" if self.kind == "patch" else "upgrades"
        if self.ended is not None:
            return f"its {kind} window closed on {self.ended.isoformat()}"
        if self.starts is not None:
            return f"its {kind} window opens only on {self.starts.isoformat()}"
        return f"none of its contracts grants {kind}"


def judge_moment(cover: Covering, kind: str, moment: datetime) -> MomentVerdict:
    """S4: entitlement judged at the moment of install (on the Warsaw date, E1)."""
    day = warsaw_date(moment)
    span = cover.span(kind, day)
    if span is not None:
        return MomentVerdict(kind=kind, day=day, until=span.end)
    later = cover.next_span(kind, day)
    return MomentVerdict(
        kind=kind,
        day=day,
        ended=cover.last_end_before(kind, day),
        starts=later.start if later is not None else None,
    )


def plans_still_sold(
    plans: PlanCatalogue, kind: str, model: str, asset: Asset | None, day: date
) -> list[str]:
    """Plans whose contract would cover a hop of ``kind`` for its whole term (E4, S2) and
    that this unit can still get when bought on ``day``: its model (H1), not too long after
    its purchase (H5, E6; unknown without a registered purchase)."""
    found = []
    for plan in plans.plans.values():
        if not plan.contract:
            continue
        if not (plan.upgrades if kind == "upgrade" else plan.patches_whole_term):
            continue
        if plan.eligible_models is not None and model not in plan.eligible_models:
            continue  # H1
        if plan.purchase_to_contract_days is not None and (
            asset is None or (day - asset.purchase_date).days > plan.purchase_to_contract_days
        ):
            continue  # H5, E6
        found.append(plan.id)
    return found


def eligibility_json(asset: Asset | None, day: date, plans: PlanCatalogue) -> dict[str, Any] | None:
    """The flags of the contract in force on ``day`` (H1, H5, renewals, chains), as tickets
    carry them, with ``grants``: whether this product honours a flagged contract."""
    if asset is None:
        return None
    contract = next((c for c in asset.contracts if c.covers(day)), None)
    eligibility = eligibility_of(asset, contract, plans)
    if eligibility is None:
        return None
    doc = eligibility.model_dump(mode="json")
    for flag, note in zip(doc["flags"], eligibility.flags, strict=True):
        flag["text"] = contract_flag_text(note, eligibility.plan_name, "en")
    return dict(doc)


@dataclass(frozen=True)
class _Schedule:
    """One unit's hops placed from one wave's window on, each judged at its moment."""

    hops: tuple[Hop, ...]
    verdicts: tuple[MomentVerdict, ...]
    nights: tuple[Night, ...]
    #: Every hop entitled at its moment (asked of each schedule of each unit: kept).
    entitled: bool

    def first_refused(self) -> tuple[Hop, MomentVerdict] | None:
        for hop, verdict in zip(self.hops, self.verdicts, strict=True):
            if not verdict.entitled:
                return hop, verdict
        return None


def schedule_hops(
    path: Sequence[Release],
    installed: FirmwareVersion,
    cover: Covering,
    first: Night,
    hop_length: timedelta,
    busy: Sequence[Busy] = (),
    earliest: datetime | None = None,
) -> _Schedule:
    """Hops from ``first``'s window on, one ``hop_length`` after the other, around meetings;
    each judged at its own moment (S3, S4)."""
    slots = place_hops(len(path), first, hop_length, busy=busy, earliest=earliest)
    hops: list[Hop] = []
    verdicts: list[MomentVerdict] = []
    current = installed
    for release, slot in zip(path, slots, strict=True):
        kind = hop_kind(current, release.version)  # S3
        verdict = judge_moment(cover, kind, slot.at)
        verdicts.append(verdict)
        hops.append(
            Hop(
                version=release.text,
                kind=kind,
                install_at=slot.night.local(slot.at),
                entitled=verdict.entitled,
                entitled_until=verdict.until,
            )
        )
        current = release.version
    return _Schedule(
        tuple(hops),
        tuple(verdicts),
        tuple(slot.night for slot in slots),
        entitled=all(hop.entitled for hop in hops),
    )


@dataclass(frozen=True, kw_only=True)
class _Judged:
    """What ``judge`` found for one shape of device (shared, read-only)."""

    channel: Channel
    reasons: tuple[Reason, ...]
    reasons_json: list[dict[str, str]]
    status: DeviceStatus
    path: list[Release] | None


@dataclass(frozen=True, kw_only=True)
class _Settled:
    """Where ``settle`` put the units of one schedule and wave (shared, read-only)."""

    wave: int
    schedule: _Schedule
    hops_json: list[dict[str, Any]]
    window: tuple[datetime, datetime]
    window_json: dict[str, str]
    notes: tuple[Reason, ...]
    eligibility: dict[str, Any] | None


class _Planner:
    def __init__(
        self,
        request: PlanRequest,
        devices: Sequence[PlanDevice],
        site_zones: Mapping[str, str],
        assets: Mapping[str, Asset],
        plans: PlanCatalogue,
        releases: ReleaseCatalogue,
        now: datetime,
        calendars: Mapping[str, RoomCalendar],
    ) -> None:
        self.request = request
        self.devices = devices
        self.assets = assets
        self.plans = plans
        self.releases = releases
        self.now = utc(now)
        self.calendars = calendars
        self.zones: dict[str, tzinfo] = {}
        for site, name in site_zones.items():
            try:
                self.zones[site] = ZoneInfo(name or "UTC")
            except (KeyError, ValueError):
                self.zones[site] = ZoneInfo("UTC")
        found = None
        try:
            found = releases.find(FirmwareVersion.parse(request.target))
        except VersionError as exc:
            raise PlanError("target", str(exc)) from None
        if found is None:
            raise PlanError(
                "target",
                f"{request.target} is not in the release catalogue "
                "(see `polyfleet controller releases list`)",
            )
        self.target = found
        self.waves = 1 + len(request.waves)
        # Fleets share few versions and contract shapes: each is worked out once per plan.
        self._paths: dict[FirmwareVersion, list[Release] | None] = {}
        self._covers: dict[tuple[Any, ...], Covering] = {}
        self._cover_keys: dict[str, tuple[Any, ...]] = {}
        self._installed: dict[tuple[str, str], FirmwareVersion | None] = {}
        self._nights: dict[tuple[str, int], Night] = {}
        self._requested: dict[tuple[str, int], Night] = {}
        self._schedules: dict[tuple[Any, ...], tuple[_Schedule, ...]] = {}
        self._hops_json: dict[int, list[dict[str, Any]]] = {}
        self._windows_json: dict[int, dict[str, str]] = {}
        self._texts: dict[tuple[str, str], str] = {}
        self._eligibility: dict[tuple[Any, ...], dict[str, Any] | None] = {}
        self._judged: dict[tuple[Any, ...], _Judged] = {}
        self._settled: dict[tuple[int, int], _Settled] = {}
        self._refusals: dict[tuple[Any, ...], str] = {}
        #: Per wave, what it says about sites: windows moved, shortened, no canary.
        self.wave_notes: dict[int, list[WaveNote]] = defaultdict(list)

    def installed_text(self, device: PlanDevice) -> str:
        key = (device.version, device.build)
        found = self._texts.get(key)
        if found is None:
            found = self._texts[key] = device.installed_text
        return found

    def installed(self, device: PlanDevice) -> FirmwareVersion | None:
        key = (device.version, device.build)
        if key not in self._installed:
            self._installed[key] = device.installed()
        return self._installed[key]

    def path(self, installed: FirmwareVersion, start: date) -> list[Release] | None:
        if installed not in self._paths:
            self._paths[installed] = path_to(self.releases, installed, self.target, start)
        return self._paths[installed]

    def cover_key(self, serial: str) -> tuple[Any, ...]:
        found = self._cover_keys.get(serial)
        if found is None:
            asset = self.assets.get(serial)
            # The rights depend on dates and plans, not on contract numbers: devices bought
            # together under the same terms share them.
            found = (
                ()
                if asset is None
                else (
                    asset.purchase_date,
                    tuple((c.plan, c.start, c.end, c.ineligible_rules) for c in asset.contracts),
                )
            )
            self._cover_keys[serial] = found
        return found

    def cover(self, serial: str) -> Covering:
        key = self.cover_key(serial)
        if not key:
            return _NOTHING
        found = self._covers.get(key)
        if found is None:
            found = self._covers[key] = covering(self.assets.get(serial), self.plans)
        return found

    def zone(self, site: str) -> tzinfo:
        return self.zones.get(site, ZoneInfo("UTC"))

    def start_day(self) -> date:
        start = self.request.start
        if start is None:
            start = warsaw_date(self.now) + timedelta(days=1)
        if self.target.released > start:
            raise PlanError(
                "target",
                f"{self.target.text} is published on {self.target.released.isoformat()}, "
                f"after the start {start.isoformat()} (E7)",
            )
        return start

    def requested_night(self, site: str, wave: int, start: date) -> Night:
        """The wave's window at ``site`` as asked for, before anything is moved."""
        key = (site, wave)
        found = self._requested.get(key)
        if found is None:
            days, rest = split_shift(self.request.wave_gap * wave)
            found = self.request.window.night(start + timedelta(days=days), self.zone(site), rest)
            self._requested[key] = found
        return found

    def night(self, site: str, wave: int, start: date) -> Night:
        """The wave's window at ``site``: the first night that has it and is not over, with
        what moved it said in the wave's notes."""
        key = (site, wave)
        found = self._nights.get(key)
        if found is not None:
            return found
        asked = self.requested_night(site, wave, start)
        found = asked.first_ending_after(self.now)
        notes = self.wave_notes[wave]
        if asked.notice is not None:
            opens = moment_text(found.local(found.start))
            moved = "" if asked.exists else f"; the wave opens at {opens}"
            notes.append(WaveNote(code=asked.notice, site=site, text=asked.describe() + moved))
        if asked.end <= self.now:
            notes.append(
                WaveNote(
                    code="window_passed",
                    site=site,
                    text=f"{asked.window} on {asked.day.isoformat()} is over already: the "
                    f"wave opens at {moment_text(found.local(found.start))}",
                )
            )
        self._nights[key] = found
        return found

    def schedules(
        self, path: list[Release], installed: FirmwareVersion, serial: str, site: str, start: date
    ) -> tuple[_Schedule, ...]:
        """The unit's hops from each wave's window on (shared by units alike)."""
        calendar = self.calendars.get(serial)
        busy = calendar.busy() if calendar is not None else ()
        key = (installed, self.cover_key(serial), site, busy)
        found = self._schedules.get(key)
        if found is None:
            cover = self.cover(serial)
            found = tuple(
                schedule_hops(
                    path,
                    installed,
                    cover,
                    self.night(site, wave, start),
                    self.request.hop_length,
                    busy,
                )
                for wave in range(self.waves)
            )
            self._schedules[key] = found
        return found

    def hops_json(self, schedule: _Schedule) -> list[dict[str, Any]]:
        found = self._hops_json.get(id(schedule))
        if found is None:
            found = self._hops_json[id(schedule)] = [hop.to_json() for hop in schedule.hops]
        return found

    def window_json(self, night: Night) -> dict[str, str]:
        found = self._windows_json.get(id(night))
        if found is None:
            found = self._windows_json[id(night)] = night.to_json()
        return found

    def eligibility(self, serial: str, day: date) -> dict[str, Any] | None:
        key = (self.cover_key(serial), day)
        if not key[0]:
            return None
        if key not in self._eligibility:
            self._eligibility[key] = eligibility_json(self.assets.get(serial), day, self.plans)
        return self._eligibility[key]

    def not_entitled_text(self, device: PlanDevice, schedule: _Schedule) -> str:
        """Why a unit is held not entitled, and what could still cover it: the same for
        every unit of its model with the same rights and the same schedule."""
        key = (self.cover_key(device.serial), id(schedule), device.model)
        found = self._refusals.get(key)
        if found is None:
            found = self._refusals[key] = self._not_entitled_text(device, schedule)
        return found

    def _not_entitled_text(self, device: PlanDevice, schedule: _Schedule) -> str:
        refused = schedule.first_refused()
        assert refused is not None
        hop, verdict = refused
        asset = self.assets.get(device.serial)
        if asset is None:
            why = "the device has no contract in the asset registry"
        else:
            why = verdict.why()
            if verdict.starts is not None and verdict.ended is None:
                why += ", after the last wave"
        kinds = "patches" if hop.kind == "patch" else "upgrades"
        # Bought today at the earliest: H5 counts the days from the purchase to today.
        today = warsaw_date(self.now)
        offers = [
            self.plans.plans[plan].name
            for plan in plans_still_sold(self.plans, hop.kind, device.model, asset, today)
        ]
        offer = (
            f"; a {' or '.join(offers)} contract would cover it"
            if offers
            else f"; no plan this unit can still get grants {kinds}"
        )
        return f"hop to {hop.version} ({hop.kind}) at {moment_text(hop.install_at)}: {why}{offer}"

    def plan(self) -> RolloutPlan:
        request = self.request
        start = self.start_day()
        sites = set(request.sites)
        models = set(request.models)
        excluded = set(request.exclude)
        entries: list[DeviceEntry] = []
        paths: dict[str, list[Release]] = {}
        for device in sorted(self.devices, key=lambda d: d.serial):
            if sites and device.site not in sites:
                continue
            if models and device.model not in models:
                continue
            entry, path = self.judge(device, start, excluded)
            entry.installed_text = self.installed_text(device)
            entries.append(entry)
            if path is not None:
                paths[device.serial] = path
        self.refuse_past(entries, start)
        self.assign(entries, paths, start)
        waves = self.wave_list(entries, start)
        return RolloutPlan(
            request=request,
            target=self.target.text,
            start=start,
            waves=waves,
            entries=tuple(entries),
        )

    def refuse_past(self, entries: list[DeviceEntry], start: date) -> None:
        """A plan whose every window is over is refused, naming the first of them."""
        sites = sorted({entry.device.site for entry in entries}) or sorted(self.zones)
        asked = [
            (self.requested_night(site, wave, start), wave, site)
            for wave in range(self.waves)
            for site in sites
        ]
        if not asked or any(night.end > self.now for night, _wave, _site in asked):
            return
        night, wave, site = min(asked, key=lambda found: found[0].start)
        name = "canary" if wave == 0 else f"{self.request.waves[wave - 1]}%"
        raise PlanError(
            "start",
            f"every window of this plan is over: the first, wave {name} at {site}, ran "
            f"{moment_text(night.local(night.start))} to {moment_text(night.local(night.end))}; "
            f"plan from a later --start",
        )

    def judge(
        self, device: PlanDevice, start: date, excluded: set[str]
    ) -> tuple[DeviceEntry, list[Release] | None]:
        """Channel and reasons of one device, and its path when it may get a wave.

        Worked out once per shape: everything the reasons read of a device (model, host,
        mode, left out or not, firmware, health, tickets, penalty), which a fleet's devices
        share by the hundred; each device gets its own entry with the shape's reasons.
        """
        shape = (
            device.model,
            device.host_serial,
            device.provider,
            device.serial in excluded,
            device.version,
            device.build,
            device.health,
            device.problems,
            device.open_tickets,
            device.penalty,
        )
        judged = self._judged.get(shape)
        if judged is None:
            first, path = self.judge_shape(device, start, excluded)
            judged = self._judged[shape] = _Judged(
                channel=first.channel,
                reasons=tuple(first.reasons),
                reasons_json=[reason.to_json() for reason in first.reasons],
                status=first.status,
                path=path,
            )
        entry = DeviceEntry(
            device=device,
            channel=judged.channel,
            reasons=list(judged.reasons),
            reasons_json=judged.reasons_json,
            known_status=judged.status,
        )
        return entry, judged.path

    def judge_shape(
        self, device: PlanDevice, start: date, excluded: set[str]
    ) -> tuple[DeviceEntry, list[Release] | None]:
        """``judge`` for the first device of its shape."""
        if device.model in CAMERA_MODELS or (
            device.host_serial and not self.releases.applies_to(device.model)
        ):
            entry = DeviceEntry(device=device, channel="none")
            host = f" {device.host_serial}" if device.host_serial else ""
            entry.add_reason(
                Reason("follows_host", f"an E70 camera: its firmware comes with its host{host}'s")
            )
            return entry, None
        teams = device.provider == "teams"
        entry = DeviceEntry(device=device, channel="teams_admin_center" if teams else "agent")
        if teams:
            entry.add_reason(
                Reason(
                    "teams_managed",
                    "Teams mode: the Teams admin center delivers its firmware; "
                    f"the rollout checks that it reaches {self.target.text}",
                )
            )
        if device.serial in excluded:
            entry.add_reason(Reason("excluded_by_admin", "left out by the admin (--exclude)"))
        installed = self.installed(device)
        path: list[Release] | None = None
        if installed is None:
            entry.add_reason(
                Reason("no_path", "installed firmware unknown: the device has not reported it")
            )
        elif not is_newer(self.target.version, installed):
            entry.add_reason(
                Reason(
                    "already_current",
                    f"{device.installed_text} is installed, the target {self.target.text} or newer",
                )
            )
        elif not self.releases.applies_to(device.model):
            entry.add_reason(
                Reason("no_path", f"the release catalogue has no firmware for {device.model}")
            )
        else:
            path = self.path(installed, start)
            if path is None:
                entry.add_reason(
                    Reason(
                        "no_path",
                        f"no catalogue steps lead from {device.installed_text} to "
                        f"{self.target.text}",
                    )
                )
        if device.open_tickets:
            entry.add_reason(
                Reason("open_ticket", f"open fault ticket {', '.join(device.open_tickets)}")
            )
        if device.health == "unreachable":
            entry.add_reason(Reason("unreachable", "the device does not answer its agent"))
        elif device.health == "fault" or set(device.problems) & BLOCKING_PROBLEMS:
            problems = ", ".join(fault_text(p, "en") for p in device.problems) or device.health
            entry.add_reason(Reason("unhealthy", f"health {device.health}: {problems}"))
        if device.penalty:
            entry.add_reason(Reason("in_penalty_box", device.penalty))
        return entry, path if entry.status is DeviceStatus.PLANNED else None

    def assign(
        self, entries: list[DeviceEntry], paths: Mapping[str, list[Release]], start: date
    ) -> None:
        """Per site: units with no entitled moment held; the canary among those entitled on
        its night; shares of the rest; then each unit moved to a wave it is entitled in (S4)."""
        request = self.request
        last = self.waves - 1
        by_site: dict[str, list[DeviceEntry]] = defaultdict(list)
        schedules: dict[str, tuple[_Schedule, ...]] = {}
        for entry in entries:
            serial = entry.device.serial
            path = paths.get(serial)
            if path is None:
                continue
            installed = self.installed(entry.device)
            assert installed is not None
            found = self.schedules(path, installed, serial, entry.device.site, start)
            schedules[serial] = found
            if not any(schedule.entitled for schedule in found):
                # No entitled moment in any wave: held, told at its first chance (the last
                # one for a contract that starts only after every wave).
                refused = found[0].first_refused()
                late = refused is not None and refused[1].ended is None and refused[1].starts
                preferred = found[last] if late else found[0]
                entry.add_reason(
                    Reason("not_entitled", self.not_entitled_text(entry.device, preferred))
                )
                entry.hops = list(preferred.hops)
                entry.hops_json = self.hops_json(preferred)
                day = warsaw_date(preferred.hops[0].install_at)
                entry.eligibility = self.eligibility(serial, day)
                continue
            by_site[entry.device.site].append(entry)
        for site, site_entries in sorted(by_site.items()):
            agents = [e for e in site_entries if e.channel == "agent"]
            pool = [e for e in agents if schedules[e.device.serial][0].entitled]
            canary = self.canary(pool)
            for entry in canary:
                entry.wave = 0
            if agents and request.canary > 0 and not canary:
                self.wave_notes[0].append(
                    WaveNote(
                        code="no_canary",
                        site=site,
                        text=f"no unit at {site} can be updated by its agent on the canary "
                        f"night ({len(agents)} to update, none entitled then): its later "
                        "waves run without a canary of its own",
                    )
                )
            rest = [e for e in agents if e.wave is None]
            rest.sort(key=lambda e: (e.device.model, e.device.provider, e.device.serial))
            taken = 0
            for index, share in enumerate(request.waves, start=1):
                upto = math.ceil(len(rest) * share / 100)
                for entry in rest[taken:upto]:
                    entry.wave = index
                taken = max(taken, upto)
            for entry in site_entries:
                if entry.channel == "teams_admin_center":
                    entry.wave = last
            for entry in site_entries:
                self.settle(entry, schedules[entry.device.serial])

    def settle(self, entry: DeviceEntry, schedules: tuple[_Schedule, ...]) -> None:
        """Its hops from its wave's window on; another wave when not entitled in it (S4).
        All but its calendar is the same for every unit with the same schedules and wave
        (``schedules`` is shared by them): worked out once, by ``settle_shape``."""
        assert entry.wave is not None
        key = (id(schedules), entry.wave)
        settled = self._settled.get(key)
        if settled is None:
            settled = self.settle_shape(entry.device.serial, entry.wave, schedules)
            self._settled[key] = settled
        entry.wave = settled.wave
        entry.hops = list(settled.schedule.hops)
        entry.hops_json = settled.hops_json
        entry.window = settled.window
        entry.window_json = settled.window_json
        entry.notes.extend(settled.notes)
        entry.eligibility = settled.eligibility
        calendar = self.calendars.get(entry.device.serial)
        if calendar is not None:
            zone = self.zone(entry.device.site)
            seen: dict[int, Night] = {id(n): n for n in settled.schedule.nights}
            meetings = sorted(
                {m for n in seen.values() for m in calendar.in_window(n.start, n.end)}
            )
            entry.calendar = {
                "state": calendar.state,
                "read_at": calendar.read_at.isoformat() if calendar.read_at else None,
                "meetings": meetings_json(meetings, zone),
                **({} if calendar.state == "read" else {"text": calendar.free_text()}),
            }

    def settle_shape(self, serial: str, planned: int, schedules: tuple[_Schedule, ...]) -> _Settled:
        """``settle`` for the first unit of its schedules and wave (``serial``)."""
        chosen = planned
        notes: list[Reason] = []
        if not schedules[planned].entitled:
            earlier = [w for w in range(planned - 1, -1, -1) if schedules[w].entitled]
            later = [w for w in range(planned + 1, self.waves) if schedules[w].entitled]
            name = self.wave_name
            if earlier:
                chosen = earlier[0]
                ends = min(h.entitled_until for h in schedules[chosen].hops if h.entitled_until)
                notes.append(
                    Reason(
                        "moved_earlier",
                        f"moved from wave {planned} to wave {chosen} ({name(planned)} to "
                        f"{name(chosen)}): its entitlement ends on {ends.isoformat()}, "
                        f"before wave {planned} opens",
                    )
                )
            else:
                chosen = later[0]
                refused = schedules[planned].first_refused()
                assert refused is not None
                starts = refused[1].starts
                when = f"starts on {starts.isoformat()}" if starts else "starts later"
                notes.append(
                    Reason(
                        "moved_later",
                        f"moved from wave {planned} to wave {chosen} ({name(planned)} to "
                        f"{name(chosen)}): its contract {when}, after wave {planned} opens",
                    )
                )
        schedule = schedules[chosen]
        first = schedule.nights[0]
        nights = schedule.nights
        later = [index for index in range(1, len(nights)) if nights[index] is not nights[index - 1]]
        for index in later:
            night = nights[index]
            notes.append(
                Reason(
                    "resumes_next_window",
                    f"hop {index + 1} of {len(nights)} ({schedule.hops[index].version}) does "
                    f"not fit in the window before it: it resumes in the window of "
                    f"{moment_text(night.local(night.start))}",
                )
            )
        return _Settled(
            wave=chosen,
            schedule=schedule,
            hops_json=self.hops_json(schedule),
            window=(first.local(first.start), first.local(first.end)),
            window_json=self.window_json(first),
            notes=tuple(notes),
            eligibility=self.eligibility(serial, warsaw_date(schedule.hops[0].install_at)),
        )

    def wave_name(self, wave: int) -> str:
        return "canary" if wave == 0 else f"{self.request.waves[wave - 1]}%"

    def canary(self, pool: list[DeviceEntry]) -> list[DeviceEntry]:
        """The healthiest of the most common model and mode among ``pool``."""
        if not pool or self.request.canary == 0:
            return []
        kinds = Counter((e.device.model, e.device.provider) for e in pool)
        # Most common first; a tie goes to the alphabetically first, so plans are repeatable.
        model, provider = min(kinds, key=lambda kind: (-kinds[kind], kind))
        chosen = [e for e in pool if (e.device.model, e.device.provider) == (model, provider)]
        chosen.sort(
            key=lambda e: (
                _HEALTH_RANK.get(e.device.health, 3),
                len(e.device.problems),
                e.device.serial,
            )
        )
        return chosen[: self.request.canary]

    def wave_list(self, entries: list[DeviceEntry], start: date) -> tuple[Wave, ...]:
        members: dict[int, list[str]] = defaultdict(list)
        for entry in entries:
            if entry.wave is not None:
                members[entry.wave].append(entry.device.serial)
        sites = sorted({entry.device.site for entry in entries}) or sorted(self.zones)
        waves: list[Wave] = []
        for index in range(self.waves):
            nights = [self.night(site, index, start) for site in sites]
            opens = [night.local(night.start) for night in nights]
            waves.append(
                Wave(
                    index=index,
                    name=self.wave_name(index),
                    opens_at=min(opens, key=utc) if opens else None,
                    devices=tuple(members[index]),
                    notes=tuple(self.wave_notes.get(index, ())),
                )
            )
        return tuple(waves)


def plan_rollout(
    request: PlanRequest,
    devices: Sequence[PlanDevice],
    *,
    site_zones: Mapping[str, str],
    assets: Mapping[str, Asset],
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    now: datetime,
    calendars: Mapping[str, RoomCalendar] | None = None,
) -> RolloutPlan:
    """The plan for ``request`` over ``devices`` at ``now``; PlanError names a bad request."""
    request.check()
    unknown_sites = sorted(set(request.sites) - set(site_zones))
    if unknown_sites:
        raise PlanError("site", f"no site {', '.join(unknown_sites)}")
    planner = _Planner(request, devices, site_zones, assets, plans, releases, now, calendars or {})
    return planner.plan()


# -- the plan as CSV --------------------------------------------------------------------------

#: The ``--csv`` columns: one row per hop (a device without hops has one row with none).
CSV_COLUMNS = (
    "serial",
    "site",
    "room",
    "model",
    "provider",
    "installed",
    "channel",
    "wave",
    "window_start",
    "window_end",
    "status",
    "reasons",
    "reason_texts",
    "hop",
    "hop_version",
    "hop_kind",
    "install_at",
    "entitled",
    "entitled_until",
)


def csv_rows(devices: Iterable[Mapping[str, Any]]) -> Iterable[dict[str, str]]:
    """The rows of ``--csv`` for device entries as a plan's JSON holds them."""

    def text(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    for device in devices:
        window = device.get("window") or {}
        common = {
            "serial": device["serial"],
            "site": device["site"],
            "room": text(device.get("room")),
            "model": device["model"],
            "provider": device["provider"],
            "installed": text(device.get("installed")),
            "channel": device["channel"],
            "wave": text(device.get("wave")),
            "window_start": text(window.get("start")),
            "window_end": text(window.get("end")),
            "status": device["status"],
            "reasons": " ".join(reason["code"] for reason in device["reasons"]),
            "reason_texts": " | ".join(reason["text"] for reason in device["reasons"]),
        }
        hops = device.get("hops") or []
        if not hops:
            yield {**common, **dict.fromkeys(CSV_COLUMNS[13:], "")}
        for index, hop in enumerate(hops, start=1):
            yield {
                **common,
                "hop": str(index),
                "hop_version": hop["version"],
                "hop_kind": hop["kind"],
                "install_at": hop["install_at"],
                "entitled": text(hop["entitled"]),
                "entitled_until": text(hop.get("entitled_until")),
            }


def render_csv(devices: Iterable[Mapping[str, Any]]) -> str:
    """The plan's devices as CSV text (header first), as ``csv.DictReader`` reads it back."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(csv_rows(devices))
    return out.getvalue()


# -- running: the rules the execution applies ------------------------------------------------

#: Statuses of an entry whose part in the rollout is over.
FINAL_STATUSES = frozenset(status for status, moves in DEVICE_MOVES.items() if not moves)
#: A device whose update fails this often (counting failures that penalise) goes to the
#: penalty box (NervesHub's rule).
PENALTY_AFTER_FAILURES = 2

#: What a failure leads to next: another attempt in the same window, the device's next
#: window, or the end of its part in the rollout.
Then = Literal["retry", "next_window", "fail"]


@dataclass(frozen=True, kw_only=True)
class FailureRule:
    """What one kind of failed job means for its device and for the rollout."""

    #: Counts for the abort criteria of failure type ``any``: the firmware or its package
    #: may be to blame.
    counts: bool
    #: Counts toward the penalty box: the unit itself failed its update.
    penalises: bool
    then: Then
    #: A fault ticket for the unit: it may be bricked.
    ticket: bool = False
    #: The status it waits in for its next attempt: it says why it waits.
    waits_as: DeviceStatus = DeviceStatus.WAITING_WINDOW


#: The meaning of each failure code of a failed job. A unit the update never touched is
#: not punished for it; only failures the firmware or its package may cause count.
FAILURE_RULES: dict[FailureCode, FailureRule] = {
    FailureCode.DID_NOT_RETURN: FailureRule(counts=True, penalises=True, then="fail", ticket=True),
    FailureCode.INSTALL_FAILED: FailureRule(counts=True, penalises=True, then="retry"),
    FailureCode.VERIFICATION_FAILED: FailureRule(counts=True, penalises=True, then="retry"),
    # Nothing it says is trusted until an admin re-pins it: trying again cannot reach it.
    FailureCode.CERTIFICATE_CHANGED: FailureRule(counts=True, penalises=True, then="fail"),
    # The same package would reach every unit: a wave of these is what the breaker is for.
    FailureCode.CHECKSUM_MISMATCH: FailureRule(counts=True, penalises=False, then="next_window"),
    FailureCode.DOWNLOAD_FAILED: FailureRule(counts=False, penalises=False, then="next_window"),
    FailureCode.DEVICE_UNREACHABLE: FailureRule(counts=False, penalises=False, then="next_window"),
    FailureCode.DEVICE_ERROR: FailureRule(counts=False, penalises=False, then="next_window"),
    FailureCode.IN_CALL: FailureRule(counts=False, penalises=False, then="next_window"),
    FailureCode.UPLOAD_FAILED: FailureRule(counts=False, penalises=False, then="next_window"),
    # Nothing was done to the unit; its room is free another night.
    FailureCode.ROOM_BOOKED: FailureRule(
        counts=False,
        penalises=False,
        then="next_window",
        waits_as=DeviceStatus.POSTPONED_BOOKED,
    ),
    FailureCode.NOT_AT_SITE: FailureRule(counts=False, penalises=False, then="fail"),
    FailureCode.NOT_SUPPORTED: FailureRule(counts=False, penalises=False, then="fail"),
}
#: A failed job without a code (an agent from before codes): every failure counts and
#: penalises, and is tried again, as it always was...
UNCODED_FAILURE = FailureRule(counts=True, penalises=True, then="retry")
#: ...but for a unit that did not come back, which such agents name in their detail.
_UNCODED_DID_NOT_RETURN = "did_not_return"


#: A failed check (the agent's ``code: text`` detail, or the controller's own) in words, for
#: the texts the API, the CLI and the pages show; an unknown one gets its words unjoined.
CHECK_TEXT: Mapping[str, str] = {
    "install": "the install failed",
    "install_failed": "the install failed",
    "did_not_return": "did not come back",
    "returned": "did not come back",
    "version": "not on the target version",
    "verification_failed": "the new version could not be confirmed",
    "provider": "came back in another mode",
    "camera_up": "its camera is not up",
    "microphone_up": "its microphones are not up",
    "no_new_problems": "new problems after the update",
    "certificate": "its certificate changed",
    "certificate_changed": "its certificate changed",
    "download_failed": "the package could not be downloaded",
    "checksum_mismatch": "the package's checksum did not match",
    "teams_not_delivered": "the Teams admin center did not deliver it",
    "unreachable": "did not answer",
    "device_unreachable": "did not answer",
    "device_error": "the device refused",
    "failed": "failed",
}
_CODED_DETAIL = re.compile(r"^[a-z]+(?:_[a-z]+)*: ")


def check_text(check: str) -> str:
    """``did_not_return`` -> "did not come back"."""
    return CHECK_TEXT.get(check, check.replace("_", " "))


def detail_text(detail: str) -> str:
    """An agent's ``code: text`` detail without its code (the check says it in words)."""
    return _CODED_DETAIL.sub("", detail, count=1)


def failure_rule(code: str | None, check: str) -> FailureRule:
    """The rule for a failed job's ``code``; without one (or one this controller does not
    know), what its ``check`` (the detail's first word) meant before codes existed."""
    if code is not None:
        try:
            return FAILURE_RULES[FailureCode(code)]
        except ValueError:
            pass
    if check == _UNCODED_DID_NOT_RETURN:
        return FAILURE_RULES[FailureCode.DID_NOT_RETURN]
    return UNCODED_FAILURE


def recorded_rule(failure: Mapping[str, Any]) -> FailureRule:
    """The rule of a failure as an entry's ``failures`` keeps it."""
    return failure_rule(failure.get("code"), str(failure.get("check") or ""))


def penalty_due(failures: Sequence[Mapping[str, Any]]) -> bool:
    """Whether these failures put the device in the penalty box."""
    return sum(recorded_rule(f).penalises for f in failures) >= PENALTY_AFTER_FAILURES


# -- abort criteria ---------------------------------------------------------------------------

#: Failure type of a criterion that counts every failure whose rule counts.
ANY_FAILURE = "any"
FAILURE_TYPES: tuple[str, ...] = (ANY_FAILURE, *(code.value for code in FailureCode))
#: Which waves a criterion watches: the canary wave, or each later wave on its own.
CriterionWaves = Literal["canary", "later"]
_CRITERION_WAVES = ("canary", "later")
_CRITERION_KEYS = frozenset({"waves", "failure_type", "threshold_percent", "min_executed"})
MAX_ABORT_CRITERIA = 16


@dataclass(frozen=True, kw_only=True)
class AbortCriterion:
    """When the breaker halts a rollout, as data (as AWS IoT Jobs states abort criteria):
    a wave halts it once at least ``min_executed`` of its devices have run and those failing
    with ``failure_type`` are more than ``threshold_percent`` of the wave."""

    waves: CriterionWaves
    failure_type: str = ANY_FAILURE
    threshold_percent: float
    min_executed: int = 1

    def watches(self, wave: int) -> bool:
        return (wave == 0) == (self.waves == "canary")

    def matches(self, failure: Mapping[str, Any]) -> bool:
        """Whether a recorded failure is of this criterion's type."""
        if self.failure_type == ANY_FAILURE:
            return recorded_rule(failure).counts
        return failure.get("code") == self.failure_type

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        """The criterion as ``rollout plan --abort`` takes it (``parse_abort_text``)."""
        parts = [self.waves, f"{self.threshold_percent:g}%"]
        if self.min_executed != 1:
            parts.append(f"min={self.min_executed}")
        if self.failure_type != ANY_FAILURE:
            parts.append(f"type={self.failure_type}")
        return ":".join(parts)

    def describe(self) -> str:
        """The criterion in words, for people."""
        which = "the canary wave" if self.waves == "canary" else "each later wave"
        kind = "" if self.failure_type == ANY_FAILURE else f" with {self.failure_type}"
        ran = "" if self.min_executed == 1 else f", once {self.min_executed} of them have run"
        return (
            f"{which} halts when more than {self.threshold_percent:g}% of its devices "
            f"fail{kind}{ran}"
        )

    @classmethod
    def from_json(cls, doc: Any, where: str = "abort_criteria") -> AbortCriterion:
        """A criterion from its JSON form; PlanError names the key to fix."""
        if not isinstance(doc, Mapping):
            raise PlanError(where, "an object with waves, failure_type, threshold_percent")
        unknown = sorted(set(doc) - _CRITERION_KEYS)
        if unknown:
            raise PlanError(f"{where}.{unknown[0]}", f"not a key of an abort criterion: "
                            f"{', '.join(sorted(_CRITERION_KEYS))}")  # fmt: skip
        waves = doc.get("waves")
        if waves not in _CRITERION_WAVES:
            raise PlanError(f"{where}.waves", f"{waves!r}: canary or later")
        failure_type = doc.get("failure_type", ANY_FAILURE)
        if failure_type not in FAILURE_TYPES:
            raise PlanError(
                f"{where}.failure_type", f"{failure_type!r}: one of {', '.join(FAILURE_TYPES)}"
            )
        threshold = doc.get("threshold_percent")
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise PlanError(f"{where}.threshold_percent", f"{threshold!r}: a number 0 to 100")
        if not 0 <= threshold <= 100:
            raise PlanError(f"{where}.threshold_percent", f"{threshold}: a number 0 to 100")
        executed = doc.get("min_executed", 1)
        if isinstance(executed, bool) or not isinstance(executed, int) or executed < 1:
            raise PlanError(f"{where}.min_executed", f"{executed!r}: a whole number, 1 or more")
        return cls(
            waves=waves,
            failure_type=str(failure_type),
            threshold_percent=float(threshold),
            min_executed=executed,
        )


def default_abort_criteria(max_failures: int = DEFAULT_MAX_FAILURES) -> tuple[AbortCriterion, ...]:
    """Any failure among the canaries halts; a later wave halts past ``max_failures`` %."""
    return (
        AbortCriterion(waves="canary", threshold_percent=0.0),
        AbortCriterion(waves="later", threshold_percent=float(max_failures)),
    )


def parse_abort_criteria(value: Any) -> tuple[AbortCriterion, ...]:
    """The API's ``abort_criteria`` (a list of criteria); PlanError names the one to fix."""
    if not isinstance(value, list):
        raise PlanError("abort_criteria", "a list of criteria expected")
    if len(value) > MAX_ABORT_CRITERIA:
        raise PlanError("abort_criteria", f"at most {MAX_ABORT_CRITERIA} criteria")
    return tuple(
        AbortCriterion.from_json(item, f"abort_criteria.{index}")
        for index, item in enumerate(value)
    )


#: What ``parse_abort_text`` reads after ``WAVES:PERCENT%``, and the JSON key of each.
_ABORT_TEXT_KEYS = {"min": "min_executed", "type": "failure_type"}


def parse_abort_text(text: str) -> AbortCriterion:
    """A criterion written ``WAVES:PERCENT%[:min=N][:type=FAILURE]`` (``later:10%:min=5``),
    as ``rollout plan --abort`` takes it; PlanError (field ``abort_criteria``) says what to fix.
    """
    usage = "WAVES:PERCENT% with optional :min=N and :type=FAILURE, e.g. later:10%:min=5"
    parts = [part.strip() for part in text.split(":")]
    if len(parts) < 2:
        raise PlanError("abort_criteria", f"{text!r} is not {usage}")
    doc: dict[str, Any] = {"waves": parts[0]}
    try:
        doc["threshold_percent"] = float(parts[1].removesuffix("%").strip())
    except ValueError:
        raise PlanError("abort_criteria", f"{text!r}: {parts[1]!r} is not a percentage") from None
    for part in parts[2:]:
        name, equals, value = part.partition("=")
        key = _ABORT_TEXT_KEYS.get(name.strip())
        if not equals or key is None or key in doc:
            raise PlanError("abort_criteria", f"{text!r}: {part!r} is not min=N or type=FAILURE")
        value = value.strip()
        doc[key] = int(value) if key == "min_executed" and value.isdigit() else value
    try:
        return AbortCriterion.from_json(doc)
    except PlanError as exc:
        key = exc.field.rpartition(".")[2] if exc.field else ""
        label = {"threshold_percent": "PERCENT ", "min_executed": "min ", "failure_type": "type "}
        raise PlanError("abort_criteria", f"{text!r}: {label.get(key, '')}{exc.reason}") from None


def stored_abort_criteria(header: Mapping[str, Any]) -> tuple[AbortCriterion, ...]:
    """A stored rollout's criteria; one stored before they were kept reads the defaults
    (with its own ``max_failures``)."""
    stored = header.get("abort_criteria")
    if stored is None:
        return default_abort_criteria(int(header.get("max_failures", DEFAULT_MAX_FAILURES)))
    return parse_abort_criteria(stored)


def breaker(
    wave: int,
    entries: Sequence[Mapping[str, Any]],
    criteria: Sequence[AbortCriterion],
    acknowledged: frozenset[str] = frozenset(),
) -> dict[str, Any] | None:
    """Why the rollout must halt for what ``wave``'s entries show, or None (circuit breaker).

    ``acknowledged``: devices whose failures an admin has seen and resumed past; they no
    longer count (their own retries and the penalty box still apply).
    """
    members = [e for e in entries if e.get("wave") == wave and e.get("channel") == "agent"]
    executed = sum(
        1 for e in members if e["status"] in (DeviceStatus.DONE, DeviceStatus.FAILED)
        or e.get("failures")
    )  # fmt: skip
    for criterion in criteria:
        if not criterion.watches(wave) or executed < criterion.min_executed:
            continue
        failed = [
            e
            for e in members
            if e["serial"] not in acknowledged
            and any(criterion.matches(f) for f in e.get("failures") or ())
        ]
        share = 100.0 * len(failed) / max(len(members), 1)
        if not failed or share <= criterion.threshold_percent:
            continue
        return _halt(wave, failed, len(members), share, criterion)
    return None


def _halt(
    wave: int,
    failed: Sequence[Mapping[str, Any]],
    members: int,
    share: float,
    criterion: AbortCriterion,
) -> dict[str, Any]:
    devices = [
        {
            "serial": e["serial"],
            "check": (e.get("failures") or [{}])[-1].get("check", "failed"),
            "detail": (e.get("failures") or [{}])[-1].get("detail", ""),
        }
        for e in failed
    ]
    names = ", ".join(f"{d['serial']} ({check_text(str(d['check']))})" for d in devices)
    kind = (
        "" if criterion.failure_type == ANY_FAILURE else f" ({check_text(criterion.failure_type)})"
    )
    if wave == 0:
        reason = f"a canary failed{kind}: {names}"
    else:
        reason = (
            f"wave {wave}: {len(failed)} of {members} devices failed{kind} "
            f"({share:.0f}% > {criterion.threshold_percent:g}%): {names}"
        )
    return {"reason": reason, "wave": wave, "devices": devices}


def entry_night(
    window: Window, wave_gap: timedelta, wave: int | None, stored: Mapping[str, Any], zone: tzinfo
) -> Night:
    """The night an entry's stored window (``{start, end}``) belongs to, so that the next
    one is the same window a day later, as it really falls then."""
    _days, offset = split_shift(wave_gap * (wave or 0))
    # The site's date of its start: a start moved past a spring-forward jump stays that day.
    day = (datetime.fromisoformat(str(stored["start"])) - offset).astimezone(zone).date()
    return window.night(day, zone, offset)


@dataclass(frozen=True, kw_only=True)
class Placement:
    """Where a waiting hop goes when it gets a new install moment, judged there (S4)."""

    night: Night | None
    verdict: MomentVerdict
    #: The contract starts later: the first night inside it, the day it starts.
    waits_for_contract: date | None = None

    @property
    def held(self) -> bool:
        return self.night is None


def place_entitled(cover: Covering, kind: str, night: Night, earliest: datetime) -> Placement:
    """The first night from ``night`` on still open at ``earliest`` in which a hop of ``kind``
    is entitled at its moment (S4): a contract that starts later waits for its first day;
    one that ended, or none, holds the unit (``night`` None). At run time a hop starts while
    its window is open."""
    found = night.first_ending_after(earliest)
    moment = max(found.start, earliest)
    verdict = judge_moment(cover, kind, moment)
    if verdict.entitled:
        return Placement(night=found, verdict=verdict)
    if verdict.starts is None:
        return Placement(night=None, verdict=verdict)
    starts = verdict.starts
    # The contract starts later: its first day's window (a day of slack for the zone).
    later = found.window.night(starts - timedelta(days=1), found.zone, found.offset)
    later = later.first_existing()
    while warsaw_date(later.start) < starts:
        later = later.following()
    verdict = judge_moment(cover, kind, later.start)
    return Placement(
        night=later if verdict.entitled else None, verdict=verdict, waits_for_contract=starts
    )


def not_entitled_now(hop: Mapping[str, Any], verdict: MomentVerdict, moment: datetime) -> str:
    """Why a waiting hop is held at its new install moment (S4)."""
    return f"hop to {hop.get('version')} ({verdict.kind}) at {moment_text(moment)}: {verdict.why()}"
