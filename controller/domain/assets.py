"""The asset registry: a CSV checked whole into devices with contract chains (E2, E5, H1, H5)."""

from __future__ import annotations

import calendar
import csv
import io
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any

from polyfleet.controller.domain.admin_input import AdminInputError, contract_number, display_name
from polyfleet.controller.domain.plans import (
    ASSET_MODELS,
    Plan,
    PlanCatalogue,
    add_years,
    last_day_of_years,
)
from polyfleet.controller.errors import Invalid
from polyfleet.shared.version import FirmwareVersion, VersionError

#: The registry CSV columns, in the order we write them.
COLUMNS = (
    "serial",
    "model",
    "purchase_date",
    "plan",
    "contract_number",
    "contract_start",
    "contract_end",
    "site",
    "room",
    "host_serial",
)
CONTRACT_COLUMNS = ("contract_number", "contract_start", "contract_end")
FIRMWARE_COLUMNS = ("serial", "version")
#: Rows in one import; a registry for 10,000 devices with renewals fits with room to spare.
MAX_ROWS = 100_000
_SERIAL_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_SITE_RE = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")
_MAX_TEXT = 256
_DEVICE_FIELDS = ("model", "purchase_date", "site", "room", "host_serial")
#: What Excel writes for CSV in a Polish locale when not asked for UTF-8.
POLISH_EXCEL_ENCODING = "cp1250"
_DELIMITERS = (",", ";", "\t")
_ISO_DAY = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
_DOTTED_DAY = re.compile(r"(\d{1,2})\.(\d{1,2})\.(\d{4})")
_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


class EncodingProblem(ValueError):
    """The bytes are not text in an encoding we read; the message says how to save the file."""


@dataclass(frozen=True)
class DecodedText:
    """A file's text and how it was read; ``note`` tells the admin when it was not UTF-8."""

    text: str
    encoding: str
    note: str | None = None


