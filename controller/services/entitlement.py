"""Entitlement with side effects: catalogue files, atomic release adds, the stored registry.

Only ``Registry`` reads the ``assets`` collection; devices come from ``Inventory``'s queries.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

from polyfleet.controller.domain.assets import Asset, ImportPlan, InstalledFirmware, plan_import
from polyfleet.controller.domain.calendar import warsaw_date
from polyfleet.controller.domain.entitlement import EntitlementVerdict, judge, unknown_asset_verdict
from polyfleet.controller.domain.forecast import Forecast, forecast
from polyfleet.controller.domain.plans import CatalogueError, PlanCatalogue, parse_plans
from polyfleet.controller.domain.releases import (
    Release,
    ReleaseCatalogue,
    make_release,
    parse_releases,
    render_releases,
)
from polyfleet.controller.errors import NotFound, Unavailable
from polyfleet.controller.services.audit import listed
from polyfleet.controller.services.inventory import Inventory
from polyfleet.controller.store.base import Doc, Store
from polyfleet.shared.durable import write_atomically
from polyfleet.shared.version import FirmwareVersion, VersionError

log = logging.getLogger(__name__)

#: Catalogue files are data an admin reads and edits: not secret.
CATALOGUE_MODE = 0o644

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_PLANS_PATH = DATA_DIR / "plans.toml"
DEFAULT_RELEASES_PATH = DATA_DIR / "releases.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    # The callers put the path in front of these messages.
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise CatalogueError("no such file") from None
    except IsADirectoryError:
        raise CatalogueError("is a directory, not a file") from None
    except OSError as exc:
        raise CatalogueError(f"cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CatalogueError(f"not valid TOML: {exc}") from None


def load_plans(path: Path | None = None) -> PlanCatalogue:
    """The plan catalogue from ``path`` (default: the shipped plans.toml)."""
    source = path or DEFAULT_PLANS_PATH
    try:
        return parse_plans(_read_toml(source))
    except CatalogueError as exc:
        raise CatalogueError(f"{source}: {exc}") from None


def load_releases(path: Path | None = None) -> ReleaseCatalogue:
    """The release catalogue from ``path`` (default: the shipped releases.toml)."""
    source = path or DEFAULT_RELEASES_PATH
    try:
        return parse_releases(_read_toml(source))
    except CatalogueError as exc:
        raise CatalogueError(f"{source}: {exc}") from None


def catalogue_paths(section: Mapping[str, Any]) -> tuple[Path | None, Path | None]:
    """(plans, releases) paths from a config's ``[entitlement]`` table; None = shipped file."""
    paths: list[Path | None] = []
    for key in ("plans", "releases"):
        value = section.get(key)
        if value is not None and not isinstance(value, str):
            raise CatalogueError(f"[entitlement].{key}: a file path expected")
        paths.append(Path(value) if value else None)
    return paths[0], paths[1]


def add_release(
    version: str, released: date, needs: str | None = None, *, path: Path | None = None
) -> Release:
    """Validate one release and add it to the catalogue file; CatalogueError leaves it unchanged."""
    target = path or DEFAULT_RELEASES_PATH
    release = make_release(version, released, needs)
    lock_path = target.with_name(f".{target.name}.lock")
    # Two admins adding at once must not lose one of the additions.
    with lock_path.open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        catalogue = load_releases(target).add(release)
        text = render_releases(catalogue)
        parse_releases(tomllib.loads(text))  # what we write must read back the same way
        write_atomically(target, text, mode=CATALOGUE_MODE)
    return release


# -- the registry in the controller's store ---------------------------------------------------

#: Store collection of registered assets, keyed by serial; read only by ``Registry`` here.
ASSETS = "assets"


class RegistryUnavailable(Unavailable):
    """The registry cannot be read or written right now; the message says what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="registry_unavailable")


class CatalogueUnavailable(Unavailable):
    """A request needs a catalogue the controller cannot read now (a broken or missing file)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="catalogue")


