"""The service-plan catalogue: the seed's plan table as validated data (data/plans.toml)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

from polyfleet.shared.schema import Model

Window = Literal["8x5", "24x7"]
PatchRule = Literal["purchase_90_days", "whole_term"]
DeliveryKind = Literal["next_business_day", "clock_hours", "calendar_days"]
#: What a repair time promises by its deadline: the unit arrives, or it is shipped (W3, P3).
DeliveryMeans = Literal["arrival", "dispatch"]
DELIVERY_MEANS: tuple[DeliveryMeans, ...] = ("arrival", "dispatch")

WINDOWS: tuple[Window, ...] = ("8x5", "24x7")
PATCH_RULES: tuple[PatchRule, ...] = ("purchase_90_days", "whole_term")
DELIVERY_KINDS: tuple[DeliveryKind, ...] = ("next_business_day", "clock_hours", "calendar_days")
LANGUAGES = ("pl", "en")
#: Models an asset may be; ``unknown`` is what an agent says when it cannot tell.
ASSET_MODELS = tuple(model.value for model in Model if model is not Model.UNKNOWN)


class CatalogueError(ValueError):
    """The plan or release catalogue is malformed; the message names the key."""


@dataclass(frozen=True, kw_only=True)
class Delivery:
    """One repair/replacement time option (W3, E9)."""

    key: str
    label: str
    kind: DeliveryKind
    amount: int = 0


@dataclass(frozen=True, kw_only=True)
class Contacts:
    """A service desk's channels and escalation contacts (W7)."""

    key: str
    name: str
    phone: str
    portal: str
    email: str
    escalation_email: str
    escalation_phone: str

    def to_json(self) -> dict[str, str]:
        channels = asdict(self)
        del channels["key"]  # names the catalogue entry; not a channel
        return channels


@dataclass(frozen=True, kw_only=True)
class Plan:
    """One plan of the seed table, with every cell and our decisions as fields."""

    id: str
    name: str
    contract: bool
    window: Window
    repair: Delivery
    patches: PatchRule
    upgrades: bool
    technical_support: bool
    configuration_help: bool
    language: str | None
    max_term_years: int
    term_years: tuple[int, ...] | None
    term_rule: str | None
    term_breach: Literal["ineligible", "error"]
    return_days: int
    reaction_hours: int | None
    eligible_models: frozenset[str] | None
    eligibility_rule: str | None
    purchase_to_contract_days: int | None
    purchase_rule: str | None
    shipping_paid: bool
    delivery_means: DeliveryMeans = "arrival"
    renewable: bool = False
    renewal_rule: str = "E5"
    contacts: Contacts | None = None
    #: Remote diagnostics on failure (H4): a fault ticket gets the unit's own network tests.
    remote_diagnostics: bool = False

    @property
    def patches_whole_term(self) -> bool:
        """True when patches run for the whole contract (S1, E4)."""
        return self.patches == "whole_term"

    def rule_text(self, rule: str) -> str | None:
        """What this plan's eligibility rule ``rule`` asks, in words for people; None if not its.

        The rule id itself stays out: it belongs in docs and the JSON's ``rule`` fields.
        """
        asks: list[str] = []
        if rule == self.eligibility_rule and self.eligible_models is not None:
            asks.append(f"covers only {', '.join(sorted(self.eligible_models))}")
        if rule == self.term_rule and self.term_years:
            lengths = " or ".join(str(n) for n in self.term_years)
            asks.append(f"is sold only for {lengths}-year terms")
        if rule == self.purchase_rule and self.purchase_to_contract_days is not None:
            asks.append(f"must start within {self.purchase_to_contract_days} days of the purchase")
        return f"{self.id} {' and '.join(asks)}" if asks else None


