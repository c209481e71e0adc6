"""Entitlement with side effects: catalogue files, atomic release adds, the stored registry."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import tomllib
from collections.abc import Mapping, Sequence
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
from polyfleet.controller.services.audit import listed
from polyfleet.controller.store.base import DEVICES, Doc, Store
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

#: Store collection of registered assets, keyed by serial.
ASSETS = "assets"


class RegistryUnavailable(RuntimeError):
    """The registry cannot be read or written right now; the message says what to do."""


def registry(store: Store) -> dict[str, Asset]:
    """Every registered asset by serial."""
    return {serial: Asset.from_doc(doc) for serial, doc in list(store.scan(ASSETS).items())}


async def import_assets(store: Store, assets: Sequence[Asset], *, dry_run: bool) -> ImportPlan:
    """Replace the history of every serial in ``assets``; durable when this returns.

    The file was checked whole before this is called, so either every device is
    written in one change or (dry run) none is.
    """
    plan = plan_import(registry(store), assets)
    changed = set(plan.added) | set(plan.updated)
    puts = {asset.serial: asset.to_doc() for asset in assets if asset.serial in changed}
    if puts and not dry_run:
        rooms = rooms_from_registry(store, assets)
        # One apply: every device of the file becomes durable together or not at all.
        await store.wait_durable(store.apply({ASSETS: puts, DEVICES: rooms}))
    return plan


def import_details(plan: ImportPlan, text: str) -> dict[str, Any]:
    """What the audit log keeps of an import: the file's digest, counts and first serials."""
    return {
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "added": listed(plan.added),
        "updated": listed(plan.updated),
        "unchanged": len(plan.unchanged),
        "ineligible": listed(plan.ineligible),
    }


def rooms_from_registry(store: Store, assets: Sequence[Asset]) -> dict[str, dict[str, Any]]:
    """Device documents given the registry's room where the inventory has none yet.

    Agents cannot see which room a unit stands in; the registry says. A room an
    admin set on the device itself is never overwritten. Read and written with
    no await in between, so no report can slip in and be lost.
    """
    updated: dict[str, dict[str, Any]] = {}
    for asset in assets:
        device = store.get(DEVICES, asset.serial)
        if asset.room and device is not None and not device.get("room"):
            updated[asset.serial] = {**device, "room": asset.room}
    return updated


async def place_new_device(store: Store, serial: str) -> None:
    """Give a device seen for the first time the room its registry entry names."""
    doc = store.get(ASSETS, serial)
    if doc is None:
        return
    rooms = rooms_from_registry(store, [Asset.from_doc(doc)])
    if rooms:
        await store.wait_durable(store.apply({DEVICES: rooms}))


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
    store: Store,
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    serial: str,
    at: datetime,
) -> EntitlementVerdict | None:
    """The verdict of a registered or reported device (None when neither knows it)."""
    doc = store.get(ASSETS, serial)
    device = store.get(DEVICES, serial)
    installed = installed_of(device)
    if doc is not None:
        verdict = judge(Asset.from_doc(doc), plans, releases, at, installed=installed)
        return verdict if device is not None else verdict.with_flags("not_reported")
    if device is not None:
        model = device.get("model")
        return unknown_asset_verdict(
            serial, releases, at, installed=installed, model=str(model) if model else None
        )
    return None


class ForecastCache:
    """The expiry forecast kept until the registry, the plans or the Warsaw day change.

    Like ``VerdictCache``: registry documents are replaced, never changed in place, so the
    same document objects in the store mean the same registry.
    """

    def __init__(self) -> None:
        self._docs: dict[str, Doc] = {}
        self._assets: dict[str, Asset] = {}
        self._kept: dict[tuple[date, int, str | None, int], Forecast] = {}

    def _registry(self, store: Store) -> dict[str, Asset]:
        """The registry, parsing only documents that are new since the last call."""
        docs = store.scan(ASSETS)
        if len(docs) == len(self._docs) and all(
            self._docs.get(serial) is doc for serial, doc in docs.items()
        ):
            return self._assets
        assets = {
            serial: (self._assets[serial] if self._docs.get(serial) is doc else Asset.from_doc(doc))
            for serial, doc in list(docs.items())
        }
        self._docs, self._assets, self._kept = dict(docs), assets, {}
        return assets

    def forecast(
        self,
        store: Store,
        plans: PlanCatalogue,
        at: datetime,
        days: int,
        *,
        site: str | None = None,
    ) -> Forecast:
        """``forecast`` of the registry (of ``site``), judged again only when it changed."""
        assets = self._registry(store)
        key = (warsaw_date(at), days, site, id(plans))
        found = self._kept.get(key)
        if found is not None:
            # Counted from the Warsaw day, not the moment (E1): the same answer, stamped now.
            return replace(found, at=at)
        chosen = [a for a in assets.values() if site is None or a.site == site]
        result = forecast(chosen, plans, at, days)
        self._kept[key] = result
        return result