def decode_csv(data: bytes) -> DecodedText:
    """A CSV file's text as spreadsheets save it: UTF-8 (BOM or not), UTF-16 with a BOM,
    or Windows-1250 (Excel's plain CSV in a Polish locale), which ``note`` then says."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return DecodedText(data.decode("utf-16"), "utf-16")
        except UnicodeDecodeError as exc:
            raise EncodingProblem(
                f"marked as UTF-16 but not valid UTF-16 at byte {exc.start}"
            ) from None
    try:
        return DecodedText(data.decode("utf-8-sig"), "utf-8")
    except UnicodeDecodeError as exc:
        where = f"byte 0x{data[exc.start]:02x} at position {exc.start}"
    try:
        text = data.decode(POLISH_EXCEL_ENCODING)
    except UnicodeDecodeError:
        raise EncodingProblem(
            f"not UTF-8 text ({where}) and not Windows-1250 either: save it as CSV UTF-8 "
            "(in Excel: Save As, CSV UTF-8 (Comma delimited))"
        ) from None
    return DecodedText(
        text,
        POLISH_EXCEL_ENCODING,
        note=f"not UTF-8 ({where}): read as Windows-1250, the encoding Excel uses for CSV "
        "in a Polish locale; check names with Polish letters, or save it as CSV UTF-8",
    )


def parse_day(text: str) -> date:
    """A calendar day written YYYY-MM-DD or DD.MM.YYYY (as Polish spreadsheets show it).

    ValueError says what is wrong in words: a day that does not exist is named as such.
    """
    text = text.strip()
    if match := _ISO_DAY.fullmatch(text):
        year, month, day = (int(part) for part in match.groups())
    elif match := _DOTTED_DAY.fullmatch(text):
        day, month, year = (int(part) for part in match.groups())
    else:
        raise ValueError(f"{text!r} is not a date: write YYYY-MM-DD (or DD.MM.YYYY)")
    if not 1 <= month <= 12:
        raise ValueError(f"{text} is not a date: there is no month {month}")
    try:
        return date(year, month, day)
    except ValueError:
        last = calendar.monthrange(year, month)[1]
        raise ValueError(
            f"{text} is not a date: {_MONTHS[month - 1]} {year} has {last} days"
        ) from None


#: The keys of a problem, as every face prints it (``ImportProblem`` as a mapping).
PROBLEM_KEYS = ("line", "column", "message", "rule")


@dataclass(frozen=True, kw_only=True, order=True)
class ImportProblem(Mapping[str, Any]):
    """One thing wrong with one cell (line 1 is the header).

    Also a mapping of ``PROBLEM_KEYS``: the shape of a refusal's ``problems`` that the API
    answers and the CLI prints.
    """

    line: int
    column: str
    message: str
    #: The service-terms rule the cell breaks, for scripts and docs (never in ``message``).
    rule: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return dict(self)

    def __getitem__(self, key: str) -> Any:
        if key not in PROBLEM_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(PROBLEM_KEYS)

    def __len__(self) -> int:
        return len(PROBLEM_KEYS)


class RegistryImportError(Invalid, ValueError):
    """The file has bad rows; ``problems`` lists every one, and nothing was imported.

    A refusal (422, code ``invalid_registry``, field ``body``): the API answers it with the
    problems beside the error, the dashboard next to their lines, the CLI one per line.
    """

    default_code = "invalid_registry"
    problems: list[ImportProblem]

    def __init__(self, problems: Iterable[ImportProblem]) -> None:
        found = sorted(problems)
        first = found[0] if found else "no details"
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        #: The first problem, and how many more there are.
        self.summary = f"{first}{more}"
        super().__init__(
            f"nothing imported: {len(found)} problem(s), first: {self.summary}", field="body"
        )
        self.problems = found


#: Why a contract is flagged (kept and flagged, not refused), each with the rule it breaks:
#: ``model`` the plan does not cover the device's model (H1); ``term`` a term length the plan
#: is not sold for (H5); ``late_purchase`` bought too long after the device (H5, E6);
#: ``renewal`` a renewal of a plan that is not sold as renewals; ``chain_length`` renewals
#: running longer in a row than the plan's maximum term (P5); ``rule`` a flag stored before
#: flags had codes.
FLAG_CODES = ("model", "term", "late_purchase", "renewal", "chain_length", "rule")


@dataclass(frozen=True)
class ContractFlag:
    """One reason a contract is flagged: the rule id and what breaks it."""

    rule: str
    code: str

    def to_doc(self) -> dict[str, str]:
        return {"rule": self.rule, "code": self.code}


@dataclass(frozen=True, kw_only=True)
class Contract:
    """One service contract term; ``end`` is its last covered day (E1, E2)."""

    plan: str
    number: str
    start: date
    end: date
    #: Eligibility rules this contract breaks (H1, H5, P5...); it is kept and flagged.
    ineligible_rules: tuple[str, ...] = ()
    #: The same, each with what breaks it (``FLAG_CODES``).
    flags: tuple[ContractFlag, ...] = ()
    line: int = field(default=0, compare=False)

    def covers(self, day: date) -> bool:
        return self.start <= day <= self.end

    def flagged(self, *extra: ContractFlag) -> Contract:
        """The same contract with more flags (and their rules)."""
        flags = tuple(dict.fromkeys((*self.flags, *extra)))
        rules = tuple(sorted({*self.ineligible_rules, *(flag.rule for flag in flags)}))
        return replace(self, flags=flags, ineligible_rules=rules)

    def to_doc(self) -> dict[str, Any]:
        return {
            "plan": self.plan,
            "contract_number": self.number,
            "contract_start": self.start.isoformat(),
            "contract_end": self.end.isoformat(),
            "ineligible_rules": list(self.ineligible_rules),
            "flags": [flag.to_doc() for flag in self.flags],
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Contract:
        rules = tuple(str(rule) for rule in doc.get("ineligible_rules", ()))
        stored = doc.get("flags")
        if isinstance(stored, list):
            flags = tuple(ContractFlag(str(f["rule"]), str(f["code"])) for f in stored)
        else:
            # Stored before flags had codes: the rule is known, not what broke it.
            flags = tuple(ContractFlag(rule, "rule") for rule in rules)
        return cls(
            plan=str(doc["plan"]),
            number=str(doc["contract_number"]),
            start=date.fromisoformat(str(doc["contract_start"])),
            end=date.fromisoformat(str(doc["contract_end"])),
            ineligible_rules=rules,
            flags=flags,
        )


@dataclass(frozen=True, kw_only=True)
class Asset:
    """One registered device with its contracts chained oldest first (E5)."""

    serial: str
    model: str
    purchase_date: date
    site: str
    room: str = ""
    host_serial: str | None = None
    contracts: tuple[Contract, ...] = ()
    lines: tuple[int, ...] = field(default=(), compare=False)

    @property
    def ineligible_rules(self) -> tuple[str, ...]:
        """Every eligibility rule any of its contracts breaks, sorted."""
        return tuple(sorted({rule for c in self.contracts for rule in c.ineligible_rules}))

    def contract_at(self, day: date) -> Contract | None:
        """The contract whose term covers ``day`` (E5)."""
        return next((c for c in self.contracts if c.covers(day)), None)

    def to_doc(self) -> dict[str, Any]:
        """A JSON-safe document for the store."""
        return {
            "serial": self.serial,
            "model": self.model,
            "purchase_date": self.purchase_date.isoformat(),
            "site": self.site,
            "room": self.room,
            "host_serial": self.host_serial,
            "contracts": [c.to_doc() for c in self.contracts],
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Asset:
        host = doc.get("host_serial")
        return cls(
            serial=str(doc["serial"]),
            model=str(doc["model"]),
            purchase_date=date.fromisoformat(str(doc["purchase_date"])),
            site=str(doc["site"]),
            room=str(doc.get("room") or ""),
            host_serial=str(host) if host else None,
            contracts=tuple(Contract.from_doc(c) for c in doc.get("contracts", ())),
        )


@dataclass(frozen=True, kw_only=True)
class ImportPlan:
    """What an import would do to the registry: serials added, changed, left as they were."""

    added: tuple[str, ...]
    updated: tuple[str, ...]
    unchanged: tuple[str, ...]
    ineligible: tuple[str, ...]
    #: serial -> the eligibility rules its contracts break (H1, H5): imported, and flagged.
    ineligible_rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "added": list(self.added),
            "updated": list(self.updated),
            "unchanged": list(self.unchanged),
            "ineligible": list(self.ineligible),
            "ineligible_rules": {
                serial: list(rules) for serial, rules in self.ineligible_rules.items()
            },
        }


def plan_import(current: Mapping[str, Asset], incoming: Iterable[Asset]) -> ImportPlan:
    """Compare ``incoming`` with the registry: each serial in the file replaces its old history."""
    added: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    ineligible: dict[str, tuple[str, ...]] = {}
    for asset in incoming:
        old = current.get(asset.serial)
        bucket = added if old is None else unchanged if old == asset else updated
        bucket.append(asset.serial)
        if asset.ineligible_rules:
            ineligible[asset.serial] = asset.ineligible_rules
    return ImportPlan(
        added=tuple(added),
        updated=tuple(updated),
        unchanged=tuple(unchanged),
        ineligible=tuple(ineligible),
        ineligible_rules=ineligible,
    )


def normalise_model(text: str) -> str | None:
    """``studio_x50`` from "Studio X50", "Poly Studio X50" or "X50"; None if unknown."""
    key = re.sub(r"[\s\-]+", "_", text.strip().lower())
    key = key.removeprefix("poly_")
    if key in ASSET_MODELS:
        return key
    if f"studio_{key}" in ASSET_MODELS:
        return f"studio_{key}"
    return None


#: A Poly product the agents do not poll, as printed on a contract: "Poly Trio C60",
#: "Poly Sync 40", "Polycom RealPresence Group 500" (P1 covers every Poly product).
_OTHER_POLY_PRODUCT = re.compile(r"(?i)(poly|polycom)\s+[A-Za-z0-9][A-Za-z0-9 ._+/()-]{0,60}")


def other_poly_product(text: str) -> str | None:
    """``text`` as the product's name when it names a Poly product the agents do not poll
    (its spacing tidied), else None."""
    name = " ".join(text.split())
    if normalise_model(name) is not None or not _OTHER_POLY_PRODUCT.fullmatch(name):
        return None
    return name


def is_polled_model(model: str) -> bool:
    """Whether the agents poll units of this model (D1 and the G7500), or it is only
    registered (another Poly product: entitlement and hand-opened tickets, no monitoring)."""
    return model in ASSET_MODELS


def whole_years(start: date, end: date) -> int | None:
    """N when ``start``..``end`` is a term of N whole years read either way (E2), else None.

    ``end`` may be the last covered day (``start`` + N years - 1 day) or, for data entered
    the other way, ``start`` + N years; from 29 February, 27 February (the day before the
    28th, as some tools count) is read as a whole year too. The reading only decides whether
    the length is right: ``end`` as written stays the last covered day.
    """
    years = end.year - start.year
    for n in (years - 1, years, years + 1):
        if n < 1:
            continue
        last = last_day_of_years(start, n)
        if end in (last, last + timedelta(days=1), add_years(start, n) - timedelta(days=1)):
            return n
    return None


def longer_than(start: date, end: date, years: int) -> bool:
    """Whether ``start``..``end`` runs longer than ``years`` whole years, read either way (E2)."""
    whole = whole_years(start, end)
    if whole is not None:
        return whole > years
    return end > last_day_of_years(start, years)


def written_exclusive(contract: Contract) -> bool:
    """True when the contract's end was entered as ``start`` + N whole years (E2).

    A renewal of such a term may start on that very day: the two rows then meet, as their
    author meant, rather than overlap (E5).
    """
    years = contract.end.year - contract.start.year
    return any(
        contract.end == last_day_of_years(contract.start, n) + timedelta(days=1)
        for n in (years - 1, years)
        if n >= 1
    )


def follows(before: Contract, after: Contract) -> bool:
    """Whether ``after`` starts where ``before`` ends, so the two chain (E5)."""
    if after.start == before.end + timedelta(days=1):
        return True
    return after.start == before.end and written_exclusive(before)


@dataclass
class _Row:
    line: int
    cells: dict[str, str]
    serial: str = ""
    model: str = ""
    purchase: date | None = None
    contract: Contract | None = None
    host_serial: str | None = None


class _Checker:
    """Collects every problem of a file before deciding anything."""

    def __init__(self, plans: PlanCatalogue | None, today: date | None) -> None:
        self.plans = plans
        self.today = today
        self.problems: list[ImportProblem] = []

    def problem(self, line: int, column: str, message: str, *, rule: str | None = None) -> None:
        self.problems.append(ImportProblem(line=line, column=column, message=message, rule=rule))

    def date_cell(self, row: _Row, column: str, *, required: bool) -> date | None:
        text = row.cells[column]
        if not text:
            if required:
                self.problem(row.line, column, "missing: give a date as YYYY-MM-DD")
            return None
        try:
            return parse_day(text)
        except ValueError as exc:
            self.problem(row.line, column, str(exc))
            return None

    def check_row(self, row: _Row) -> None:
        cells, line = row.cells, row.line
        for column in COLUMNS:
            if len(cells[column]) > _MAX_TEXT:
                self.problem(line, column, f"longer than {_MAX_TEXT} characters")
        # Free text that reaches tickets, e-mail and webhooks: printable only.
        for column, check in (("room", display_name), ("contract_number", contract_number)):
            if cells[column]:
                try:
                    check(cells[column], field=column)
                except AdminInputError as exc:
                    self.problem(line, column, exc.reason)
        row.serial = cells["serial"]
        if not _SERIAL_RE.match(row.serial):
            self.problem(line, "serial", "missing or not a serial (letters, digits, . _ -)")
        model = None
        if cells["model"]:
            model = normalise_model(cells["model"]) or other_poly_product(cells["model"])
        if model is None:
            self.problem(
                line,
                "model",
                f"unknown model {cells['model']!r} (one of {', '.join(ASSET_MODELS)}, or "
                "another Poly product as printed on the contract, e.g. 'Poly Sync 40')",
            )
        else:
            row.model = model
        row.purchase = self.date_cell(row, "purchase_date", required=True)
        if row.purchase and self.today and row.purchase > self.today:
            self.problem(line, "purchase_date", f"{row.purchase} is in the future")
        if not _SITE_RE.match(cells["site"]):
            self.problem(line, "site", "missing or not a site id (letters, digits, . _ -)")
        host = cells["host_serial"]
        if host:
            if not _SERIAL_RE.match(host):
                self.problem(line, "host_serial", "not a serial (letters, digits, . _ -)")
            elif model is not None and model != "studio_e70":
                self.problem(
                    line, "host_serial", "only an E70 camera hangs off a host; leave empty"
                )
            elif host == row.serial:
                self.problem(line, "host_serial", "a camera cannot be its own host")
            else:
                row.host_serial = host
        self.check_contract(row)

    def check_contract(self, row: _Row) -> None:
        cells, line = row.cells, row.line
        plan_id = cells["plan"]
        filled = [c for c in CONTRACT_COLUMNS if cells[c]]
        plan: Plan | None = None
        if plan_id and self.plans is not None:
            try:
                plan = self.plans.get(plan_id)
            except KeyError as exc:
                self.problem(line, "plan", str(exc.args[0]))
                return
        if plan is None or not plan.contract:
            for column in filled:
                reason = (
                    "a contract needs a plan"
                    if plan is None
                    else (f"{plan_id} is the manufacturer warranty from purchase, not a contract")
                )
                self.problem(line, column, f"{reason}; leave it empty or set the plan")
            return
        number = cells["contract_number"]
        if not number:
            # W5: no ticket can be filed without the contract number.
            self.problem(line, "contract_number", f"missing: a {plan_id} contract needs its number")
        start = self.date_cell(row, "contract_start", required=True)
        end = self.date_cell(row, "contract_end", required=True)
        if start is None or end is None:
            return
        if end < start:
            self.problem(line, "contract_end", f"{end} is before contract_start {start}")
            return
        if row.purchase is not None and start < row.purchase:
            self.problem(
                line, "contract_start", f"{start} is before the purchase_date {row.purchase}"
            )
            return
        flags: list[ContractFlag] = []
        years = whole_years(start, end)
        # E2: the end as written is the last covered day; the readings only judge the length.
        if longer_than(start, end, plan.max_term_years):
            longest = last_day_of_years(start, plan.max_term_years)
            self.problem(
                line,
                "contract_end",
                f"{plan_id} runs at most {plan.max_term_years} year(s): "
                f"the last day from {start} is {longest}",
            )
        elif plan.term_years is not None and (years is None or years not in plan.term_years):
            choices = " or ".join(
                f"{last_day_of_years(start, n)} ({n} year{'s' if n > 1 else ''})"
                for n in plan.term_years
            )
            if plan.term_breach == "error":
                self.problem(
                    line,
                    "contract_end",
                    f"{plan_id} is sold in whole terms only; "
                    f"from {start} the last day is {choices}",
                    rule=plan.term_rule,
                )
            else:
                flags.append(ContractFlag(str(plan.term_rule), "term"))  # H5
        if plan.eligible_models is not None and row.model and row.model not in plan.eligible_models:
            flags.append(ContractFlag(str(plan.eligibility_rule), "model"))  # H1
        if (
            plan.purchase_to_contract_days is not None
            and row.purchase is not None
            and (start - row.purchase).days > plan.purchase_to_contract_days
        ):
            # H5, E6: day 30 is still eligible, 31 is not.
            flags.append(ContractFlag(str(plan.purchase_rule), "late_purchase"))
        # Kept even when its own cells are wrong, so that E5 still checks the chain around it.
        row.contract = Contract(
            plan=plan_id, number=number, start=start, end=end, line=line
        ).flagged(*flags)

    def check_device(self, rows: list[_Row]) -> Asset | None:
        first = rows[0]
        for row in rows[1:]:
            for column in _DEVICE_FIELDS:
                mine, theirs = row.cells[column], first.cells[column]
                if column == "model":
                    mine, theirs = row.model, first.model
                if mine != theirs:
                    self.problem(
                        row.line,
                        column,
                        f"serial {row.serial}: {column} {row.cells[column]!r} disagrees with "
                        f"line {first.line} ({first.cells[column]!r})",
                    )
        bare = [r for r in rows if self.is_bare(r)]
        if bare and len(rows) > 1:
            for row in bare:
                self.problem(
                    row.line,
                    "plan",
                    f"serial {row.serial} is listed on lines "
                    f"{', '.join(str(r.line) for r in rows)}; a row without a contract must be "
                    "its only row",
                )
        contracts = sorted((r.contract for r in rows if r.contract), key=lambda c: c.start)
        for before, after in itertools.pairwise(contracts):
            expected = before.end + timedelta(days=1)
            if follows(before, after):
                continue
            if after.start < expected:
                self.problem(
                    after.line,
                    "contract_start",
                    f"overlaps the contract on line {before.line} (covered to {before.end}); "
                    f"a renewal starts on {expected}",
                    rule="E5",
                )
            elif after.start > expected:
                self.problem(
                    after.line,
                    "contract_start",
                    f"gap after the contract on line {before.line} (covered to {before.end}); "
                    f"a renewal starts on {expected}",
                    rule="E5",
                )
        contracts = self.flag_renewals(contracts)
        if first.purchase is None or not first.model:
            return None
        return Asset(
            serial=first.serial,
            model=first.model,
            purchase_date=first.purchase,
            site=first.cells["site"],
            room=first.cells["room"],
            host_serial=first.host_serial,
            contracts=tuple(contracts),
            lines=tuple(r.line for r in rows),
        )

    def flag_renewals(self, contracts: list[Contract]) -> list[Contract]:
        """Flag renewals of a plan not sold as renewals, and chains longer than the plan's
        maximum term (P5, E5): imported, and flagged like H1 and H5, never refused."""
        if self.plans is None:
            return contracts
        flagged: list[Contract] = []
        chain_start: date | None = None
        for index, contract in enumerate(contracts):
            plan = self.plans.plans.get(contract.plan)
            previous = flagged[index - 1] if index else None
            renews = (
                previous is not None
                and previous.plan == contract.plan
                and follows(previous, contract)
            )
            if not renews or chain_start is None:
                chain_start = contract.start
            if renews and plan is not None and plan.renewal_rule is not None:
                if not plan.renewable:
                    contract = contract.flagged(ContractFlag(plan.renewal_rule, "renewal"))
                elif longer_than(chain_start, contract.end, plan.max_term_years):
                    contract = contract.flagged(ContractFlag(plan.renewal_rule, "chain_length"))
            flagged.append(contract)
        return flagged

    def is_bare(self, row: _Row) -> bool:
        """True for a row with no contract (plain manufacturer warranty)."""
        if not row.cells["plan"]:
            return True
        plan = self.plans.plans.get(row.cells["plan"]) if self.plans else None
        return plan is not None and not plan.contract


def _delimiter(text: str, columns: tuple[str, ...]) -> str:
    """The separator whose split of the header line names the most known columns.

    Excel in a Polish locale (and most of Europe) writes ``;`` between cells.
    """
    header = text.split("\n", 1)[0]
    known = {
        delimiter: sum(
            name.strip().strip('"').lower() in columns for name in header.split(delimiter)
        )
        for delimiter in _DELIMITERS
    }
    best = max(_DELIMITERS, key=lambda delimiter: known[delimiter])
    return best if known[best] > known[","] else ","


def _read_csv(text: str, columns: tuple[str, ...], checker: _Checker) -> list[_Row]:
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text), delimiter=_delimiter(text, columns))
    try:
        header = next(reader)
    except StopIteration:
        checker.problem(1, "-", f"empty file: the first line names the columns {','.join(columns)}")
        return []
    except csv.Error as exc:
        checker.problem(1, "-", f"not CSV: {exc}")
        return []
    names = [name.strip().lower() for name in header]
    missing = [c for c in columns if c not in names]
    unknown = [n for n in names if n not in columns]
    for column in missing:
        checker.problem(1, column, "missing column")
    for name in unknown:
        checker.problem(1, name or "-", f"unknown column (expected {','.join(columns)})")
    if len(set(names)) != len(names):
        checker.problem(1, "-", "a column is named twice")
    if missing or unknown or len(set(names)) != len(names):
        return []
    rows: list[_Row] = []
    ended = reader.line_num
    try:
        for cells in reader:
            # A quoted cell may span lines: a row is named by the line it starts on.
            line, ended = ended + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(rows) >= MAX_ROWS:
                checker.problem(line, "-", f"more than {MAX_ROWS} rows: split the file")
                break
            if len(cells) != len(names):
                checker.problem(line, "-", f"{len(cells)} cells, the header has {len(names)}")
                continue
            values = {name: cell.strip() for name, cell in zip(names, cells, strict=True)}
            rows.append(_Row(line=line, cells=values))
    except csv.Error as exc:
        checker.problem(reader.line_num, "-", f"not CSV: {exc}")
    return rows


def parse_registry(text: str, plans: PlanCatalogue, *, today: date | None = None) -> list[Asset]:
    """Every device of a registry CSV, or RegistryImportError listing every bad cell.

    A well-formed contract that breaks an eligibility rule (H1, H5) is kept
    with the rule's id in ``ineligible_rules``. ``today`` refuses purchases in
    the future when given.
    """
    checker = _Checker(plans, today)
    rows = _read_csv(text, COLUMNS, checker)
    for row in rows:
        checker.check_row(row)
    by_serial: dict[str, list[_Row]] = {}
    for row in rows:
        if row.serial:
            by_serial.setdefault(row.serial, []).append(row)
    assets = [
        asset
        for serial_rows in by_serial.values()
        if (asset := checker.check_device(serial_rows)) is not None
    ]
    if checker.problems:
        raise RegistryImportError(checker.problems)
    return assets


@dataclass(frozen=True)
class InstalledFirmware:
    """A device's installed version: as it prints it, and parsed for comparison."""

    text: str
    version: FirmwareVersion


