"""What a device may get at a moment: plan, warranty, patches, upgrades, next firmware hop."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, time, timedelta
from typing import Any, Literal, get_args

from polyfleet.controller.domain.assets import (
    Asset,
    Contract,
    InstalledFirmware,
    follows,
    parse_day,
)
from polyfleet.controller.domain.calendar import WARSAW, to_warsaw, warsaw_date
from polyfleet.controller.domain.plans import Plan, PlanCatalogue
from polyfleet.controller.domain.releases import HopKind, Release, ReleaseCatalogue, hop_kind
from polyfleet.shared.version import FirmwareVersion

#: Horizons of the ``contract_expiring_N`` flags, smallest first.
EXPIRY_HORIZONS = (30, 60, 90, 180)
#: ``patch_window_closing`` when patches end within this many days.
PATCH_CLOSING_DAYS = 30
Flag = Literal[
    "update_entitled",
    "update_not_entitled",
    "patch_window_closing",
    "contract_expiring_30",
    "contract_expiring_60",
    "contract_expiring_90",
    "contract_expiring_180",
    "out_of_warranty",
    "ineligible_contract",
    "unknown_asset",
    "not_reported",
]
#: Every flag a verdict may carry, in the order they are listed.
FLAGS: tuple[str, ...] = get_args(Flag)


@dataclass(frozen=True)
class Span:
    """A run of covered days, both ends included (E1)."""

    start: date
    end: date

    def covers(self, day: date) -> bool:
        return self.start <= day <= self.end


@dataclass(frozen=True)
class CoveredDays:
    """The covered runs of one right (warranty, patches or upgrades), merged where they touch."""

    spans: tuple[Span, ...]

    @classmethod
    def of(cls, spans: Iterable[Span]) -> CoveredDays:
        merged: list[Span] = []
        for span in sorted(spans, key=lambda s: s.start):
            if merged and span.start <= merged[-1].end + timedelta(days=1):
                merged[-1] = Span(merged[-1].start, max(merged[-1].end, span.end))
            else:
                merged.append(span)
        return cls(tuple(merged))

    def covers(self, day: date) -> bool:
        return any(span.covers(day) for span in self.spans)

    def relevant(self, day: date) -> Span | None:
        """The run holding ``day``; else the last one before it; else the first one after it."""
        for span in self.spans:
            if span.covers(day):
                return span
        past = [span for span in self.spans if span.end < day]
        if past:
            return past[-1]
        return self.spans[0] if self.spans else None

    def until(self, day: date) -> date | None:
        """Last covered day of the relevant run (E1), or None when the right never applies."""
        span = self.relevant(day)
        return span.end if span else None


@dataclass(frozen=True)
class Coverage:
    """The warranty, patch and upgrade windows of one device across its whole history."""

    warranty: CoveredDays
    patches: CoveredDays
    upgrades: CoveredDays

    def window_for(self, kind: HopKind) -> CoveredDays:
        """The patch window for a patch, the upgrade window for an upgrade (S4)."""
        return self.patches if kind == "patch" else self.upgrades


def granting(asset: Asset, plans: PlanCatalogue) -> tuple[Contract, ...]:
    """The contracts that give rights: all, or only eligible ones, as the catalogue decides."""
    if plans.ineligible_contracts_grant:
        return asset.contracts
    return tuple(c for c in asset.contracts if not c.ineligible_rules)


def chain_end(contracts: Sequence[Contract], first: Contract) -> date:
    """Last day of the renewals that follow ``first`` without a break (E5)."""
    last = first
    for contract in contracts:
        if follows(last, contract):
            last = contract
    return last.end


def coverage(asset: Asset, plans: PlanCatalogue) -> Coverage:
    """Windows from purchase and contracts (E3, E4, S1, S2)."""
    purchase = asset.purchase_date
    warranty = [Span(purchase, plans.standard_warranty_until(purchase))]  # E3
    patches = [Span(purchase, plans.purchase_patches_until(purchase))]  # S1
    upgrades: list[Span] = []
    for contract in granting(asset, plans):
        plan = plans.get(contract.plan)
        term = Span(contract.start, contract.end)
        warranty.append(term)  # E3: every plan covers hardware during its term
        if plan.patches_whole_term:
            patches.append(term)  # E4
        if plan.upgrades:
            upgrades.append(term)  # S2
    return Coverage(CoveredDays.of(warranty), CoveredDays.of(patches), CoveredDays.of(upgrades))


def parse_moment(text: str) -> datetime:
    """An ISO 8601 moment with an offset, or a plain date meaning its Warsaw midnight (C2).

    A moment without an offset is refused: across DST it is ambiguous, so the caller says it.
    """
    text = text.strip()
    try:
        if len(text) == 10:
            # A day alone, as people write it; one that does not exist is named as such.
            return datetime.combine(parse_day(text), time(0, 0), tzinfo=WARSAW)
        moment = datetime.fromisoformat(text)
    except ValueError:
        if len(text) == 10:
            raise
        raise ValueError(
            f"{text!r} is not ISO 8601 (e.g. 2026-12-01T09:00:00+01:00 or 2026-12-01)"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no offset: add one (e.g. +01:00 or Z) or give a date")
    return to_warsaw(moment)


def plan_in_force(asset: Asset, plans: PlanCatalogue, day: date) -> Plan | None:
    """The contract's plan covering ``day``; else standard while the 1-year warranty runs (E5)."""
    contract = _contract_at(granting(asset, plans), day)
    if contract is not None:
        return plans.get(contract.plan)
    if asset.purchase_date <= day <= plans.standard_warranty_until(asset.purchase_date):
        return plans.standard
    return None


