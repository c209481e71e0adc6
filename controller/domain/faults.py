"""Fault detection: debounce, clearing, flapping and site correlation over reports and events."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from polyfleet.controller.domain.timestamps import earlier
from polyfleet.shared.schema import PROBLEM_SEVERITY, HealthState, ProblemCode, Snapshot

DEFAULT_MIN_REPORTS = 2
DEFAULT_MIN_DURATION = timedelta(minutes=5)
#: Unreachable needs longer: a reboot or a short network blip must not file a ticket.
DEFAULT_UNREACHABLE_MIN_DURATION = timedelta(minutes=15)
DEFAULT_CLEAR_AFTER = timedelta(minutes=10)
DEFAULT_FLAP_WINDOW = timedelta(hours=1)
#: Appearances of one problem within the flap window that make it flapping.
DEFAULT_FLAP_COUNT = 3
#: A site is down when more than this share of its devices is unreachable together.
DEFAULT_SITE_UNREACHABLE_RATIO = 0.5
DEFAULT_SITE_MIN_DEVICES = 2
#: Problems worth a service ticket: hardware-looking faults, not configuration or credentials.
DEFAULT_TICKET_CODES = frozenset(
    {code.value for code, state in PROBLEM_SEVERITY.items() if state is HealthState.FAULT}
    | {ProblemCode.UNREACHABLE.value, ProblemCode.PERIPHERAL_DISCONNECTED.value}
)

UNREACHABLE = ProblemCode.UNREACHABLE.value
AGENT_OFFLINE = "agent_offline"
SITE_UNREACHABLE = "site_unreachable"
#: Layout of the detector's saved documents; a document of another version is refused.
STATE_VERSION = 1
#: Key prefix of a site's saved document (a device's is its serial).
SITE_KEY = "site:"
#: A device the detector has not heard of yet (its site may be None).
_UNSEEN = object()
_STALE = object()


@dataclass(frozen=True, kw_only=True)
class FaultPolicy:
    """How long a problem must hold before it is a fault, and when it is over."""

    min_reports: int = DEFAULT_MIN_REPORTS
    min_duration: timedelta = DEFAULT_MIN_DURATION
    unreachable_min_duration: timedelta = DEFAULT_UNREACHABLE_MIN_DURATION
    clear_after: timedelta = DEFAULT_CLEAR_AFTER
    flap_window: timedelta = DEFAULT_FLAP_WINDOW
    flap_count: int = DEFAULT_FLAP_COUNT
    site_unreachable_ratio: float = DEFAULT_SITE_UNREACHABLE_RATIO
    site_min_devices: int = DEFAULT_SITE_MIN_DEVICES
    ticket_codes: frozenset[str] = DEFAULT_TICKET_CODES

    def __post_init__(self) -> None:
        if self.min_reports < 1:
            raise ValueError(f"min_reports: {self.min_reports} must be at least 1")
        if self.flap_count < 2:
            raise ValueError(f"flap_count: {self.flap_count} must be at least 2")
        if not 0 < self.site_unreachable_ratio < 1:
            raise ValueError(f"site_unreachable_ratio: {self.site_unreachable_ratio} not in (0, 1)")
        unknown = self.ticket_codes - {code.value for code in ProblemCode}
        if unknown:
            raise ValueError(f"ticket_codes: unknown problem codes {sorted(unknown)}")

    def hold_time(self, code: str) -> timedelta:
        return self.unreachable_min_duration if code == UNREACHABLE else self.min_duration


class FaultEventKind(StrEnum):
    OPENED = "opened"  # a new fault: file a ticket
    RECURRED = "recurred"  # it was over and came back: reopen or note on the same ticket
    CLEARED = "cleared"  # gone for long enough: a recovery note
    FLAPPING = "flapping"  # an open fault is flapping: mark the ticket


@dataclass(frozen=True, kw_only=True)
class FaultEvent:
    """What the detector decided; ``subject`` is a serial, or ``site:ID`` for a site fault."""

    kind: FaultEventKind
    subject: str
    fault: str
    at: datetime
    site: str | None
    serial: str | None = None
    detail: str = ""
    first_seen: datetime | None = None
    host_serial: str | None = None
    model: str | None = None
    flapping: bool = False
    affected: tuple[str, ...] = ()
    evidence: tuple[dict[str, Any], ...] = ()

    @property
    def is_site(self) -> bool:
        return self.serial is None


def _site_event(
    kind: FaultEventKind,
    fault: str,
    site: str,
    at: datetime,
    *,
    first_seen: datetime | None = None,
    affected: tuple[str, ...] = (),
) -> FaultEvent:
    """A fault of a whole site (no serial: the subject names the site)."""
    return FaultEvent(
        kind=kind,
        subject=f"site:{site}",
        fault=fault,
        at=at,
        site=site,
        first_seen=first_seen,
        affected=affected,
    )


@dataclass
class _Track:
    """One (device, problem) pair: idle -> pending -> open (-> clearing -> idle)."""

    serial: str
    code: str
    site: str | None
    state: str = "idle"
    streak: int = 0
    first_seen: datetime | None = None
    #: The latest moment the problem was seen: a fault must be *seen* to persist.
    last_seen: datetime | None = None
    #: Started by the controller noticing silence: it persists until a report says otherwise.
    from_silence: bool = False
    gone_since: datetime | None = None
    appearances: list[datetime] = field(default_factory=list)
    flapping: bool = False
    opened_before: bool = False
    detail: str = ""
    host_serial: str | None = None
    model: str | None = None
    #: The reports that show it, in their stored JSON form (shared with the store: read-only).
    evidence: list[dict[str, Any]] = field(default_factory=list)

    @property
    def lasting(self) -> bool:
        """Whether the track holds anything a restart must not forget."""
        return self.state != "idle" or bool(self.appearances) or self.opened_before

    def milestone(self) -> tuple[Any, ...]:
        """What changes only on a transition (not on every report): the save trigger."""
        return (
            self.state,
            self.first_seen,
            self.gone_since,
            self.from_silence,
            self.flapping,
            self.opened_before,
            tuple(self.appearances),
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "streak": self.streak,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "from_silence": self.from_silence,
            "gone_since": _iso(self.gone_since),
            "appearances": [seen.isoformat() for seen in self.appearances],
            "flapping": self.flapping,
            "opened_before": self.opened_before,
            "detail": self.detail,
            "host_serial": self.host_serial,
            "model": self.model,
            "evidence": self.evidence_docs(),
        }

    def evidence_docs(self) -> list[dict[str, Any]]:
        return list(self.evidence)

    @classmethod
    def from_doc(cls, serial: str, code: str, site: str | None, doc: dict[str, Any]) -> _Track:
        state = doc["state"]
        if state not in _TRACK_STATES:
            raise ValueError(f"track {serial}/{code}: unknown state {state!r}")
        return cls(
            serial=serial,
            code=code,
            site=site,
            state=state,
            streak=int(doc["streak"]),
            first_seen=_moment(doc["first_seen"]),
            last_seen=_moment(doc["last_seen"]),
            from_silence=bool(doc["from_silence"]),
            gone_since=_moment(doc["gone_since"]),
            appearances=[datetime.fromisoformat(seen) for seen in doc["appearances"]],
            flapping=bool(doc["flapping"]),
            opened_before=bool(doc["opened_before"]),
            detail=str(doc["detail"]),
            host_serial=doc["host_serial"],
            model=doc["model"],
            evidence=list(doc["evidence"]),
        )


_TRACK_STATES = ("idle", "pending", "open", "clearing")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _moment(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@dataclass
class _SiteState:
    devices: set[str] = field(default_factory=set)
    agent_offline: bool = False
    majority_since: datetime | None = None
    unreachable_open: bool = False
    affected: tuple[str, ...] = ()

    @property
    def lasting(self) -> bool:
        return self.agent_offline or self.majority_since is not None or self.unreachable_open

    def milestone(self) -> tuple[Any, ...]:
        return (self.agent_offline, self.majority_since, self.unreachable_open, self.affected)


class FaultDetector:
    """A pure state machine: feed it snapshots and events with their time, act on what it returns.

    It holds no tickets; the ticket side maps each event onto the one ticket of that
    device (or site) and fault. Its state survives a restart through ``changes`` (what
    to save, only on transitions) and ``restore``: a pending fault keeps its hold time,
    an open one clears with a recovery, flapping and site outages are remembered.

    A report costs in proportion to its own problems and the device's faults in progress:
    a healthy report of a device with nothing pending or open reads no other device, walks
    no site and builds nothing to save (most reports of a fleet). A site is judged again
    when something at it changed (a device silent or back, joining or leaving, its agent
    offline or back), while its outage is waiting out its hold, and on every ``tick``.
    """

    def __init__(self, policy: FaultPolicy | None = None) -> None:
        self.policy = policy or FaultPolicy()
        #: serial -> problem code -> track; and the tracks not idle (what time can change).
        self._tracks: dict[str, dict[str, _Track]] = {}
        self._busy: dict[tuple[str, str], _Track] = {}
        self._sites: dict[str, _SiteState] = {}
        self._device_site: dict[str, str | None] = {}
        #: serial -> when its latest report was collected, as the report gave it (text: most
        #: reports are only compared with it, which needs no parse; see ``earlier``).
        self._last_report: dict[str, str] = {}
        #: host serial -> serials of cameras (E70) that report under their own entry.
        self._children: dict[str, set[str]] = {}
        self._host: dict[str, str] = {}
        #: Keys (serials, ``site:ID``) an input may have changed, and the milestone last saved.
        self._touched: set[str] = set()
        self._saved: dict[str, tuple[Any, ...]] = {}
        #: Sites where something changed since they were last judged, and sites whose outage
        #: waits out its hold (judged on every report from them, as time alone opens it).
        self._unjudged: set[str] = set()
        self._waiting: set[str] = set()
        #: serial -> how many of its tracks are not idle (absent: none).
        self._busy_count: dict[str, int] = {}

    def still_open(self, serial: str, fault: str) -> bool:
        """Whether the device's ``fault`` is open now: seen, held and not clearing."""
        track = self._tracks.get(serial, {}).get(fault)
        return track is not None and track.state == "open"

    # -- inputs -------------------------------------------------------------------

    def observe(self, snapshot: Snapshot, *, site: str | None, at: datetime) -> list[FaultEvent]:
        """One report of one device: its problems now, and proof that it is reachable."""
        serial = snapshot.serial
        previous_site = self._arrive(serial, snapshot.host_serial, site, at, at.isoformat())
        if previous_site is _STALE:
            return []
        if not snapshot.health.problems and serial not in self._busy_count:
            # The common case: a healthy report of a device with nothing pending or open.
            if site in self._unjudged or site in self._waiting or previous_site != site:
                return self._judge_sites(at, site, previous_site)
            return []
        return self._observe_tracks(snapshot.model_dump(mode="json"), site, at, previous_site)

    def observe_document(self, snap: dict[str, Any], *, site: str | None) -> list[FaultEvent]:
        """``observe`` for a report in its stored JSON form (kept as evidence, never changed)."""
        serial: str = snap["serial"]
        collected: str = snap["collected_at"]
        at = datetime.fromisoformat(collected)
        previous_site = self._arrive(serial, snap["host_serial"], site, at, collected)
        if previous_site is _STALE:
            return []
        if not snap["health"]["problems"] and serial not in self._busy_count:
            # As in ``observe``: a healthy quiet device needs none of the report's model.
            if site in self._unjudged or site in self._waiting or previous_site != site:
                return self._judge_sites(at, site, previous_site)
            return []
        return self._observe_tracks(snap, site, at, previous_site)

    def observe_documents(
        self, snaps: Iterable[dict[str, Any]], *, site: str | None
    ) -> list[FaultEvent]:
        """``observe_document`` for one site's reports in order (a batch), quicker per report.

        Most reports are healthy reports of a quiet device that is known at this site: all they
        change is the time of its latest report. Anything else takes the whole way.
        """
        events: list[FaultEvent] = []
        last_report = self._last_report
        device_site = self._device_site
        host_of = self._host
        busy = self._busy_count
        settled = site not in self._unjudged and site not in self._waiting
        for snap in snaps:
            serial: str = snap["serial"]
            host: str | None = snap["host_serial"]
            if (
                not settled
                or serial in busy
                or snap["health"]["problems"]
                or device_site.get(serial, _UNSEEN) != site
                or (host is not None and host_of.get(serial) != host)
            ):
                events += self.observe_document(snap, site=site)
                # That may have changed whether the site waits to be judged.
                settled = site not in self._unjudged and site not in self._waiting
                continue
            collected: str = snap["collected_at"]
            last = last_report.get(serial)
            # A late report replayed from an agent's outbox says nothing about now.
            if last is None or not earlier(collected, last):
                last_report[serial] = collected
        return events

    def _arrive(
        self, serial: str, host: str | None, site: str | None, at: datetime, collected: str
    ) -> object:
        """Note that a report came (collected ``at``, in text ``collected``); the device's site
        before it, or ``_STALE`` for a late one."""
        last = self._last_report.get(serial)
        if last is not None and at < datetime.fromisoformat(last):
            # A late report replayed from an agent's outbox says nothing about now.
            return _STALE
        self._last_report[serial] = collected
        previous_site = self._device_site.get(serial, _UNSEEN)
        if previous_site != site:
            self._touched.add(serial)
            self._remember(serial, site)
        if host is not None and self._host.get(serial) != host:
            self._touched.add(serial)
            self._children.setdefault(host, set()).add(serial)
            self._host[serial] = host
        return previous_site

    def _observe_tracks(
        self, snap: dict[str, Any], site: str | None, at: datetime, previous_site: object
    ) -> list[FaultEvent]:
        """A report (JSON form) with problems, or of a device with something pending or open."""
        serial: str = snap["serial"]
        host: str | None = snap["host_serial"]
        present = self._ticket_problems(snap)
        tracks = self._tracks.get(serial, {})
        events: list[FaultEvent] = []
        unreachable = tracks.get(UNREACHABLE)
        if site is not None and (
            UNREACHABLE in present or (unreachable is not None and unreachable.state != "idle")
        ):
            # Silence starting, going on or ending moves the site's count of silent devices.
            self._unjudged.add(site)
        if present or serial in self._busy_count:
            self._touched.add(serial)
        for code, detail in present.items():
            track = self._track(serial, code, site)
            track.detail = detail
            track.host_serial = host
            track.model = snap["model"]
            track.from_silence = False
            self._present(track, at, snap, streak_step=1)
        for code, track in list(self._tracks.get(serial, {}).items()):
            if code not in present and track.state != "idle":
                events += self._absent(track, at)
        events += self._judge_sites(at, site, previous_site)
        return events + self._evaluate_tracks(at, list(self._tracks.get(serial, {}).values()))

    def device_unreachable(
        self, serial: str, *, site: str | None, at: datetime
    ) -> list[FaultEvent]:
        """The controller noticed silence (no report for several polls): the report count is met."""
        self._touched.add(serial)
        previous_site = self._device_site.get(serial, _UNSEEN)
        if previous_site != site:
            self._remember(serial, site)
        track = self._track(serial, UNREACHABLE, site)
        track.from_silence = True
        if track.state in ("idle", "pending"):
            # The silence itself spans several missed reports, so the report count is met.
            self._present(track, at, None, streak_step=self.policy.min_reports)
        else:
            self._present(track, at, None, streak_step=1)
        if site is not None:
            self._unjudged.add(site)
        events = self._judge_sites(at, site, previous_site)
        return events + self._evaluate_tracks(at, list(self._tracks[serial].values()))

    def agent_offline(self, site: str, *, at: datetime) -> list[FaultEvent]:
        """The site's agent stopped calling in: one site ticket, nothing per device."""
        state = self._sites.setdefault(site, _SiteState())
        if state.agent_offline:
            return []
        state.agent_offline = True
        self._touched.add(SITE_KEY + site)
        self._unjudged.add(site)
        return [
            _site_event(
                FaultEventKind.OPENED,
                AGENT_OFFLINE,
                site,
                at,
                first_seen=at,
                affected=tuple(sorted(state.devices)),
            )
        ]

    def agent_online(self, site: str, *, at: datetime) -> list[FaultEvent]:
        state = self._sites.setdefault(site, _SiteState())
        if not state.agent_offline:
            return []
        state.agent_offline = False
        self._touched.add(SITE_KEY + site)
        self._unjudged.add(site)
        # Silence during the outage was the site's, not each device's.
        for track in list(self._busy.values()):
            if track.site == site and track.code == UNREACHABLE and track.state == "pending":
                self._touched.add(track.serial)
                self._reset(track)
        return [_site_event(FaultEventKind.CLEARED, AGENT_OFFLINE, site, at)]

    def tick(self, now: datetime) -> list[FaultEvent]:
        """Let time pass: opens faults whose hold time ran out without a new report."""
        self._touched.update(track.serial for track in self._busy.values())
        events = self._evaluate_sites(now, None)
        return events + self._evaluate_tracks(now, list(self._busy.values()))

    # -- lasting state ----------------------------------------------------------------

    def changes(self) -> tuple[dict[str, dict[str, Any]], list[str]]:
        """Documents to save and keys to delete since the last call, for a restart to resume.

        Only transitions count (a fault pending, open, clearing or over; flapping; a site
        down or back; a device first seen at a site): another report of the same fault
        changes nothing to save, so saving costs nothing per report.
        """
        puts: dict[str, dict[str, Any]] = {}
        deletes: list[str] = []
        for key in sorted(self._touched):
            site = key[len(SITE_KEY) :] if key.startswith(SITE_KEY) else None
            tracks = self._lasting_tracks(key) if site is None else {}
            mark = self._device_mark(key, tracks) if site is None else self._site_mark(site)
            if mark == self._saved.get(key):
                continue
            if mark is None:
                deletes.append(key)
                self._saved.pop(key, None)
            else:
                # Built only now that it is to be saved.
                puts[key] = self._device_doc(key, tracks) if site is None else self._site_doc(site)
                self._saved[key] = mark
        self._touched.clear()
        return puts, deletes

    def restore(self, docs: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """Take back what ``changes`` saved (after a restart); returns key -> why it was skipped."""
        skipped: dict[str, str] = {}
        devices = [(k, d) for k, d in docs.items() if not k.startswith(SITE_KEY)]
        sites = [(k, d) for k, d in docs.items() if k.startswith(SITE_KEY)]
        for key, doc in devices + sites:
            try:
                if doc.get("v") != STATE_VERSION:
                    raise ValueError(f"layout version {doc.get('v')!r}, expected {STATE_VERSION}")
                if key.startswith(SITE_KEY):
                    self._restore_site(key[len(SITE_KEY) :], doc)
                else:
                    self._restore_device(key, doc)
            except (KeyError, TypeError, ValueError) as exc:
                skipped[key] = f"{type(exc).__name__}: {exc}"
        for key, _ in devices + sites:
            if key in skipped:
                continue
            if key.startswith(SITE_KEY):
                mark = self._site_mark(key[len(SITE_KEY) :])
            else:
                mark = self._device_mark(key, self._lasting_tracks(key))
            if mark is not None:
                self._saved[key] = mark
        # What was saved need not be what the restored devices add up to: judge every site.
        self._unjudged.update(self._sites)
        return skipped

    def _lasting_tracks(self, serial: str) -> dict[str, _Track]:
        return {
            code: track
            for code, track in sorted(self._tracks.get(serial, {}).items())
            if track.lasting
        }

    def _device_mark(self, serial: str, tracks: dict[str, _Track]) -> tuple[Any, ...] | None:
        """What a device's saved document stands for; None when there is nothing to keep.

        ``tracks`` are the device's lasting tracks (``_lasting_tracks``).
        """
        site = self._device_site.get(serial)
        host = self._host.get(serial)
        if site is None and host is None and not tracks:
            return None
        return (site, host, tuple((code, track.milestone()) for code, track in tracks.items()))

    def _device_doc(self, serial: str, tracks: dict[str, _Track]) -> dict[str, Any]:
        last = self._last_report.get(serial)
        return {
            "v": STATE_VERSION,
            "serial": serial,
            "site": self._device_site.get(serial),
            "host_serial": self._host.get(serial),
            "last_report": last,
            "tracks": {code: track.to_doc() for code, track in tracks.items()},
        }

    def _site_mark(self, site: str) -> tuple[Any, ...] | None:
        state = self._sites.get(site)
        if state is None or not state.lasting:
            return None
        return state.milestone()

    def _site_doc(self, site: str) -> dict[str, Any]:
        state = self._sites[site]
        return {
            "v": STATE_VERSION,
            "site": site,
            "agent_offline": state.agent_offline,
            "majority_since": _iso(state.majority_since),
            "unreachable_open": state.unreachable_open,
            "affected": list(state.affected),
        }

    def _restore_device(self, serial: str, doc: Mapping[str, Any]) -> None:
        site = doc["site"]
        tracks = {
            code: _Track.from_doc(serial, code, site, dict(raw))
            for code, raw in dict(doc["tracks"]).items()
        }
        unknown = set(tracks) - {code.value for code in ProblemCode}
        if unknown:
            raise ValueError(f"unknown problem codes {sorted(unknown)}")
        last = _moment(doc["last_report"])
        host = doc["host_serial"]
        self._remember(serial, site)
        if host is not None:
            self._children.setdefault(host, set()).add(serial)
            self._host[serial] = host
        if last is not None:
            self._last_report[serial] = last.isoformat()
        self._tracks[serial] = tracks
        for track in tracks.values():
            if track.state != "idle":
                self._engage(track)

    def _restore_site(self, site: str, doc: Mapping[str, Any]) -> None:
        state = self._sites.setdefault(site, _SiteState())
        state.agent_offline = bool(doc["agent_offline"])
        state.majority_since = _moment(doc["majority_since"])
        state.unreachable_open = bool(doc["unreachable_open"])
        state.affected = tuple(str(serial) for serial in doc["affected"])
        if state.majority_since is not None and not state.unreachable_open:
            self._waiting.add(site)

    # -- state machine ------------------------------------------------------------

    def _ticket_problems(self, snap: dict[str, Any]) -> dict[str, str]:
        """The report's problems worth a ticket of this device (code -> detail)."""
        serial: str = snap["serial"]
        host: str | None = snap["host_serial"]
        children = self._children.get(serial, set())
        present: dict[str, str] = {}
        for problem in snap["health"]["problems"]:
            code: str = problem["code"]
            detail: str = problem["detail"]
            if code not in self.policy.ticket_codes:
                continue
            if code == ProblemCode.PERIPHERAL_DISCONNECTED.value and any(
                child in detail for child in children
            ):
                # The camera's own entry carries this fault: it is the E70's ticket, not the host's.
                continue
            if code == ProblemCode.CAMERA_DOWN.value and any(
                (child, code) in self._busy
                for child in children
                for code in self._tracks.get(child, {})
            ):
                # The host has no camera but its E70, whose own ticket speaks for it.
                continue
            if (
                code == ProblemCode.API_ERROR.value
                and host is not None
                and ProblemCode.API_ERROR.value in self._tracks.get(host, {})
            ):
                # A camera read through a host whose API fails is unreadable for the
                # host's reason: the host's ticket speaks for both.
                continue
            present.setdefault(code, detail)
        return present

    def _remember(self, serial: str, site: str | None) -> None:
        previous = self._device_site.get(serial)
        if previous is not None and previous != site and previous in self._sites:
            self._sites[previous].devices.discard(serial)
            self._unjudged.add(previous)
        self._device_site[serial] = site
        if site is not None:
            self._sites.setdefault(site, _SiteState()).devices.add(serial)
            self._unjudged.add(site)

    def _track(self, serial: str, code: str, site: str | None) -> _Track:
        codes = self._tracks.setdefault(serial, {})
        track = codes.get(code)
        if track is None:
            track = codes[code] = _Track(serial=serial, code=code, site=site)
        track.site = site
        return track

    def _engage(self, track: _Track) -> None:
        """The track leaves idle: time and every report of its device may now change it."""
        key = (track.serial, track.code)
        if key not in self._busy:
            self._busy[key] = track
            self._busy_count[track.serial] = self._busy_count.get(track.serial, 0) + 1

    def _reset(self, track: _Track) -> None:
        if self._busy.pop((track.serial, track.code), None) is not None:
            left = self._busy_count.pop(track.serial) - 1
            if left:
                self._busy_count[track.serial] = left
        track.state = "idle"
        track.streak = 0
        track.first_seen = None
        track.last_seen = None
        track.from_silence = False
        track.gone_since = None
        track.evidence = []

    def _present(
        self, track: _Track, at: datetime, evidence: dict[str, Any] | None, *, streak_step: int
    ) -> None:
        if track.state == "idle":
            self._engage(track)
            track.state = "pending"
            track.streak = 0
            track.first_seen = at
            track.evidence = []
            track.appearances = [
                seen for seen in track.appearances if at - seen < self.policy.flap_window
            ] + [at]
            # Flapping ends once the flap window has been calm; a later fault is a plain one.
            track.flapping = track.flapping and len(track.appearances) >= self.policy.flap_count
        if track.state == "clearing":
            # Back before it was gone long enough: the same fault, never cleared,
            # but one more appearance towards flapping.
            track.state = "open"
            track.gone_since = None
            track.appearances = [
                seen for seen in track.appearances if at - seen < self.policy.flap_window
            ] + [at]
        track.streak += streak_step
        track.last_seen = at
        if evidence is not None:
            if len(track.evidence) < 3:
                track.evidence.append(evidence)
            else:
                track.evidence[-1] = evidence

    def _absent(self, track: _Track, at: datetime) -> list[FaultEvent]:
        if track.state == "pending":
            # A blip: never held long enough to be a fault.
            self._reset(track)
        elif track.state == "open":
            track.state = "clearing"
            track.gone_since = at
        elif track.state == "clearing":
            assert track.gone_since is not None
            if at - track.gone_since >= self.policy.clear_after:
                event = self._event(track, FaultEventKind.CLEARED, at)
                self._reset(track)
                return [event]
        return []

    def _suppressed(self, site: str | None) -> bool:
        """Whether the site's outage speaks for its silent devices (correlation)."""
        state = None if site is None else self._sites.get(site)
        return state is not None and (state.agent_offline or state.majority_since is not None)

    def _evaluate_tracks(self, now: datetime, tracks: list[_Track]) -> list[FaultEvent]:
        """Decide what ``now`` changes for these tracks: flapping, and holds run out."""
        events: list[FaultEvent] = []
        for track in tracks:
            if track.state == "open" and not track.flapping:
                recent = [
                    seen for seen in track.appearances if now - seen < self.policy.flap_window
                ]
                if len(recent) >= self.policy.flap_count:
                    track.flapping = True
                    events.append(self._event(track, FaultEventKind.FLAPPING, now))
            if track.state != "pending" or track.first_seen is None:
                continue
            if track.code == UNREACHABLE and self._suppressed(track.site):
                # Part of a site outage: the site ticket speaks for it (correlation).
                continue
            if track.code == UNREACHABLE and self._host_silent(track.serial):
                # A camera read through its host falls silent with it: one ticket, the host's.
                continue
            flapping = len(track.appearances) >= self.policy.flap_count
            # A reported problem has held only as long as reports show it; silence
            # (unreachable noticed by the controller) holds until a report ends it.
            seen_until = now if track.from_silence else (track.last_seen or track.first_seen)
            held = (
                track.streak >= self.policy.min_reports
                and seen_until - track.first_seen >= self.policy.hold_time(track.code)
            )
            if not (held or flapping):
                continue
            kind = FaultEventKind.RECURRED if track.opened_before else FaultEventKind.OPENED
            track.state = "open"
            track.opened_before = True
            newly_flapping = flapping and not track.flapping
            track.flapping = track.flapping or flapping
            events.append(self._event(track, kind, now))
            if newly_flapping and kind is FaultEventKind.RECURRED:
                events.append(self._event(track, FaultEventKind.FLAPPING, now))
        return events

    def _host_silent(self, serial: str) -> bool:
        host = self._host.get(serial)
        return host is not None and UNREACHABLE in self._tracks.get(host, {})

    def _judge_sites(self, now: datetime, *sites: object) -> list[FaultEvent]:
        """Judge a reporting device's site (and the one it left) if anything calls for it.

        Judging a site where nothing changed can only open its outage once the hold has
        run out, so a site is judged when it changed or while its outage waits for that.
        """
        due: list[str] = []
        for name in sites:
            # A device's site may be None, or (its first report) a site it never had.
            if not isinstance(name, str) or name in due:
                continue
            if name in self._sites and (name in self._unjudged or name in self._waiting):
                due.append(name)
        return self._evaluate_sites(now, due) if due else []

    def _silent(self, track: _Track) -> bool:
        """Whether the track counts towards its site's silent devices."""
        return (
            track.code == UNREACHABLE
            and track.site is not None
            and track.state in ("pending", "open")
            and track.streak >= self.policy.min_reports
        )

    def _evaluate_sites(self, now: datetime, only: list[str] | None) -> list[FaultEvent]:
        """Judge these sites (``None``: every site, as ``tick`` does) at ``now``."""
        events: list[FaultEvent] = []
        policy = self.policy
        silent: dict[str, list[str]] = {}
        if only is None:
            names = list(self._sites)
            self._unjudged.clear()
            for track in self._busy.values():
                if self._silent(track):
                    assert track.site is not None
                    silent.setdefault(track.site, []).append(track.serial)
        else:
            names = only
            self._unjudged.difference_update(only)
            for name in only:
                # A site's own devices: the work grows with the site, not with the fleet.
                for serial in self._sites[name].devices:
                    quiet = self._tracks.get(serial, {}).get(UNREACHABLE)
                    if quiet is not None and quiet.site == name and self._silent(quiet):
                        silent.setdefault(name, []).append(serial)
        for site in names:
            self._touched.add(SITE_KEY + site)
            state = self._sites[site]
            down = sorted(s for s in silent.get(site, []) if s in state.devices)
            majority = (
                len(down) >= policy.site_min_devices
                and len(down) > policy.site_unreachable_ratio * len(state.devices)
                and not state.agent_offline
            )
            if majority:
                if state.majority_since is None:
                    state.majority_since = now
                state.affected = tuple(down)
                if (
                    not state.unreachable_open
                    and now - state.majority_since >= policy.unreachable_min_duration
                ):
                    state.unreachable_open = True
                    events.append(
                        _site_event(
                            FaultEventKind.OPENED,
                            SITE_UNREACHABLE,
                            site,
                            now,
                            first_seen=state.majority_since,
                            affected=tuple(down),
                        )
                    )
            else:
                state.majority_since = None
                if state.unreachable_open:
                    state.unreachable_open = False
                    # Devices still silent when the site recovers get their own full hold
                    # from now: most of them are seconds behind the others.
                    for track in self._busy.values():
                        if (
                            track.site == site
                            and track.code == UNREACHABLE
                            and track.state == "pending"
                        ):
                            track.first_seen = now
                            self._touched.add(track.serial)
                    events.append(
                        _site_event(
                            FaultEventKind.CLEARED,
                            SITE_UNREACHABLE,
                            site,
                            now,
                            affected=state.affected,
                        )
                    )
            if state.majority_since is not None and not state.unreachable_open:
                self._waiting.add(site)
            else:
                self._waiting.discard(site)
        return events

    def _event(self, track: _Track, kind: FaultEventKind, at: datetime) -> FaultEvent:
        return FaultEvent(
            kind=kind,
            subject=track.serial,
            fault=track.code,
            at=at,
            site=track.site,
            serial=track.serial,
            detail=track.detail,
            first_seen=track.first_seen,
            host_serial=track.host_serial,
            model=track.model,
            flapping=track.flapping,
            evidence=tuple(track.evidence_docs()),
        )