class UnknownAsset(NotFound, KeyError):
    """A serial neither the registry nor any report knows."""

    def __init__(self, serial: str) -> None:
        super().__init__(f"no device {serial!r} in the registry or in reports")
        self.serial = serial


def registry(store: Store) -> dict[str, Asset]:
    """Every registered asset by serial, read from ``store`` (a tool working on a store)."""
    return {serial: Asset.from_doc(doc) for serial, doc in list(store.scan(ASSETS).items())}


class Registry:
    """The asset registry: owns the ``assets`` collection, kept in memory by serial and site.

    ``generation`` counts the imports that changed it, so what is derived from the whole
    registry (the forecast) is kept until the next one.
    """

    def __init__(self, store: Store, inventory: Inventory) -> None:
        self._store = store
        self._inventory = inventory
        self._docs: dict[str, Doc] = {}
        self._assets: dict[str, Asset] = {}
        self._by_site: dict[str, set[str]] = {}
        self._loaded = False
        self.generation = 0

    def load(self) -> None:
        """Read the registry from the open store (once it is open, and on becoming active)."""
        self._docs, self._assets, self._by_site = {}, {}, {}
        self._take(dict(self._store.scan(ASSETS)))
        self._loaded = True
        self.generation += 1

    def _take(self, docs: Mapping[str, Doc]) -> None:
        for serial, doc in docs.items():
            old = self._docs.get(serial)
            if old is not None:
                self._by_site.get(str(old["site"]), set()).discard(serial)
            self._docs[serial] = doc
            self._assets.pop(serial, None)
            self._by_site.setdefault(str(doc["site"]), set()).add(serial)

    def _check(self) -> None:
        if not self._loaded:
            raise RegistryUnavailable(
                "the asset registry is not read yet (the controller is starting): try again"
            )

    def doc(self, serial: str) -> Doc | None:
        """A serial's stored document (replaced, never changed in place), or None."""
        self._check()
        return self._docs.get(serial)

    def asset(self, serial: str) -> Asset | None:
        self._check()
        found = self._assets.get(serial)
        if found is None:
            doc = self._docs.get(serial)
            if doc is None:
                return None
            found = self._assets[serial] = Asset.from_doc(doc)
        return found

    def serials(self, site: str | None = None) -> set[str]:
        """Registered serials (of ``site``)."""
        self._check()
        if site is not None:
            return set(self._by_site.get(site, ()))
        return set(self._docs)

    def assets(self, site: str | None = None) -> list[Asset]:
        """Registered assets (of ``site``), by serial."""
        found = (self.asset(serial) for serial in sorted(self.serials(site)))
        return [asset for asset in found if asset is not None]

    def by_serial(self) -> dict[str, Asset]:
        """Every registered asset by serial."""
        return {asset.serial: asset for asset in self.assets()}

    def site_of(self, serial: str) -> str | None:
        """The site the registry puts a serial at, or None when it is not registered."""
        doc = self.doc(serial)
        return None if doc is None else str(doc["site"])

    async def import_assets(self, assets: Sequence[Asset], *, dry_run: bool) -> ImportPlan:
        """Replace the history of every serial in ``assets``; durable when this returns.

        The file was checked whole before this is called, so either every device is
        written in one change, together with the rooms it gives devices that have none yet
        (``Inventory.place``), or (dry run) none is.
        """
        plan = plan_import(self.by_serial(), assets)
        changed = set(plan.added) | set(plan.updated)
        puts = {asset.serial: asset.to_doc() for asset in assets if asset.serial in changed}
        if puts and not dry_run:
            # Agents cannot see which room a unit stands in; the registry says.
            rooms = {asset.serial: asset.room for asset in assets if asset.room}
            seq, _ = self._inventory.place(rooms, together={ASSETS: puts})
            # The store's own copies: the registry holds no second one.
            self._take(
                {serial: self._store.get(ASSETS, serial) or doc for serial, doc in puts.items()}
            )
            self.generation += 1
            await self._store.wait_durable(seq)
        return plan

    async def place_new_device(self, serial: str) -> None:
        """Give a device seen for the first time the room its registry entry names."""
        asset = self.asset(serial)
        if asset is None or not asset.room:
            return
        seq, _ = self._inventory.place({serial: asset.room})
        await self._store.wait_durable(seq)


