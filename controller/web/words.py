"""The words the dashboard shows for stored values, one table per kind of value.

Every enum, status, kind, reason and flag the controller stores has an English word here
(the Polish one is in the catalogue's ``[dashboard]`` table, keyed by the English). Pages
show a value with ``word(table, value)`` and never the value itself: ``waiting_window`` is
an identifier, "waiting for its window" is what an admin reads. :data:`ENUMERATED` names
where each table's values come from, so a test can hold every table to its enum.

Values a device reports (a peripheral's state, a status like ``all_down``) are an open set:
an unknown one is shown lower-case with spaces (``SOME_NEW_STATE`` -> "some new state").
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import get_args

import jinja2

from polyfleet.controller.domain.entitlement import FLAGS
from polyfleet.controller.domain.forecast import EventKind as ExpiryKind
from polyfleet.controller.domain.rollout import (
    ADMIN_ACTIONS,
    CHECK_TEXT,
    DEVICE_STATUSES,
    REASON_CODES,
    ROLLOUT_STATUSES,
)
from polyfleet.controller.domain.tickets import DEADLINES, TicketCategory, TicketStatus
from polyfleet.controller.events import EVENT_KINDS
from polyfleet.controller.services.access import Role
from polyfleet.controller.services.jobs import JOB_STATUSES
from polyfleet.controller.services.overview import URGENCIES
from polyfleet.controller.web.i18n import Translator
from polyfleet.shared.schema import (
    AgentNotice,
    FailureCode,
    HealthState,
    JobKind,
    Peripheral,
    Provider,
)

WORDS: Mapping[str, Mapping[str, str]] = {
    "health": {
        "ok": "ok",
        "degraded": "degraded",
        "fault": "fault",
        "unreachable": "unreachable",
    },
    "role": {"admin": "admin", "viewer": "viewer", "agent": "agent"},
    "provider": {
        "teams": "Microsoft Teams",
        "zoom": "Zoom Rooms",
        "poly": "Poly Video",
        "device_mode": "Device mode",
        "unknown": "unknown mode",
    },
    "event_kind": {
        "snapshot_ingested": "report stored",
        "snapshots_ingested": "reports stored",
        "health_changed": "health changed",
        "device_added": "new device",
        "device_unreachable": "device unreachable",
        "device_moved": "device moved",
        "agent_offline": "site offline",
        "agent_online": "site back online",
        "agent_enrolled": "agent enrolled",
        "agent_notice": "agent notice",
        "agent_clock": "agent's clock",
        "job_finished": "job finished",
        "rollout_changed": "rollout changed",
    },
    "notice": {
        "outbox_dropped": "its full outbox dropped reports",
        "certificate_changed": "a device's certificate changed",
        "agent_started": "agent started",
        "reports_held": "reports held back",
        "outbox_failing": "its outbox disk refuses writes",
        "outbox_recovered": "its outbox disk takes writes again",
    },
    "clock": {"reaction": "reaction", "delivery": "delivery", "return": "return"},
    "urgency": {
        "overdue": "overdue",
        "due_soon": "due soon",
        "running": "on time",
        "held": "held: data missing",
        "waiting": "no clock running",
    },
    "ticket_status": {
        "needs_data": "needs data",
        "open": "open",
        "sent": "sent",
        "acknowledged": "acknowledged",
        "accepted": "accepted",
        "replacement_shipped": "replacement shipped",
        "replacement_received": "replacement received",
        "returned": "returned",
        "closed": "closed",
    },
    "ticket_category": {
        "fault": "fault",
        "support": "technical support",
        "configuration": "help with configuration",
    },
    "expiry_kind": {
        "contract_ends": "contract ends",
        "warranty_ends": "warranty ends",
        "patches_end": "patches end",
        "upgrades_end": "upgrades end",
        "purchase_window_closes": "last day to buy a contract",
    },
    "flag": {
        "update_entitled": "update covered",
        "update_not_entitled": "update not covered",
        "patch_window_closing": "patch window closes within 30 days",
        "contract_expiring_30": "contract ends within 30 days",
        "contract_expiring_60": "contract ends within 60 days",
        "contract_expiring_90": "contract ends within 90 days",
        "contract_expiring_180": "contract ends within 180 days",
        "out_of_warranty": "out of warranty",
        "ineligible_contract": "contract flagged as not eligible",
        "unknown_asset": "not in the asset registry",
        "not_reported": "registered, never reported",
    },
    "job_kind": {
        "collect_diagnostics": "collect diagnostics",
        "reboot": "reboot",
        "firmware_update": "firmware update",
    },
    "job_status": {
        "queued": "queued",
        "sent": "sent to the agent",
        "done": "done",
        "failed": "failed",
        "refused": "refused",
        "cancelled": "cancelled",
    },
    "rollout_status": {
        "planned": "planned",
        "running": "running",
        "paused": "paused",
        "halted": "halted",
        "aborted": "aborted",
        "done": "done",
        "preview": "preview",
    },
    "device_status": {
        "planned": "planned",
        "held": "held",
        "excluded": "excluded",
        "waiting_window": "waiting for its window",
        "postponed_booked": "postponed: room booked",
        "postponed_in_call": "postponed: in a call",
        "downloading": "downloading",
        "installing": "installing",
        "verifying": "verifying",
        "done": "done",
        "failed": "failed",
        "skipped": "skipped",
    },
    "reason": {
        "already_current": "already on the target or newer",
        "not_entitled": "not covered by the contract",
        "no_path": "no upgrade path in the catalogue",
        "open_ticket": "has an open fault ticket",
        "unhealthy": "not healthy",
        "unreachable": "unreachable",
        "in_penalty_box": "in the penalty box",
        "follows_host": "an E70 camera: its firmware comes with its host's",
        "teams_managed": "Teams mode: updated from the Teams admin center",
        "excluded_by_admin": "excluded by an admin",
    },
    "failure_code": {
        "not_at_site": "the device is not at the agent's site",
        "not_supported": "not something this unit does",
        "device_unreachable": "the device did not answer",
        "device_error": "the device refused",
        "in_call": "the device was in a call",
        "download_failed": "the package could not be downloaded",
        "checksum_mismatch": "the package's checksum did not match",
        "certificate_changed": "the device's certificate changed",
        "did_not_return": "the device did not come back",
        "install_failed": "the install failed",
        "verification_failed": "the new version could not be confirmed",
        "upload_failed": "the diagnostics could not be uploaded",
        "room_booked": "the room was booked",
    },
    "rollout_action": {"start": "Start", "pause": "Pause", "resume": "Resume", "abort": "Abort"},
    "peripheral_kind": {
        "camera": "camera",
        "touch_controller": "touch controller",
        "microphone": "microphone",
        "remote": "remote control",
        "other": "other",
    },
    # A rollout check that failed (the domain's words, shown by the API and the CLI too).
    "check": CHECK_TEXT,
    # What units say of a peripheral or a subsystem (poly-videoos.md): an open set.
    "device_value": {
        "CONNECTED": "connected",
        "DISCONNECTED": "disconnected",
        "PAIRED": "paired",
        "UNPAIRED": "not paired",
        "LAN_UP": "network up",
        "LAN_DOWN": "network down",
        "TIMESERVER_UP": "time server reached",
        "TIMESERVER_DOWN": "time server not reached",
        "READY": "ready",
        "ASLEEP": "asleep",
        "up": "up",
        "down": "down",
        "off": "off",
        "full": "full",
        "unknown": "unknown",
        "all_up": "all up",
        "some_down": "some down",
        "all_down": "all down",
    },
}


def _values(annotation: object) -> tuple[str, ...]:
    return tuple(str(value) for value in get_args(annotation))


#: Where each table's values come from: every one of them has a word (the test holds them).
#: ``device_value`` is not here: units may say what no document lists.
ENUMERATED: Mapping[str, Collection[str]] = {
    "health": [state.value for state in HealthState],
    "event_kind": tuple(EVENT_KINDS),
    "role": [role.value for role in Role],
    "provider": [provider.value for provider in Provider],
    "notice": _values(AgentNotice.model_fields["kind"].annotation),
    "clock": DEADLINES,
    "urgency": URGENCIES,
    "ticket_status": [status.value for status in TicketStatus],
    "ticket_category": [category.value for category in TicketCategory],
    "expiry_kind": _values(ExpiryKind),
    "flag": FLAGS,
    "job_kind": [kind.value for kind in JobKind],
    "job_status": JOB_STATUSES,
    "rollout_status": (*ROLLOUT_STATUSES, "preview"),
    "device_status": DEVICE_STATUSES,
    "reason": REASON_CODES,
    "rollout_action": tuple(ADMIN_ACTIONS),
    "failure_code": [code.value for code in FailureCode],
    "peripheral_kind": _values(Peripheral.model_fields["kind"].annotation),
}

_IDENTIFIER = re.compile(r"\b(?:[A-Z]+(?:_[A-Z]+)*|[a-z]+(?:_[a-z]+)+)\b")


def word_for(t: Translator, table: str, value: object) -> str:
    """What the dashboard shows for ``value`` of ``table``, in ``t``'s language."""
    if value is None or value == "":
        return "\N{EN DASH}"
    text = str(value)
    english = WORDS[table].get(text)
    if english is None:
        # A value stored before its word existed, or one a device invented: words anyway.
        return text.replace("_", " ").lower() if table not in ENUMERATED else text
    return t.gettext(english)


def device_text(t: Translator, text: object) -> str:
    """What a unit said (a problem's detail), its own values (``all_down``) in words."""
    values = WORDS["device_value"]

    def in_words(match: re.Match[str]) -> str:
        found = values.get(match.group(0))
        return t.gettext(found) if found is not None else match.group(0)

    return _IDENTIFIER.sub(in_words, str(text or ""))


@jinja2.pass_context
def check_global(context: jinja2.runtime.Context, check: str) -> str:
    """A failed rollout check in words (the domain's English, translated)."""
    return word_for(context["t"], "check", check)


@jinja2.pass_context
def word_global(context: jinja2.runtime.Context, table: str, value: object) -> str:
    return word_for(context["t"], table, value)


@jinja2.pass_context
def device_text_filter(context: jinja2.runtime.Context, text: object) -> str:
    return device_text(context["t"], text)