def parse_installed_firmware(text: str) -> dict[str, InstalledFirmware]:
    """serial -> installed version from a ``serial,version`` CSV, or RegistryImportError."""
    checker = _Checker(None, None)
    rows = _read_csv(text, FIRMWARE_COLUMNS, checker)
    installed: dict[str, InstalledFirmware] = {}
    seen: dict[str, int] = {}
    for row in rows:
        serial, version = row.cells["serial"], row.cells["version"]
        if not _SERIAL_RE.match(serial):
            checker.problem(row.line, "serial", "missing or not a serial (letters, digits, . _ -)")
            continue
        if serial in seen:
            checker.problem(row.line, "serial", f"{serial} is already on line {seen[serial]}")
            continue
        seen[serial] = row.line
        try:
            installed[serial] = InstalledFirmware(version, FirmwareVersion.parse(version))
        except VersionError as exc:
            checker.problem(row.line, "version", str(exc))
    if checker.problems:
        raise RegistryImportError(checker.problems)
    return installed


def render_registry(assets: Iterable[Asset]) -> str:
    """The registry as CSV with the import columns, one row per contract (or one bare row)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for asset in sorted(assets, key=lambda a: a.serial):
        device = {
            "serial": asset.serial,
            "model": asset.model,
            "purchase_date": asset.purchase_date.isoformat(),
            "site": asset.site,
            "room": asset.room,
            "host_serial": asset.host_serial or "",
        }
        contracts: list[Contract | None] = list(asset.contracts) or [None]
        for contract in contracts:
            cells = dict(device, plan="", contract_number="", contract_start="", contract_end="")
            if contract is not None:
                cells.update(
                    plan=contract.plan,
                    contract_number=contract.number,
                    contract_start=contract.start.isoformat(),
                    contract_end=contract.end.isoformat(),
                )
            writer.writerow([cells[c] for c in COLUMNS])
    return out.getvalue()
