"""Planning a batch of reports: what is new, what is kept, and what it changes."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from polyfleet.controller.domain.timestamps import earlier

#: A document as the store keeps it (JSON form).
Doc = dict[str, Any]
#: A retained report: its store key and its collection time (a stored UTC text).
Retained = tuple[str, str]
#: From a device's latest report: when the controller received it, and the uptime it gave
#: (when it was collected is the newest of the device's retained reports).
Latest = tuple[str, float | None]

#: Snapshot fields a device document takes as they are (its times are derived instead).
DEVICE_FIELDS = (
    "model",
    "model_raw",
    "system_name",
    "firmware",
    "provider",
    "in_call",
    "peripherals",
    "host_serial",
    "via",
    "health",
)
_ABSENT = object()


@dataclass(frozen=True, kw_only=True)
class IngestRules:
    """How much of a device's past is kept, and how far ahead an agent's clock may be."""

    #: Reports retained per device.
    report_history: int
    #: A report collected further than this into the future was timed by a wrong clock.
    max_clock_skew: timedelta


@dataclass(frozen=True, kw_only=True)
class KnownState:
    """What the controller knows before the batch (read, never changed; live views will do)."""

    #: Device documents by serial.
    devices: Mapping[str, Doc]
    #: Keys of the stored reports (``<agent id>/<report id>``).
    report_keys: Container[str]
    #: Ids of the agent's reports that left the retained history with their own batch.
    left_ids: Container[str]
    #: Per device, its retained reports, oldest first.
    retained: Mapping[str, Sequence[Retained]]
    #: The agent's clock as last judged ("ok" or "ahead"); None when it has no document.
    agent_clock: str | None


@dataclass(frozen=True, kw_only=True)
class DeviceFound:
    """A report mentioned a device for the first time."""

    serial: str
    model: str


@dataclass(frozen=True, kw_only=True)
class HealthChange:
    """A device's health is news: its first one, another state or other problem codes."""

    serial: str
    old: Doc | None
    new: Doc
    #: When it was seen (the report's collection time).
    at: str


@dataclass(frozen=True, kw_only=True)
class ClockChange:
    """What is known of an agent's clock changes: "ahead" (by ``skew_s``) or "ok" again."""

    state: str
    skew_s: float | None


@dataclass(frozen=True, kw_only=True)
class IngestPlan:
    """What a batch changes; empty but for ``foreign`` when the batch must be refused."""

    #: Devices of the batch that belong to another site: serial -> that site.
    foreign: dict[str, str] = field(default_factory=dict)
    duplicates: int = 0
    #: Reports older than every retained one of a full history: not kept, not accepted.
    superseded: int = 0
    #: Accepted reports as stored documents, in batch order (also those the batch outdated).
    accepted: list[Doc] = field(default_factory=list)
    #: Accepted reports to store, by key (those still retained after the batch).
    reports: dict[str, Doc] = field(default_factory=dict)
    #: Keys of stored reports that leave the retained history.
    dropped: list[str] = field(default_factory=list)
    #: Ids of the batch's own reports that leave the retained history with it (superseded,
    #: or outdated by a newer one of the batch): remembered, so a resend of the batch (its
    #: answer was lost) is all duplicates. One that leaves with a later batch needs no
    #: remembering: an agent resends a batch before it sends anything newer.
    gone: list[str] = field(default_factory=list)
    #: Per device the batch mentions, its retained reports after the batch.
    retained: dict[str, list[Retained]] = field(default_factory=dict)
    #: Per device whose state the batch brings, what its newest report says.
    latest: dict[str, Latest] = field(default_factory=dict)
    #: Devices first mentioned by the batch, as whole documents.
    new_devices: dict[str, Doc] = field(default_factory=dict)
    #: Known devices, as the fields the batch changes (most reports change none).
    patches: dict[str, Doc] = field(default_factory=dict)
    #: Devices found and health changes, in the order the batch brought them.
    news: list[DeviceFound | HealthChange] = field(default_factory=list)
    clock: ClockChange | None = None


def plan_batch(
    reports: Sequence[Doc],
    *,
    site_id: str,
    agent_id: str,
    known: KnownState,
    rules: IngestRules,
    now: datetime,
) -> IngestPlan:
    """What a batch of reports (JSON form, as an agent sent them) from ``agent_id`` changes.

    Each report goes through the steps in turn: deduplicate (its id was seen before),
    correct the clock (collected in the future), retain (its place in the device's history)
    and diff the device (what the device's newest report changes). A batch that mentions a
    device of another site changes nothing.

    ``reports`` are handed over: the stored documents are built around their snapshots,
    which the plan writes into (a corrected time, values shared with the device); copying
    them instead made planning a twentieth slower.
    """
    planner = _Planner(site_id=site_id, agent_id=agent_id, known=known, rules=rules, now=now)
    return planner.plan(reports)


