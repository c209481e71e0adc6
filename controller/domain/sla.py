"""Ticket SLA clocks: reaction, delivery and return deadlines in Europe/Warsaw time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Literal

from polyfleet.controller.domain.calendar import (
    WARSAW,
    add_window_time,
    at_warsaw,
    next_business_day,
    to_warsaw,
    warsaw_date,
)
from polyfleet.controller.domain.plans import DELIVERY_MEANS, DeliveryMeans, Plan

Window = Literal["8x5", "24x7"]
DeliveryKind = Literal["next_business_day", "clock_hours", "calendar_days"]

WINDOWS: tuple[Window, ...] = ("8x5", "24x7")
DELIVERY_KINDS: tuple[DeliveryKind, ...] = ("next_business_day", "clock_hours", "calendar_days")
#: E9: a next-business-day delivery is due by this local time.
NBD_DEADLINE = time(17, 0)


@dataclass(frozen=True, kw_only=True)
class SlaTerms:
    """A plan's ticket terms: window (W1), reaction (W2), delivery (W3), return days (W6, P4)."""

    window: Window
    reaction_hours: int | None
    delivery_kind: DeliveryKind
    delivery_amount: int
    return_days: int
    #: What ``delivery_due`` promises: the hardware ``arrival`` (W3) or its ``dispatch`` (P3).
    delivery_means: DeliveryMeans = "arrival"

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ValueError(f"window: {self.window!r} is not one of {', '.join(WINDOWS)}")
        if self.delivery_kind not in DELIVERY_KINDS:
            raise ValueError(
                f"delivery_kind: {self.delivery_kind!r} is not one of {', '.join(DELIVERY_KINDS)}"
            )
        if self.delivery_kind != "next_business_day" and self.delivery_amount <= 0:
            raise ValueError(f"delivery_amount: {self.delivery_amount} must be positive")
        if self.reaction_hours is not None and self.reaction_hours <= 0:
            raise ValueError(f"reaction_hours: {self.reaction_hours} must be positive or none")
        if self.return_days <= 0:
            raise ValueError(f"return_days: {self.return_days} must be positive")
        if self.delivery_means not in DELIVERY_MEANS:
            raise ValueError(
                f"delivery_means: {self.delivery_means!r} is not one of {', '.join(DELIVERY_MEANS)}"
            )

    @classmethod
    def from_plan(cls, plan: Plan) -> SlaTerms:
        """The terms of one catalogue plan (the catalogue holds every number)."""
        return cls(
            window=plan.window,
            reaction_hours=plan.reaction_hours,
            delivery_kind=plan.repair.kind,
            delivery_amount=plan.repair.amount,
            return_days=plan.return_days,
            delivery_means=plan.delivery_means,
        )


@dataclass(frozen=True, kw_only=True)
class SlaDeadlines:
    """The deadlines of one ticket; each is None until its clock has started (or never starts)."""

    window: Window
    reaction_due: datetime | None
    delivery_due: datetime | None
    return_due: datetime | None
    delivery_means: DeliveryMeans = "arrival"

    def as_json(self) -> dict[str, str | None]:
        """ISO 8601 with explicit offsets (C2), or null; ``delivery_means`` says what
        ``delivery_due`` promises (``arrival`` or ``dispatch``)."""

        def iso(moment: datetime | None) -> str | None:
            return None if moment is None else moment.isoformat()

        return {
            "window": self.window,
            "reaction_due": iso(self.reaction_due),
            "delivery_due": iso(self.delivery_due),
            "delivery_means": self.delivery_means,
            "return_due": iso(self.return_due),
        }


def _same_time_days_later(moment: datetime, days: int) -> datetime:
    """``days`` Warsaw calendar days later at the same local time of day (E9, E10).

    A wall-clock time that does not exist that day (spring DST gap) moves forward
    by the gap; an ambiguous one (autumn) takes the first occurrence.
    """
    local = to_warsaw(moment)
    target = datetime.combine(local.date() + timedelta(days=days), local.time(), tzinfo=WARSAW)
    # Round-trip through UTC so a wall time inside the DST gap gets a real offset.
    return target.astimezone(UTC).astimezone(WARSAW)


def reaction_due(terms: SlaTerms, submitted: datetime) -> datetime | None:
    """When an engineer must have reacted: ticket-window time after sending (W2, E8).

    None where the plan promises no reaction time (W2 decision).
    """
    if terms.reaction_hours is None:
        return None
    # In UTC: adding hours to a Europe/Warsaw datetime would be wall-clock arithmetic,
    # wrong across a DST change (C2).
    start = to_warsaw(submitted).astimezone(UTC)
    return add_window_time(start, timedelta(hours=terms.reaction_hours), terms.window)


def delivery_due(terms: SlaTerms, accepted: datetime) -> datetime:
    """When the replacement or repaired unit must arrive, from acceptance (W3, E9)."""
    if terms.delivery_kind == "next_business_day":
        # E9: by 17:00 of the next business day after the day of acceptance.
        return at_warsaw(next_business_day(warsaw_date(accepted)), NBD_DEADLINE)
    if terms.delivery_kind == "clock_hours":
        # E9: clock hours, so elapsed time even across a DST change.
        return to_warsaw(
            to_warsaw(accepted).astimezone(UTC) + timedelta(hours=terms.delivery_amount)
        )
    return _same_time_days_later(accepted, terms.delivery_amount)


def return_due(terms: SlaTerms, received: datetime) -> datetime:
    """When the failed unit must be sent back, from the replacement's arrival (W6, P4, E10)."""
    return _same_time_days_later(received, terms.return_days)


class MomentOrderError(ValueError):
    """Moments of a ticket's life given in an impossible order; the message names both."""

    def __init__(self, message: str, *, later: str, earlier: str) -> None:
        super().__init__(message)
        #: The name of the moment given too early, and of the one it cannot precede.
        self.later = later
        self.earlier = earlier


def check_order(moments: Sequence[tuple[str, datetime | None]]) -> None:
    """Refuse moments out of their life order (sent, accepted, received...): each given one
    must not be before the one given before it. MomentOrderError names both, with times."""
    previous: tuple[str, datetime] | None = None
    for name, moment in moments:
        if moment is None:
            continue
        if previous is not None and moment < previous[1]:
            raise MomentOrderError(
                f"{name} {to_warsaw(moment).isoformat()} is before {previous[0]} "
                f"{to_warsaw(previous[1]).isoformat()}: it cannot come first",
                later=name,
                earlier=previous[0],
            )
        previous = (name, moment)


def deadlines(
    terms: SlaTerms,
    *,
    submitted: datetime | None,
    accepted: datetime | None = None,
    received: datetime | None = None,
) -> SlaDeadlines:
    """All deadlines whose starting moment is known."""
    return SlaDeadlines(
        window=terms.window,
        reaction_due=None if submitted is None else reaction_due(terms, submitted),
        delivery_due=None if accepted is None else delivery_due(terms, accepted),
        return_due=None if received is None else return_due(terms, received),
        delivery_means=terms.delivery_means,
    )
