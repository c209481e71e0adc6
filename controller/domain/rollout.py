"""Firmware rollout planning: devices, catalogues, contracts and now in; waves, hops, reasons out.

A plan puts every device in scope into one of three states:

- ``planned``: it gets a wave and a window (site time), and one hop per catalogue step from
  its installed version to the target (E7), each judged for entitlement at its planned
  install time (S3, S4). Teams mode units are planned too, as ``teams_admin_center``: the
  rollout tracks and verifies them, it never orders them.
- ``held``: it could be updated but not now (open ticket, unhealthy, unreachable, penalty
  box, or no entitlement at any wave's time): no wave.
- ``excluded``: it will not be updated by this rollout (already current, no path, an E70
  that follows its host, or the admin said so): no wave.

Wave 0 is the canary: per site, the healthiest devices of the most common model and mode
among those the rollout updates itself. The other waves take cumulative shares of each
site's remaining devices (``10%,50%,100%``). A device whose entitlement window closes
before its wave is moved to the latest earlier wave that is still inside it (S4), and its
entry says so in ``notes``.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo

from polyfleet.controller.domain.assets import Asset
from polyfleet.controller.domain.calendar import warsaw_date
from polyfleet.controller.domain.entitlement import Span, coverage
from polyfleet.controller.domain.plans import PlanCatalogue
from polyfleet.controller.domain.releases import Release, ReleaseCatalogue, hop_kind, is_newer
from polyfleet.controller.errors import Conflict, Invalid
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
#: The planned spacing of two hops of one device inside its window: install, reboot, verify.
HOP_SPACING = timedelta(minutes=45)

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
REASON_CODES: tuple[str, ...] = (
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
)
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
    DeviceStatus.WAITING_WINDOW: frozenset(
        {
            DeviceStatus.WAITING_WINDOW,  # its window passed: the next one
            DeviceStatus.DOWNLOADING,  # ordered
            DeviceStatus.DONE,  # a Teams unit reported on the target
            DeviceStatus.FAILED,  # a Teams unit not on it when its window closed
            DeviceStatus.SKIPPED,  # abort
        }
    ),
    **{
        status: UNDER_WAY  # the agent's progress, in any order (an agent resumes a job)
        | {
            DeviceStatus.WAITING_WINDOW,  # a hop done with more to go, a retry, a refusal
            DeviceStatus.DONE,
            DeviceStatus.FAILED,
        }
        for status in UNDER_WAY
    },
    DeviceStatus.DONE: frozenset(),
    DeviceStatus.FAILED: frozenset(),
    DeviceStatus.SKIPPED: frozenset(),
}


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


class PlanError(Invalid, ValueError):
    """A plan request that cannot be planned (422 ``invalid_plan``); ``field`` names the flag
    or key to fix, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}", code="invalid_plan", field=field)
        self.reason = reason


@dataclass(frozen=True)
class Window:
    """A daily maintenance window in site time; ``end`` before ``start`` crosses midnight."""

    start: time
    end: time

    @classmethod
    def parse(cls, text: str) -> Window:
        """``HH:MM-HH:MM``; PlanError names the problem."""
        parts = text.strip().split("-")
        if len(parts) != 2:
            raise PlanError("window", f"{text!r} is not HH:MM-HH:MM (e.g. 01:00-05:00)")
        try:
            start, end = (time.fromisoformat(part.strip()) for part in parts)
        except ValueError:
            raise PlanError("window", f"{text!r} is not HH:MM-HH:MM (e.g. 01:00-05:00)") from None
        if start == end:
            raise PlanError("window", f"{text!r} is empty: start and end are the same time")
        return cls(start.replace(second=0, microsecond=0), end.replace(second=0, microsecond=0))

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    def on(
        self, day: date, zone: tzinfo, shift: timedelta = timedelta(0)
    ) -> tuple[datetime, datetime]:
        """The window opening on ``day`` in ``zone`` (wall clock, shifted by ``shift``), DST-right.

        Wall-clock arithmetic first, then the zone: a window at 01:00 stays at 01:00 local
        on both sides of a DST change. A start that does not exist (spring forward) is read
        as the same instant after the jump; an ambiguous one takes its first occurrence.
        """
        local_start = datetime.combine(day, self.start) + shift
        local_end = datetime.combine(day, self.end) + shift
        if self.end <= self.start:
            local_end += timedelta(days=1)
        return _localise(local_start, zone), _localise(local_end, zone)