def device_changes(device: Mapping[str, Any], snap: Doc) -> Doc:
    """The fields of ``device`` that report ``snap`` changes (the store merges them over it).

    Naming only what differs: most reports change none of these, and write no device. An
    equal value is taken from the device document into the snapshot (both are never changed
    once stored): retained reports share their firmware, peripherals and health instead of
    holding thousands of equal copies for the collector to walk and free.
    """
    changed: Doc = {}
    if device.get("unreachable_since") is not None:
        changed["unreachable_since"] = None
    get = device.get
    for name in DEVICE_FIELDS:
        old = get(name, _ABSENT)
        if old != (value := snap[name]):
            changed[name] = value
        elif old is not value:
            snap[name] = old
    return changed


def health_is_news(old: Doc | None, new: Doc) -> bool:
    """Whether ``new`` health differs from ``old`` in state or problem codes (the detail text
    may change without it being news); a first health always is."""
    if old is None or old["state"] != new["state"]:
        return True
    old_problems, new_problems = old.get("problems") or (), new.get("problems") or ()
    if not old_problems and not new_problems:
        return False
    return {p["code"] for p in old_problems} != {p["code"] for p in new_problems}


def clock_change(
    known: str | None, *, ahead: timedelta, last_collected: str, now: datetime, max_skew: timedelta
) -> ClockChange | None:
    """What a batch changes of what is known of its agent's clock (``known``), if anything.

    Ahead: a report was collected beyond the allowed skew into the future (the furthest by
    ``ahead``). On time: the batch's last report (the newest an agent sends) is within the
    skew of now either way; an older one may be a backlog after an outage and says nothing
    of the clock.
    """
    if known is None:
        return None
    if ahead > timedelta(0):
        found = ClockChange(state="ahead", skew_s=round(ahead.total_seconds(), 1))
    elif abs(datetime.fromisoformat(last_collected) - now) > max_skew:
        return None
    else:
        found = ClockChange(state="ok", skew_s=None)
    return None if found.state == known else found