@dataclass(frozen=True, kw_only=True)
class PlanCatalogue:
    """Every plan by id, the delivery options, and the purchase-based periods."""

    plans: Mapping[str, Plan]
    deliveries: Mapping[str, Delivery]
    patch_days_from_purchase: int
    standard_warranty_years: int
    #: [decision] A contract flagged ineligible (H1, H5) still counts in verdicts, flagged.
    ineligible_contracts_grant: bool = True
    #: Service desks by key (W7), and the one of tickets whose plan names none.
    contacts: Mapping[str, Contacts] = field(default_factory=dict)
    default_contacts: Contacts | None = None

    def contacts_of(self, plan: Plan | None) -> Contacts | None:
        """Where a ticket under ``plan`` (or none) is followed up and escalated (W7)."""
        if plan is not None and plan.contacts is not None:
            return plan.contacts
        return self.default_contacts

    def rule_text(self, rule: str) -> str:
        """Eligibility rule ``rule`` in words, from every plan that has it (no rule id)."""
        texts = [text for plan in self.plans.values() if (text := plan.rule_text(rule))]
        return "; ".join(texts) or "an eligibility rule of the service terms"

    def get(self, plan_id: str) -> Plan:
        """The plan ``plan_id``; KeyError names the known ones."""
        try:
            return self.plans[plan_id]
        except KeyError:
            known = ", ".join(sorted(self.plans))
            raise KeyError(f"unknown plan {plan_id!r} (known: {known})") from None

    @property
    def standard(self) -> Plan:
        """The manufacturer warranty every device has from its purchase (E3)."""
        return self.plans["standard"]

    def standard_warranty_until(self, purchase: date) -> date:
        """Last day of the manufacturer warranty (E1, E3): a full year, also from 29 February."""
        return last_day_of_years(purchase, self.standard_warranty_years)

    def purchase_patches_until(self, purchase: date) -> date:
        """Last day of patches counted from the hardware purchase (S1, E1, E4)."""
        return purchase + timedelta(days=self.patch_days_from_purchase - 1)