def _contract_at(contracts: Sequence[Contract], day: date) -> Contract | None:
    return next((c for c in contracts if c.covers(day)), None)


def entitled_to(
    asset: Asset,
    plans: PlanCatalogue,
    installed: FirmwareVersion,
    target: FirmwareVersion,
    install_at: datetime,
) -> bool:
    """True when installing ``target`` over ``installed`` at ``install_at`` is covered (S3, S4).

    A rollout planner asks this for each device at its wave's planned install time.
    """
    window = coverage(asset, plans).window_for(hop_kind(installed, target))
    return window.covers(warsaw_date(install_at))


def install_window(
    asset: Asset,
    plans: PlanCatalogue,
    installed: FirmwareVersion,
    target: FirmwareVersion,
    at: datetime,
) -> Span | None:
    """The days on which installing ``target`` over ``installed`` is covered, seen from ``at``.

    The covered run holding ``at``, else the next one after it (a contract yet to
    start), else None: the hop is never covered from ``at`` on. S4: a wave planned
    after ``end`` is too late, so the planner moves the device to an earlier wave;
    one planned before ``start`` waits for the window to open. Ends are last covered
    Warsaw days (E1).
    """
    day = warsaw_date(at)
    window = coverage(asset, plans).window_for(hop_kind(installed, target))
    return next((span for span in window.spans if span.end >= day), None)


@dataclass(frozen=True, kw_only=True)
class FirmwareVerdict:
    """The installed version and the next hop towards the newest release (E7)."""

    installed: str | None = None
    next: str | None = None
    kind: HopKind | None = None
    entitled: bool | None = None
    entitled_next: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class EntitlementVerdict:
    """Everything one device may get at one moment; ``to_json`` is the issue's verdict shape."""

    serial: str
    plan: str | None
    warranty_until: date | None
    patches_until: date | None
    upgrades_until: date | None
    window: str | None
    reaction_hours: int | None
    repair: str | None
    language: str | None
    eligible: bool
    ineligible_rules: tuple[str, ...]
    flags: tuple[str, ...]
    firmware: FirmwareVerdict = field(default_factory=FirmwareVerdict)
    contract_number: str | None = None
    contract_until: date | None = None

    def with_flags(self, *extra: str) -> EntitlementVerdict:
        """The same verdict with more flags, kept in the canonical order."""
        merged = set(self.flags) | set(extra)
        return replace(self, flags=tuple(flag for flag in FLAGS if flag in merged))

    def to_json(self) -> dict[str, Any]:
        def day(value: date | None) -> str | None:
            return value.isoformat() if value else None

        return {
            "serial": self.serial,
            "plan": self.plan,
            "warranty_until": day(self.warranty_until),
            "patches_until": day(self.patches_until),
            "upgrades_until": day(self.upgrades_until),
            "window": self.window,
            "reaction_hours": self.reaction_hours,
            "repair": self.repair,
            "language": self.language,
            "eligible": self.eligible,
            "ineligible_rules": list(self.ineligible_rules),
            "flags": list(self.flags),
            "firmware": self.firmware.to_json(),
        }