def _localise(naive: datetime, zone: tzinfo) -> datetime:
    # Round-trip through UTC so that a time inside a spring-forward gap becomes a real one.
    return naive.replace(tzinfo=zone).astimezone(ZoneInfo("UTC")).astimezone(zone)


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


def parse_gap(text: str) -> timedelta:
    """``1d``, ``12h``, ``30m``: the time between two waves' windows."""
    text = text.strip().lower()
    units = {"d": timedelta(days=1), "h": timedelta(hours=1), "m": timedelta(minutes=1)}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) < 1:
        raise PlanError("wave_gap", f"{text!r} is not a duration such as 1d, 12h or 30m")
    return int(text[:-1]) * units[text[-1]]


def format_gap(gap: timedelta) -> str:
    minutes = int(gap.total_seconds()) // 60
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
        if self.wave_gap < timedelta(minutes=1):
            raise PlanError("wave_gap", "at least one minute between waves")


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
        if not self.version:
            return ""
        try:
            has_build = FirmwareVersion.parse(self.version).build != 0
        except VersionError:
            return self.version
        return f"{self.version}.{self.build}" if self.build and not has_build else self.version

    def installed(self) -> FirmwareVersion | None:
        try:
            return FirmwareVersion.parse(self.version, build=self.build or None)
        except VersionError:
            return None


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

    @property
    def status(self) -> DeviceStatus:
        if not self.reasons:
            return DeviceStatus.PLANNED
        codes = {reason.code for reason in self.reasons}
        if codes & EXCLUDING:
            return DeviceStatus.EXCLUDED
        if codes & HOLDING:
            return DeviceStatus.HELD
        return DeviceStatus.PLANNED

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
            "reasons": [reason.to_json() for reason in self.reasons],
            "notes": [note.to_json() for note in self.notes],
            "status": self.status.value,
        }


@dataclass(frozen=True, kw_only=True)
class Wave:
    index: int
    name: str
    opens_at: datetime | None
    devices: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "opens_at": self.opens_at.isoformat() if self.opens_at else None,
            "devices": list(self.devices),
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
        statuses = Counter(entry["status"] for entry in devices)
        reasons = Counter(reason["code"] for entry in devices for reason in entry["reasons"])
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
            "max_failures": request.max_failures,
            "abort_criteria": [criterion.to_json() for criterion in request.criteria],
            "per_site": request.per_site,
            "exclude": list(request.exclude),
            "waves": [wave.to_json() for wave in self.waves],
            "devices": devices,
            "summary": {
                "devices": len(devices),
                "by_status": dict(sorted(statuses.items())),
                "by_reason": {code: reasons[code] for code in REASON_CODES if reasons[code]},
            },
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
class _Covering:
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


_NOTHING = _Covering((), ())


def _covering(asset: Asset | None, plans: PlanCatalogue) -> _Covering:
    if asset is None:
        return _NOTHING
    cover = coverage(asset, plans)
    return _Covering(cover.patches.spans, cover.upgrades.spans)