def import_details(plan: ImportPlan, text: str) -> dict[str, Any]:
    """What the audit log keeps of an import: the file's digest, counts and first serials."""
    return {
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "added": listed(plan.added),
        "updated": listed(plan.updated),
        "unchanged": len(plan.unchanged),
        "ineligible": listed(plan.ineligible),
    }


def installed_of(device: Mapping[str, Any] | None) -> InstalledFirmware | None:
    """The installed version an agent last reported for a device, when it parses."""
    firmware = (device or {}).get("firmware") or {}
    version, build = str(firmware.get("version") or ""), str(firmware.get("build") or "")
    if not version:
        return None
    try:
        parsed = FirmwareVersion.parse(version, build=build or None)
    except VersionError:
        return None
    # Shown as the device's tools print it (4.1.0_00.180034), leading zeros of the build kept.
    build_in_text = FirmwareVersion.parse(version).build != 0
    text = f"{version}.{build}" if build and not build_in_text else version
    return InstalledFirmware(text, parsed)


def live_verdict(
    asset: Asset | None,
    device: Doc | None,
    serial: str,
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    at: datetime,
) -> EntitlementVerdict | None:
    """The verdict of a registered (``asset``) or reported (``device``) serial; None when
    neither knows it."""
    installed = installed_of(device)
    if asset is not None:
        verdict = judge(asset, plans, releases, at, installed=installed)
        return verdict if device is not None else verdict.with_flags("not_reported")
    if device is not None:
        model = device.get("model")
        return unknown_asset_verdict(
            serial, releases, at, installed=installed, model=str(model) if model else None
        )
    return None


class ForecastCache:
    """The expiry forecast kept until the registry (its ``generation``), the plans or the
    Warsaw day change."""

    def __init__(self) -> None:
        self._generation: int | None = None
        self._kept: dict[tuple[date, int, str | None, int], Forecast] = {}

    def forecast(
        self,
        registry: Registry,
        plans: PlanCatalogue,
        at: datetime,
        days: int,
        *,
        site: str | None = None,
    ) -> Forecast:
        """``forecast`` of the registry (of ``site``), judged again only when it changed."""
        if registry.generation != self._generation:
            self._generation, self._kept = registry.generation, {}
        key = (warsaw_date(at), days, site, id(plans))
        found = self._kept.get(key)
        if found is not None:
            # Counted from the Warsaw day, not the moment (E1): the same answer, stamped now.
            return replace(found, at=at)
        result = forecast(registry.assets(site), plans, at, days)
        self._kept[key] = result
        return result


class VerdictCache:
    """Verdicts kept until what they are judged from changes, so pages that show every
    device's verdict (the overview, the device table) stay fast at ten thousand devices.

    A verdict depends on the device's registry entry, its reported firmware, the catalogues
    and the Warsaw day of the moment judged (E1: every rule reads that day only). Stored
    documents are replaced, never changed in place, so holding the documents a verdict came
    from and finding the same objects again (``Registry.doc``, ``Inventory.find_device``)
    means nothing it reads changed.
    """

    def __init__(self) -> None:
        self._kept: dict[
            str, tuple[Doc | None, Doc | None, date, PlanCatalogue, ReleaseCatalogue, Any]
        ] = {}

    def verdict(
        self,
        registry: Registry,
        inventory: Inventory,
        plans: PlanCatalogue,
        releases: ReleaseCatalogue,
        serial: str,
        at: datetime,
        *,
        day: date | None = None,
    ) -> EntitlementVerdict | None:
        """``live_verdict``, judged again only when one of its inputs changed (``day``: the
        Warsaw date of ``at``, when the caller already has it)."""
        asset, device = registry.doc(serial), inventory.find_device(serial)
        day = day or warsaw_date(at)
        kept = self._kept.get(serial)
        if (
            kept is not None
            and kept[0] is asset
            and kept[1] is device
            and kept[2] == day
            and kept[3] is plans
            and kept[4] is releases
        ):
            found: EntitlementVerdict | None = kept[5]
            return found
        verdict = live_verdict(registry.asset(serial), device, serial, plans, releases, at)
        self._kept[serial] = (asset, device, day, plans, releases, verdict)
        return verdict

    def forget_missing(self, known: Iterable[str] | None = None) -> None:
        """Drop verdicts of serials that are neither registered nor reported any more
        (``known``: every serial that is)."""
        keep = set(known or ())
        for serial in [s for s in self._kept if s not in keep]:
            del self._kept[serial]