def _firmware_verdict(
    model: str | None,
    installed_firmware: InstalledFirmware | None,
    releases: ReleaseCatalogue,
    cover: Coverage,
    day: date,
) -> FirmwareVerdict:
    if installed_firmware is None:
        return FirmwareVerdict()
    text, installed = installed_firmware.text, installed_firmware.version
    if model is not None and not releases.applies_to(model):
        # An E70 camera runs firmware of its own; the VideoOS catalogue says nothing about it.
        return FirmwareVerdict(installed=text)
    candidates: Sequence[Release] = releases.candidates(installed, day)  # E7
    if not candidates:
        return FirmwareVerdict(installed=text)
    hop = candidates[-1]
    kind = hop_kind(installed, hop.version)  # S3
    covered = [
        release
        for release in candidates
        if cover.window_for(hop_kind(installed, release.version)).covers(day)  # S4
    ]
    return FirmwareVerdict(
        installed=text,
        next=hop.text,
        kind=kind,
        entitled=cover.window_for(kind).covers(day),
        entitled_next=covered[-1].text if covered else None,
    )


def judge(
    asset: Asset,
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    at: datetime,
    *,
    installed: InstalledFirmware | None = None,
) -> EntitlementVerdict:
    """The verdict for ``asset`` at ``at`` (S1-S4, H1-H6, P5, E1-E7); ``at`` must be aware."""
    day = warsaw_date(at)  # E1: day boundaries are Warsaw dates
    cover = coverage(asset, plans)
    plan = plan_in_force(asset, plans, day)
    contracts = granting(asset, plans)
    in_force = _contract_at(contracts, day)
    # Past contracts no longer matter; the one in force and those still to come do (H1, H5).
    live: list[Contract] = [c for c in asset.contracts if c.end >= day]
    rules = tuple(sorted({rule for c in live for rule in c.ineligible_rules}))
    firmware = _firmware_verdict(asset.model, installed, releases, cover, day)
    flags: set[str] = set()
    if firmware.entitled_next is not None:
        flags.add("update_entitled")
    if firmware.next is not None and not firmware.entitled:
        flags.add("update_not_entitled")
    patches_until = cover.patches.until(day)
    if (
        cover.patches.covers(day)
        and patches_until is not None
        and (patches_until - day).days <= PATCH_CLOSING_DAYS
    ):
        flags.add("patch_window_closing")
    contract_until: date | None = None
    if in_force is not None:
        # E5: renewals already registered continue the contract, so the chain's end is what lapses.
        contract_until = chain_end(contracts, in_force)
        left = (contract_until - day).days
        horizon = next((h for h in EXPIRY_HORIZONS if left <= h), None)
        if horizon is not None:
            flags.add(f"contract_expiring_{horizon}")
    if not cover.warranty.covers(day):
        flags.add("out_of_warranty")
    if rules:
        flags.add("ineligible_contract")
    return EntitlementVerdict(
        serial=asset.serial,
        plan=plan.id if plan else None,
        warranty_until=cover.warranty.until(day),
        patches_until=patches_until,
        upgrades_until=cover.upgrades.until(day),
        window=plan.window if plan else None,
        reaction_hours=plan.reaction_hours if plan else None,  # W2: none unless promised
        repair=plan.repair.key if plan else None,
        language=plan.language if plan else None,
        eligible=not rules,
        ineligible_rules=rules,
        flags=tuple(flag for flag in FLAGS if flag in flags),
        firmware=firmware,
        contract_number=in_force.number if in_force else None,
        contract_until=contract_until,
    )


def unknown_asset_verdict(
    serial: str,
    releases: ReleaseCatalogue,
    at: datetime,
    *,
    installed: InstalledFirmware | None = None,
    model: str | None = None,
) -> EntitlementVerdict:
    """A device an agent reports but the registry lacks: nothing is known to be covered."""
    empty = Coverage(CoveredDays(()), CoveredDays(()), CoveredDays(()))
    day = warsaw_date(at)
    firmware = _firmware_verdict(model, installed, releases, empty, day)
    flags = {"unknown_asset"}
    if firmware.next is not None:
        flags.add("update_not_entitled")
    return EntitlementVerdict(
        serial=serial,
        plan=None,
        warranty_until=None,
        patches_until=None,
        upgrades_until=None,
        window=None,
        reaction_hours=None,
        repair=None,
        language=None,
        eligible=True,
        ineligible_rules=(),
        flags=tuple(flag for flag in FLAGS if flag in flags),
        firmware=firmware,
    )