def _utc_texts(moment: datetime) -> dict[int, str]:
    """``moment`` as stored UTC texts, by length: whole seconds (20) and microseconds (27).

    A report's time in either form compares with the one of its length as text: a report's
    whole second is later than ``moment`` exactly when it is later than that rounded down.
    """
    utc = moment.astimezone(UTC)
    return {
        20: utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        27: utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


class _Planner:
    """One batch's plan as its reports are added, one at a time, in batch order."""

    def __init__(
        self,
        *,
        site_id: str,
        agent_id: str,
        known: KnownState,
        rules: IngestRules,
        now: datetime,
    ) -> None:
        self.site_id = site_id
        self.agent_id = agent_id
        self.known = known
        self.known_devices = known.devices
        self.history_size = rules.report_history
        self.max_skew = rules.max_clock_skew
        self.now = now
        self.received_at = now.isoformat()
        # Report ids are unique per agent: stored (and compared) under the agent's prefix.
        self.prefix = agent_id + "/"
        self.latest_allowed = now + rules.max_clock_skew
        self.allowed_texts = _utc_texts(self.latest_allowed)
        self.received_text = _utc_texts(now)[27]
        self.ahead = timedelta(0)
        self.foreign: dict[str, str] = {}
        self.duplicates = 0
        self.superseded = 0
        self.accepted: list[Doc] = []
        self.reports: dict[str, Doc] = {}
        self.dropped: list[str] = []
        # Keys, in the order they went (a dict for its order and its fast lookup).
        self.gone: dict[str, None] = {}
        self.retained: dict[str, list[Retained]] = {}
        self.latest: dict[str, Latest] = {}
        self.new_devices: dict[str, Doc] = {}
        self.patches: dict[str, Doc] = {}
        self.news: list[DeviceFound | HealthChange] = []

    def plan(self, reports: Sequence[Doc]) -> IngestPlan:
        """Take each report through the steps, in batch order."""
        # As the agent gave it: an agent sends its newest report last.
        last_collected = reports[-1]["snapshot"]["collected_at"] if reports else None
        for report in reports:
            snap: Doc = report["snapshot"]
            serial: str = snap["serial"]
            known = self.known_devices.get(serial)
            if known is not None and known["site_id"] != self.site_id:
                # The batch will be refused; every such device is named.
                self.foreign[serial] = known["site_id"]
                continue
            report_id: str = report["id"]
            key = self.prefix + report_id
            if self.is_duplicate(key, report_id):
                self.duplicates += 1
                continue
            claimed: str = snap["collected_at"]
            collected = snap["collected_at"] = self.correct_clock(claimed)
            document: Doc = {
                "id": report_id,
                "serial": serial,
                "site_id": self.site_id,
                "agent_id": self.agent_id,
                "received_at": self.received_at,
                "snapshot": snap,
            }
            if collected != claimed:
                # What the agent's clock said, kept beside the time used instead.
                document["agent_collected_at"] = claimed
            newest = self.retain(serial, key, collected, document)
            if newest is None:
                self.superseded += 1
                self.gone[key] = None
                continue
            self.accepted.append(document)
            if newest:
                # A report older than the device's newest one (an outbox catching up) is history,
                # not current state.
                self.diff_device(serial, snap, known)
        if self.foreign:
            return IngestPlan(foreign=self.foreign)
        clock = (
            None
            if last_collected is None
            else clock_change(
                self.known.agent_clock,
                ahead=self.ahead,
                last_collected=last_collected,
                now=self.now,
                max_skew=self.max_skew,
            )
        )
        start = len(self.prefix)
        return IngestPlan(
            duplicates=self.duplicates,
            superseded=self.superseded,
            accepted=self.accepted,
            reports=self.reports,
            dropped=self.dropped,
            gone=[key[start:] for key in self.gone],
            retained=self.retained,
            latest=self.latest,
            new_devices=self.new_devices,
            patches=self.patches,
            news=self.news,
            clock=clock,
        )

    def is_duplicate(self, key: str, report_id: str) -> bool:
        """Deduplicate: the report came before, in this batch or an earlier one."""
        return (
            key in self.reports
            or key in self.known.report_keys
            or report_id in self.known.left_ids
            or key in self.gone
        )

    def correct_clock(self, collected: str) -> str:
        """Correct the clock: a time beyond the allowed skew into the future is the agent's
        clock being wrong, and the report takes the time it was received instead."""
        # Stored UTC texts of one length compare as text, sparing a parse per report.
        allowed = self.allowed_texts.get(len(collected))
        if (
            collected <= allowed
            if allowed is not None and collected[-1] == "Z"
            else datetime.fromisoformat(collected) <= self.latest_allowed
        ):
            return collected
        self.ahead = max(self.ahead, datetime.fromisoformat(collected) - self.now)
        return self.received_text

    def retain(self, serial: str, key: str, collected: str, document: Doc) -> bool | None:
        """Retain: place the report in its device's history, letting go of the oldest beyond
        the history's size. Whether it is the device's newest; None: older than every
        report of a full history (superseded), so not kept."""
        retained = self.retained.get(serial)
        if retained is None:
            retained = list(self.known.retained.get(serial, ()))
        # The usual case: newer than every retained report, which one comparison tells.
        newest = not retained or not earlier(collected, retained[-1][1])
        if not newest and len(retained) >= self.history_size and earlier(collected, retained[0][1]):
            return None
        self.reports[key] = document
        retained.append((key, collected))
        if not newest:
            retained.sort(key=lambda item: datetime.fromisoformat(item[1]))
        while len(retained) > self.history_size:
            old_key = retained.pop(0)[0]
            if self.reports.pop(old_key, None) is None:
                self.dropped.append(old_key)
            else:
                self.gone[old_key] = None
        self.retained[serial] = retained
        return newest

    def diff_device(self, serial: str, snap: Doc, device: Doc | None) -> None:
        """Diff the device (``device``: as stored, None if new): what its newest report changes."""
        self.latest[serial] = (self.received_at, snap["uptime_s"])
        if device is None:
            device = self.new_devices.get(serial)
            if device is None:
                self.new_device(snap)
                return
        else:
            patch = self.patches.get(serial)
            if patch is not None:
                # The same device twice in one batch (an outbox catching up): rare.
                device = {**device, **patch}
        changed = device_changes(device, snap)
        if "health" in changed and health_is_news(device.get("health"), changed["health"]):
            self.news.append(
                HealthChange(
                    serial=serial,
                    old=device.get("health"),
                    new=changed["health"],
                    at=snap["collected_at"],
                )
            )
        if not changed:
            return
        if serial in self.new_devices:
            self.new_devices[serial] = {**device, **changed}
        elif serial in self.patches:
            self.patches[serial].update(changed)
        else:
            self.patches[serial] = changed

    def new_device(self, snap: Doc) -> None:
        """The document of a device that no report mentioned before."""
        serial = snap["serial"]
        self.news.append(DeviceFound(serial=serial, model=snap["model"]))
        blank: Doc = {
            "serial": serial,
            "site_id": self.site_id,
            "room": None,
            "first_seen": self.received_at,
            "unreachable_since": None,
        }
        changed = device_changes(blank, snap)
        self.news.append(
            HealthChange(serial=serial, old=None, new=changed["health"], at=snap["collected_at"])
        )
        self.new_devices[serial] = {**blank, **changed}