def live_verdicts(
    registry: Registry,
    inventory: Inventory,
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    at: datetime,
    *,
    site: str | None = None,
    cache: VerdictCache | None = None,
) -> list[EntitlementVerdict]:
    """Verdicts of every registered or reported device (of ``site``: registered or reported
    there), by serial."""
    serials = registry.serials(site) | inventory.serials(site)
    if cache is not None:
        if site is None:
            cache.forget_missing(serials)
        day = warsaw_date(at)
        found = (
            cache.verdict(registry, inventory, plans, releases, serial, at, day=day)
            for serial in sorted(serials)
        )
    else:
        found = (
            live_verdict(
                registry.asset(serial), inventory.find_device(serial), serial, plans, releases, at
            )
            for serial in sorted(serials)
        )
    return [verdict for verdict in found if verdict is not None]


class Catalogues:
    """The plan and release catalogues a running controller uses; releases reload when changed."""

    def __init__(self, plans_path: Path | None = None, releases_path: Path | None = None) -> None:
        self.plans_path = plans_path or DEFAULT_PLANS_PATH
        self.releases_path = releases_path or DEFAULT_RELEASES_PATH
        self._plans: PlanCatalogue | None = None
        self._releases: ReleaseCatalogue | None = None
        self._releases_stamp: tuple[int, int] | None = None
        #: What keeps the release file from being read now (logged once), if anything.
        self._problem: str | None = None

    async def load(self) -> None:
        """Read both files (off the event loop); CatalogueError names a bad file and key."""
        self._plans = await asyncio.to_thread(load_plans, self.plans_path)
        stat = await asyncio.to_thread(self.releases_path.stat)
        self._releases = await asyncio.to_thread(load_releases, self.releases_path)
        self._releases_stamp = (stat.st_ino, stat.st_mtime_ns)

    @property
    def plans(self) -> PlanCatalogue:
        if self._plans is None:
            raise CatalogueUnavailable(
                "the plan catalogue is not read yet (the controller is starting): try again"
            )
        return self._plans

    async def releases(self) -> ReleaseCatalogue:
        """The release catalogue, re-read when `releases add` changed the file.

        A file that cannot be read now (half-edited by hand, moved away) leaves the last good
        catalogue in use; CatalogueUnavailable when there is none.
        """
        try:
            stat = await asyncio.to_thread(self.releases_path.stat)
        except OSError as exc:
            return self._last_good(CatalogueError(f"{self.releases_path}: {exc.strerror or exc}"))
        # An atomic rewrite gives a new inode, so this notices even a change within one mtime tick.
        stamp = (stat.st_ino, stat.st_mtime_ns)
        if self._releases is None or stamp != self._releases_stamp:
            self._releases_stamp = stamp
            try:
                self._releases = await asyncio.to_thread(load_releases, self.releases_path)
            except CatalogueError as exc:
                return self._last_good(exc)
        self._problem = None
        return self._releases

    def _last_good(self, problem: CatalogueError) -> ReleaseCatalogue:
        if self._releases is None:
            raise CatalogueUnavailable(
                f"the release catalogue cannot be read: {problem}; fix the file and try again"
            )
        if str(problem) != self._problem:
            # Once per problem, not per request.
            log.error("keeping the previous release catalogue: %s", problem)
            self._problem = str(problem)
        return self._releases