class VerdictCache:
    """Verdicts kept until what they are judged from changes, so pages that show every
    device's verdict (the overview, the device table) stay fast at ten thousand devices.

    A verdict depends on the device's registry entry, its reported firmware, the catalogues
    and the Warsaw day of the moment judged (E1: every rule reads that day only). Stored
    documents are replaced, never changed in place, so holding the documents a verdict came
    from and finding the same objects in the store again means nothing it reads changed.
    """

    def __init__(self) -> None:
        self._kept: dict[
            str, tuple[Doc | None, Doc | None, date, PlanCatalogue, ReleaseCatalogue, Any]
        ] = {}

    def verdict(
        self,
        store: Store,
        plans: PlanCatalogue,
        releases: ReleaseCatalogue,
        serial: str,
        at: datetime,
        *,
        day: date | None = None,
    ) -> EntitlementVerdict | None:
        """``live_verdict``, judged again only when one of its inputs changed (``day``: the
        Warsaw date of ``at``, when the caller already has it)."""
        asset, device = store.get(ASSETS, serial), store.get(DEVICES, serial)
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
        verdict = live_verdict(store, plans, releases, serial, at)
        self._kept[serial] = (asset, device, day, plans, releases, verdict)
        return verdict

    def forget_missing(self, store: Store) -> None:
        """Drop verdicts of devices that are neither registered nor reported any more."""
        assets, devices = store.scan(ASSETS), store.scan(DEVICES)
        for serial in [s for s in self._kept if s not in assets and s not in devices]:
            del self._kept[serial]


def live_verdicts(
    store: Store,
    plans: PlanCatalogue,
    releases: ReleaseCatalogue,
    at: datetime,
    *,
    site: str | None = None,
    cache: VerdictCache | None = None,
) -> list[EntitlementVerdict]:
    """Verdicts of every registered or reported device (of ``site`` when given), by serial."""
    assets = dict(store.scan(ASSETS))
    devices = dict(store.scan(DEVICES))
    serials = set(assets) | set(devices)
    if site is not None:
        serials = {
            serial
            for serial in serials
            if (assets.get(serial) or {}).get("site") == site
            or (devices.get(serial) or {}).get("site_id") == site
        }
    if cache is not None:
        cache.forget_missing(store)
        day = warsaw_date(at)
        found = (
            cache.verdict(store, plans, releases, serial, at, day=day) for serial in sorted(serials)
        )
    else:
        found = (live_verdict(store, plans, releases, serial, at) for serial in sorted(serials))
    return [verdict for verdict in found if verdict is not None]


class Catalogues:
    """The plan and release catalogues a running controller uses; releases reload when changed."""

    def __init__(self, plans_path: Path | None = None, releases_path: Path | None = None) -> None:
        self.plans_path = plans_path or DEFAULT_PLANS_PATH
        self.releases_path = releases_path or DEFAULT_RELEASES_PATH
        self._plans: PlanCatalogue | None = None
        self._releases: ReleaseCatalogue | None = None
        self._releases_stamp: tuple[int, int] | None = None

    async def load(self) -> None:
        """Read both files (off the event loop); CatalogueError names a bad file and key."""
        self._plans = await asyncio.to_thread(load_plans, self.plans_path)
        await self.releases()

    @property
    def plans(self) -> PlanCatalogue:
        if self._plans is None:
            raise RuntimeError("catalogues not loaded: await Catalogues.load() at startup")
        return self._plans

    async def releases(self) -> ReleaseCatalogue:
        """The release catalogue, re-read when `releases add` changed the file."""
        stat = await asyncio.to_thread(self.releases_path.stat)
        # An atomic rewrite gives a new inode, so this notices even a change within one mtime tick.
        stamp = (stat.st_ino, stat.st_mtime_ns)
        if self._releases is None or stamp != self._releases_stamp:
            try:
                self._releases = await asyncio.to_thread(load_releases, self.releases_path)
            except CatalogueError:
                if self._releases is None:
                    raise
                # A half-edited file by hand: keep serving the last good catalogue.
                log.exception("keeping the previous release catalogue")
            self._releases_stamp = stamp
        return self._releases