def add_years(day: date, years: int) -> date:
    """``day`` moved by whole years; 29 February lands on 28 February in a common year."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return day.replace(year=day.year + years, day=28)


def last_day_of_years(start: date, years: int) -> date:
    """The last covered day of a term of ``years`` whole years from ``start`` (E1).

    The day before the same date ``years`` later; a term from 29 February runs to 28 February
    of a common year (the term ends where 1 March begins), so it keeps a full year's days.
    """
    try:
        following = start.replace(year=start.year + years)
    except ValueError:
        following = date(start.year + years, 3, 1)
    return following - timedelta(days=1)


def _take(table: Mapping[str, Any], key: str, kind: type, where: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise CatalogueError(f"{where}: missing key {key!r}")
        return default
    value = table[key]
    # bool is an int in Python; a count given as true/false is a typo, not a number.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise CatalogueError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _choice(value: str, allowed: tuple[str, ...], where: str) -> str:
    if value not in allowed:
        raise CatalogueError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _parse_delivery(key: str, table: Mapping[str, Any]) -> Delivery:
    where = f"delivery.{key}"
    kind = _choice(_take(table, "kind", str, where), DELIVERY_KINDS, f"{where}.kind")
    amount = _take(table, "amount", int, where, 0)
    if kind != "next_business_day" and amount <= 0:
        raise CatalogueError(f"{where}.amount: a {kind} delivery needs a positive amount")
    return Delivery(key=key, label=_take(table, "label", str, where), kind=kind, amount=amount)  # type: ignore[arg-type]


_CONTACT_KEYS = ("name", "phone", "portal", "email", "escalation_email", "escalation_phone")


def _parse_contacts(key: str, table: Mapping[str, Any]) -> Contacts:
    where = f"contacts.{key}"
    values = {name: _take(table, name, str, where) for name in _CONTACT_KEYS}
    unknown = sorted(set(table) - set(_CONTACT_KEYS))
    if unknown:
        raise CatalogueError(f"{where}: unknown key(s) {', '.join(unknown)}")
    return Contacts(key=key, **values)


def _parse_plan(
    plan_id: str,
    table: Mapping[str, Any],
    deliveries: Mapping[str, Delivery],
    contacts: Mapping[str, Contacts],
) -> Plan:
    where = f"plans.{plan_id}"
    repair_key = _take(table, "repair", str, where)
    if repair_key not in deliveries:
        raise CatalogueError(f"{where}.repair: {repair_key!r} is not a [delivery] option")
    language = _take(table, "language", str, where, None)
    if language is not None:
        _choice(language, LANGUAGES, f"{where}.language")
    term_years_raw = _take(table, "term_years", list, where, None)
    term_years: tuple[int, ...] | None = None
    max_term = _take(table, "max_term_years", int, where)
    if term_years_raw is not None:
        if not term_years_raw or not all(
            isinstance(n, int) and not isinstance(n, bool) and 0 < n <= max_term
            for n in term_years_raw
        ):
            raise CatalogueError(f"{where}.term_years: whole years from 1 to max_term_years")
        term_years = tuple(term_years_raw)
    models_raw = _take(table, "eligible_models", list, where, None)
    models: frozenset[str] | None = None
    if models_raw is not None:
        for model in models_raw:
            _choice(str(model), ASSET_MODELS, f"{where}.eligible_models")
        models = frozenset(models_raw)
    reaction = _take(table, "reaction_hours", int, where, None)
    purchase_days = _take(table, "purchase_to_contract_days", int, where, None)
    contacts_key = _take(table, "contacts", str, where, None)
    if contacts_key is not None and contacts_key not in contacts:
        raise CatalogueError(f"{where}.contacts: {contacts_key!r} is not a [contacts] table")
    plan = Plan(
        id=plan_id,
        name=_take(table, "name", str, where),
        contract=_take(table, "contract", bool, where),
        window=_choice(_take(table, "window", str, where), WINDOWS, f"{where}.window"),  # type: ignore[arg-type]
        repair=deliveries[repair_key],
        patches=_choice(_take(table, "patches", str, where), PATCH_RULES, f"{where}.patches"),  # type: ignore[arg-type]
        upgrades=_take(table, "upgrades", bool, where),
        technical_support=_take(table, "technical_support", bool, where),
        configuration_help=_take(table, "configuration_help", bool, where),
        remote_diagnostics=_take(table, "remote_diagnostics", bool, where, False),
        language=language,
        max_term_years=max_term,
        term_years=term_years,
        term_rule=_take(table, "term_rule", str, where, None),
        term_breach=_choice(  # type: ignore[arg-type]
            _take(table, "term_breach", str, where, "error"),
            ("ineligible", "error"),
            f"{where}.term_breach",
        ),
        return_days=_take(table, "return_days", int, where),
        reaction_hours=reaction,
        eligible_models=models,
        eligibility_rule=_take(table, "eligibility_rule", str, where, None),
        purchase_to_contract_days=purchase_days,
        purchase_rule=_take(table, "purchase_rule", str, where, None),
        shipping_paid=_take(table, "shipping_paid", bool, where, False),
        delivery_means=_choice(  # type: ignore[arg-type]
            _take(table, "delivery_means", str, where, "arrival"),
            DELIVERY_MEANS,
            f"{where}.delivery_means",
        ),
        renewable=_take(table, "renewable", bool, where, False),
        # E5 is the renewals rule itself when a plan names no rule of its own.
        renewal_rule=_take(table, "renewal_rule", str, where, "E5"),
        contacts=None if contacts_key is None else contacts[contacts_key],
    )
    if plan.term_years is not None and plan.term_rule is None:
        raise CatalogueError(f"{where}.term_rule: needed with term_years (which rule it is)")
    if plan.eligible_models is not None and plan.eligibility_rule is None:
        raise CatalogueError(f"{where}.eligibility_rule: needed with eligible_models")
    if plan.purchase_to_contract_days is not None and plan.purchase_rule is None:
        raise CatalogueError(f"{where}.purchase_rule: needed with purchase_to_contract_days")
    return plan


def parse_plans(document: Mapping[str, Any]) -> PlanCatalogue:
    """Validate a parsed plans.toml; CatalogueError names the offending key."""
    delivery_tables = _take(document, "delivery", dict, "plans.toml")
    deliveries = {
        key: _parse_delivery(key, _take(delivery_tables, key, dict, "delivery"))
        for key in delivery_tables
    }
    contact_tables = _take(document, "contacts", dict, "plans.toml", {})
    contacts = {
        key: _parse_contacts(key, _take(contact_tables, key, dict, "contacts"))
        for key in contact_tables
    }
    default_key = _take(document, "default_contacts", str, "plans.toml", None)
    if default_key is not None and default_key not in contacts:
        raise CatalogueError(f"plans.toml.default_contacts: {default_key!r} is not a [contacts]")
    plan_tables = _take(document, "plans", dict, "plans.toml")
    plans = {
        plan_id: _parse_plan(
            plan_id, _take(plan_tables, plan_id, dict, "plans"), deliveries, contacts
        )
        for plan_id in plan_tables
    }
    if "standard" not in plans or plans["standard"].contract:
        raise CatalogueError(
            "plans.standard: the manufacturer warranty (contract = false) is needed"
        )
    return PlanCatalogue(
        plans=plans,
        deliveries=deliveries,
        patch_days_from_purchase=_take(document, "patch_days_from_purchase", int, "plans.toml"),
        standard_warranty_years=_take(document, "standard_warranty_years", int, "plans.toml"),
        ineligible_contracts_grant=_take(
            document, "ineligible_contracts_grant", bool, "plans.toml", True
        ),
        contacts=contacts,
        default_contacts=None if default_key is None else contacts[default_key],
    )
