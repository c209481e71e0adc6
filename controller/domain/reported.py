"""What agents report, checked where it enters: implausible reports refused one by one, and
text that could break a line, a header or a terminal replaced with a visible mark.

A batch is taken report by report: a report this refuses is answered by name in the batch's
acknowledgement (``ReportBatchAck.refused``) and the others are stored. Refused are:

- a report collected before ``EARLIEST_COLLECTED``, earlier than any Poly Studio device
  (the agent's clock is wrong: stored, such a time would open tickets "first seen" in year 1);
- a camera whose host device belongs to another site (an agent reaches into its own site
  only: stored, the other site's device would list it, and moving that device would move
  the camera).

- a report collected more than ``FURTHEST_AHEAD`` after the controller's clock: no clock
  drifts a year, nothing in it can be placed in time.

A report less far in the future is not refused: the inventory stores it with the time it was
received and shows the agent's clock as ahead (a clock a day or a month ahead neither freezes
a device's state nor hides its faults). Beyond the bound the agent is shown ahead too.

Text (system names, firmware strings, problem details, peripheral names, agent names...)
ends up in e-mail, webhooks, CSV files, pages, logs and terminals. Each control, format or
bidirectional character in it becomes ``MARK`` (the replacement character), counted, so
nothing reported can forge a line of a ticket e-mail or move a terminal's cursor, and an
admin still sees that something was there. Lengths are bounded by the wire schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel

from polyfleet.shared.printable import unprintable

#: The visible mark an unprintable reported character becomes.
MARK = "\N{REPLACEMENT CHARACTER}"
#: No Poly Studio device existed before this moment (the first shipped in 2015).
EARLIEST_COLLECTED = datetime(2015, 1, 1, tzinfo=UTC)
#: A report collected further ahead of the controller's clock than this is refused.
FURTHEST_AHEAD = timedelta(days=365)
#: Any ISO time of a moment before ``EARLIEST_COLLECTED`` sorts before this text, whatever
#: its offset: most reports are told apart from it without parsing.
_EARLIEST_TEXT = "2015-01-02"
#: Bytes of a JSON body that can stand for an unprintable character: anything outside
#: printable ASCII, or an escape other than \" \\ \/.
_MAY_BE_UNPRINTABLE = re.compile(rb'[^\x20-\x7e]|\\[^"\\/]')

Doc = dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class ReportRefusal:
    """One report of a batch that was not stored: which, why (a code and words), where."""

    report_id: str
    serial: str
    code: str
    message: str
    field: str

    def to_json(self) -> Doc:
        return {
            "id": self.report_id,
            "serial": self.serial,
            "code": self.code,
            "message": self.message,
            "field": self.field,
        }


def refusal(
    index: int, plain: Doc, site_id: str, site_of: Callable[[str], str | None]
) -> ReportRefusal | None:
    """Why the batch's ``index``-th report (in its JSON form) is not stored, or None.

    ``site_of``: the site a device belongs to (None for one never reported).
    """
    snap = plain["snapshot"]
    report_id, serial = str(plain["id"]), str(snap["serial"])
    collected: str = snap["collected_at"]
    if collected < _EARLIEST_TEXT and datetime.fromisoformat(collected) < EARLIEST_COLLECTED:
        return ReportRefusal(
            report_id=report_id,
            serial=serial,
            code="collected_too_early",
            message=(
                f"report {report_id} of device {serial} was collected at {collected}, before "
                f"{EARLIEST_COLLECTED.date()} when no Poly Studio device existed: the agent's "
                "clock is wrong (check its time synchronisation); this report was not stored, "
                "the rest of the batch was"
            ),
            field=f"reports.{index}.snapshot.collected_at",
        )
    host = snap.get("host_serial")
    owner = site_of(host) if host else None
    if host and owner is not None and owner != site_id:
        return ReportRefusal(
            report_id=report_id,
            serial=serial,
            code="host_at_other_site",
            message=(
                f"camera {serial} hangs off device {host}, which belongs to site {owner!r}, "
                f"not {site_id!r}: an agent reports its own site's devices only; this report "
                "was not stored, the rest of the batch was. If the host stands at this site, "
                f"an admin moves it: `polyfleet controller devices move {host} --site "
                f"{site_id}` (POST /api/v1/devices/{host}/move)"
            ),
            field=f"reports.{index}.snapshot.host_serial",
        )
    return None


def too_far_ahead(index: int, plain: Doc, ahead: timedelta) -> ReportRefusal | None:
    """Why the batch's ``index``-th report, collected ``ahead`` of the controller's clock, is
    not stored, or None when it is stored (with the time it was received)."""
    if ahead <= FURTHEST_AHEAD:
        return None
    snap = plain["snapshot"]
    report_id, serial = str(plain["id"]), str(snap["serial"])
    return ReportRefusal(
        report_id=report_id,
        serial=serial,
        code="collected_too_late",
        message=(
            f"report {report_id} of device {serial} was collected at {snap['collected_at']}, "
            f"{ahead.days} days after the controller's clock (more than "
            f"{FURTHEST_AHEAD.days} days ahead): the agent's clock is wrong (check its time "
            "synchronisation); this report was not stored, the rest of the batch was"
        ),
        field=f"reports.{index}.snapshot.collected_at",
    )


def marked(text: str) -> tuple[str, int]:
    """``text`` with each unprintable character replaced by ``MARK``, and how many were."""
    if text.isprintable():
        return text, 0
    count = 0
    chars = []
    for char in text:
        if unprintable(char):
            chars.append(MARK)
            count += 1
        else:
            chars.append(char)
    return "".join(chars), count


def may_hold_unprintable(raw: bytes) -> bool:
    """Whether a JSON body may hold an unprintable character at all (one scan in C): most
    batches are printable ASCII throughout and need no closer look."""
    return _MAY_BE_UNPRINTABLE.search(raw) is not None


def _mark_keys(doc: Doc, keys: tuple[str, ...]) -> int:
    count = 0
    for key in keys:
        value = doc.get(key)
        if isinstance(value, str) and not value.isprintable():
            doc[key], found = marked(value)
            count += found
    return count


def mark_snapshot(snap: Doc) -> int:
    """Mark the unprintable characters of a snapshot's text, in place; how many there were."""
    count = _mark_keys(snap, ("system_name", "model_raw"))
    firmware = snap.get("firmware")
    if isinstance(firmware, dict):
        count += _mark_keys(firmware, ("version", "build"))
    health = snap.get("health")
    for problem in health.get("problems", ()) if isinstance(health, dict) else ():
        count += _mark_keys(problem, ("detail",))
    for peripheral in snap.get("peripherals") or ():
        count += _mark_keys(peripheral, ("model_raw", "serial", "firmware", "state"))
    for session in snap.get("sessions") or ():
        count += _mark_keys(session, ("user", "role", "address"))
    return count


def mark_fields(doc: Doc) -> int:
    """Mark the unprintable characters of every text field of a flat document, in place."""
    return _mark_keys(doc, tuple(key for key, value in doc.items() if isinstance(value, str)))


ModelT = TypeVar("ModelT", bound=BaseModel)


def mark_model(model: ModelT) -> tuple[ModelT, int]:
    """``model`` with the unprintable characters of its text fields marked, and how many."""
    changes: dict[str, str] = {}
    count = 0
    for name, value in model:
        if isinstance(value, str):
            text, found = marked(value)
            if found:
                changes[name] = text
                count += found
    return (model.model_copy(update=changes) if changes else model), count