def _covering_plans(plans: PlanCatalogue, kind: str) -> list[str]:
    """Plans whose contract would cover a hop of ``kind`` for its whole term (E4, S2)."""
    return [
        plan.id
        for plan in plans.plans.values()
        if plan.contract and (plan.upgrades if kind == "upgrade" else plan.patches_whole_term)
    ]


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
    ) -> None:
        self.request = request
        self.devices = devices
        self.assets = assets
        self.plans = plans
        self.releases = releases
        self.now = now
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
        self._covers: dict[tuple[Any, ...], _Covering] = {}
        self._installed: dict[tuple[str, str], FirmwareVersion | None] = {}
        self._windows: dict[tuple[str, int], tuple[datetime, datetime]] = {}
        self._hops: dict[tuple[Any, ...], list[Hop]] = {}
        self._hops_json: dict[int, list[dict[str, Any]]] = {}
        self._windows_json: dict[tuple[datetime, datetime], dict[str, str]] = {}
        self._texts: dict[tuple[str, str], str] = {}

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

    def cover(self, serial: str) -> _Covering:
        asset = self.assets.get(serial)
        if asset is None:
            return _NOTHING
        # The rights depend on dates and plans, not on contract numbers: devices bought
        # together under the same terms share them.
        key = (
            asset.purchase_date,
            tuple((c.plan, c.start, c.end, c.ineligible_rules) for c in asset.contracts),
        )
        found = self._covers.get(key)
        if found is None:
            found = self._covers[key] = _covering(asset, self.plans)
        return found

    def start_day(self) -> date:
        start = self.request.start
        if start is None:
            start = warsaw_date(self.now) + timedelta(days=1)
        # A day of slack: a site east of Warsaw may already be on the next date.
        elif start < warsaw_date(self.now) - timedelta(days=1):
            raise PlanError("start", f"{start.isoformat()} is in the past")
        if self.target.released > start:
            raise PlanError(
                "target",
                f"{self.target.text} is published on {self.target.released.isoformat()}, "
                f"after the start {start.isoformat()} (E7)",
            )
        return start

    def window(self, site: str, wave: int, start: date) -> tuple[datetime, datetime]:
        key = (site, wave)
        found = self._windows.get(key)
        if found is None:
            zone = self.zones.get(site, ZoneInfo("UTC"))
            found = self.request.window.on(start, zone, self.request.wave_gap * wave)
            self._windows[key] = found
        return found

    def hops(
        self,
        path: list[Release],
        installed: FirmwareVersion,
        cover: _Covering,
        window: tuple[datetime, datetime],
    ) -> list[Hop]:
        key = (installed, id(cover), window)
        found = self._hops.get(key)
        if found is None:
            found = self._hops[key] = self._compute_hops(path, installed, cover, window)
        return found

    def hops_json(self, hops: list[Hop]) -> list[dict[str, Any]]:
        found = self._hops_json.get(id(hops))
        if found is None:
            found = self._hops_json[id(hops)] = [hop.to_json() for hop in hops]
        return found

    def window_json(self, window: tuple[datetime, datetime]) -> dict[str, str]:
        found = self._windows_json.get(window)
        if found is None:
            found = {"start": window[0].isoformat(), "end": window[1].isoformat()}
            self._windows_json[window] = found
        return found

    def _compute_hops(
        self,
        path: list[Release],
        installed: FirmwareVersion,
        cover: _Covering,
        window: tuple[datetime, datetime],
    ) -> list[Hop]:
        hops: list[Hop] = []
        current = installed
        # Several hops share one window: spaced out, and never planned past its end.
        spacing = min(HOP_SPACING, (window[1] - window[0]) / max(len(path), 1))
        for index, release in enumerate(path):
            install_at = window[0] + spacing * index
            kind = hop_kind(current, release.version)  # S3
            span = cover.span(kind, warsaw_date(install_at))  # S4: judged at the install moment
            hops.append(
                Hop(
                    version=release.text,
                    kind=kind,
                    install_at=install_at,
                    entitled=span is not None,
                    entitled_until=span.end if span is not None else None,
                )
            )
            current = release.version
        return hops

    def not_entitled_text(self, hops: list[Hop], cover: _Covering, asset: Asset | None) -> str:
        hop = next(h for h in hops if not h.entitled)
        day = warsaw_date(hop.install_at)
        kind = "patches" if hop.kind == "patch" else "upgrades"
        if asset is None:
            why = "the device has no contract in the asset registry"
        elif (ended := cover.last_end_before(hop.kind, day)) is not None:
            why = f"its {kind} window closed on {ended.isoformat()}"
        elif (later := cover.next_span(hop.kind, day)) is not None:
            why = f"its {kind} window opens only on {later.start.isoformat()}"
        else:
            why = f"none of its contracts grants {kind}"
        covering = _covering_plans(self.plans, hop.kind)
        offer = f"; a {' or '.join(covering)} contract would cover it" if covering else ""
        return f"hop to {hop.version} ({hop.kind}) at {hop.install_at.isoformat()}: {why}{offer}"

    def plan(self) -> RolloutPlan:
        request = self.request
        start = self.start_day()
        sites = set(request.sites)
        models = set(request.models)
        excluded = set(request.exclude)
        entries: list[DeviceEntry] = []
        paths: dict[str, list[Release]] = {}
        covers: dict[str, _Covering] = {}
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
                covers[device.serial] = self.cover(device.serial)
        self.assign(entries, paths, covers, start)
        waves = self.wave_list(entries, start)
        return RolloutPlan(
            request=request,
            target=self.target.text,
            start=start,
            waves=waves,
            entries=tuple(entries),
        )

    def judge(
        self, device: PlanDevice, start: date, excluded: set[str]
    ) -> tuple[DeviceEntry, list[Release] | None]:
        """Channel and reasons of one device, and its path when it may get a wave."""
        if device.model in CAMERA_MODELS or (
            device.host_serial and not self.releases.applies_to(device.model)
        ):
            entry = DeviceEntry(device=device, channel="none")
            host = f" {device.host_serial}" if device.host_serial else ""
            entry.reasons.append(
                Reason("follows_host", f"an E70 camera: its firmware comes with its host{host}'s")
            )
            return entry, None
        teams = device.provider == "teams"
        entry = DeviceEntry(device=device, channel="teams_admin_center" if teams else "agent")
        if teams:
            entry.reasons.append(
                Reason(
                    "teams_managed",
                    "Teams mode: the Teams admin center delivers its firmware; "
                    f"the rollout checks that it reaches {self.target.text}",
                )
            )
        if device.serial in excluded:
            entry.reasons.append(Reason("excluded_by_admin", "left out by the admin (--exclude)"))
        installed = self.installed(device)
        path: list[Release] | None = None
        if installed is None:
            entry.reasons.append(
                Reason("no_path", "installed firmware unknown: the device has not reported it")
            )
        elif not is_newer(self.target.version, installed):
            entry.reasons.append(
                Reason(
                    "already_current",
                    f"{device.installed_text} is installed, the target {self.target.text} or newer",
                )
            )
        elif not self.releases.applies_to(device.model):
            entry.reasons.append(
                Reason("no_path", f"the release catalogue has no firmware for {device.model}")
            )
        else:
            path = self.path(installed, start)
            if path is None:
                entry.reasons.append(
                    Reason(
                        "no_path",
                        f"no catalogue steps lead from {device.installed_text} to "
                        f"{self.target.text}",
                    )
                )
        if device.open_tickets:
            entry.reasons.append(
                Reason("open_ticket", f"open fault ticket {', '.join(device.open_tickets)}")
            )
        if device.health == "unreachable":
            entry.reasons.append(Reason("unreachable", "the device does not answer its agent"))
        elif device.health == "fault" or set(device.problems) & BLOCKING_PROBLEMS:
            problems = ", ".join(device.problems) or device.health
            entry.reasons.append(Reason("unhealthy", f"health {device.health}: {problems}"))
        if device.penalty:
            entry.reasons.append(Reason("in_penalty_box", device.penalty))
        return entry, path if entry.status is DeviceStatus.PLANNED else None

    def assign(
        self,
        entries: list[DeviceEntry],
        paths: Mapping[str, list[Release]],
        covers: Mapping[str, _Covering],
        start: date,
    ) -> None:
        """Canary, then shares of the rest per site, then moves for closing windows (S4)."""
        request = self.request
        by_site: dict[str, list[DeviceEntry]] = defaultdict(list)
        for entry in entries:
            if entry.device.serial in paths:
                by_site[entry.device.site].append(entry)
        last = self.waves - 1
        for _site, site_entries in sorted(by_site.items()):
            agents = [e for e in site_entries if e.channel == "agent"]
            canary = self.canary(agents)
            for entry in canary:
                entry.wave = 0
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
        for entry in entries:
            if entry.wave is None:
                continue
            serial = entry.device.serial
            installed = self.installed(entry.device)
            assert installed is not None
            self.settle(entry, paths[serial], installed, covers[serial], start)

    def settle(
        self,
        entry: DeviceEntry,
        path: list[Release],
        installed: FirmwareVersion,
        cover: _Covering,
        start: date,
    ) -> None:
        """Hops at the wave's window; an earlier wave when entitlement ends first (S4)."""
        assert entry.wave is not None
        planned = entry.wave
        site = entry.device.site
        window = self.window(site, planned, start)
        hops = self.hops(path, installed, cover, window)
        if entry.channel == "agent" and not all(hop.entitled for hop in hops):
            # Waves before this one, latest first; the canary wave keeps its chosen few.
            for earlier in range(planned - 1, 0, -1):
                earlier_window = self.window(site, earlier, start)
                earlier_hops = self.hops(path, installed, cover, earlier_window)
                if all(hop.entitled for hop in earlier_hops):
                    ends = min(h.entitled_until for h in earlier_hops if h.entitled_until)
                    entry.notes.append(
                        Reason(
                            "moved_earlier",
                            f"moved from wave {planned} to wave {earlier}: its entitlement "
                            f"ends on {ends.isoformat()}, before wave {planned} opens",
                        )
                    )
                    entry.wave, window, hops = earlier, earlier_window, earlier_hops
                    break
        entry.hops = hops
        entry.hops_json = self.hops_json(hops)
        if entry.channel == "agent" and not all(hop.entitled for hop in hops):
            entry.reasons.append(
                Reason(
                    "not_entitled",
                    self.not_entitled_text(hops, cover, self.assets.get(entry.device.serial)),
                )
            )
            entry.wave = None
            entry.window = None
            return
        entry.window = window
        entry.window_json = self.window_json(window)

    def canary(self, agents: list[DeviceEntry]) -> list[DeviceEntry]:
        """The site's healthiest devices of its most common model and mode."""
        if not agents or self.request.canary == 0:
            return []
        kinds = Counter((e.device.model, e.device.provider) for e in agents)
        # Most common first; a tie goes to the alphabetically first, so plans are repeatable.
        model, provider = min(kinds, key=lambda kind: (-kinds[kind], kind))
        pool = [e for e in agents if (e.device.model, e.device.provider) == (model, provider)]
        pool.sort(
            key=lambda e: (
                _HEALTH_RANK.get(e.device.health, 3),
                len(e.device.problems),
                e.device.serial,
            )
        )
        return pool[: self.request.canary]

    def wave_list(self, entries: list[DeviceEntry], start: date) -> tuple[Wave, ...]:
        names = ["canary", *(f"{share}%" for share in self.request.waves)]
        members: dict[int, list[str]] = defaultdict(list)
        for entry in entries:
            if entry.wave is not None:
                members[entry.wave].append(entry.device.serial)
        sites = sorted({entry.device.site for entry in entries}) or sorted(self.zones)
        waves: list[Wave] = []
        for index, name in enumerate(names):
            opens = [self.window(site, index, start)[0] for site in sites]
            waves.append(
                Wave(
                    index=index,
                    name=name,
                    opens_at=min(opens) if opens else None,
                    devices=tuple(members[index]),
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
) -> RolloutPlan:
    """The plan for ``request`` over ``devices`` at ``now``; PlanError names a bad request."""
    request.check()
    unknown_sites = sorted(set(request.sites) - set(site_zones))
    if unknown_sites:
        raise PlanError("site", f"no site {', '.join(unknown_sites)}")
    return _Planner(request, devices, site_zones, assets, plans, releases, now).plan()


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
    FailureCode.NOT_AT_SITE: FailureRule(counts=False, penalises=False, then="fail"),
    FailureCode.NOT_SUPPORTED: FailureRule(counts=False, penalises=False, then="fail"),
}
#: A failed job without a code (an agent from before codes): every failure counts and
#: penalises, and is tried again, as it always was...
UNCODED_FAILURE = FailureRule(counts=True, penalises=True, then="retry")
#: ...but for a unit that did not come back, which such agents name in their detail.
_UNCODED_DID_NOT_RETURN = "did_not_return"


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
        return {
            "waves": self.waves,
            "failure_type": self.failure_type,
            "threshold_percent": self.threshold_percent,
            "min_executed": self.min_executed,
        }

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
    names = ", ".join(f"{d['serial']} ({d['check']})" for d in devices)
    kind = "" if criterion.failure_type == ANY_FAILURE else f" with {criterion.failure_type}"
    if wave == 0:
        reason = f"a canary failed{kind}: {names}"
    else:
        reason = (
            f"wave {wave}: {len(failed)} of {members} devices failed{kind} "
            f"({share:.0f}% > {criterion.threshold_percent:g}%): {names}"
        )
    return {"reason": reason, "wave": wave, "devices": devices}


def window_after(
    start: datetime, end: datetime, now: datetime, zone: tzinfo
) -> tuple[datetime, datetime]:
    """The same window on the first later day whose window ends after ``now`` (DST-right)."""
    local_start = start.astimezone(zone).replace(tzinfo=None)
    local_end = end.astimezone(zone).replace(tzinfo=None)
    days = 0
    while True:
        days += 1
        shift = timedelta(days=days)
        moved = (_localise(local_start + shift, zone), _localise(local_end + shift, zone))
        if moved[1] > now:
            return moved
