"""The device list as a table: filters, search, entitlement flag, sort and pages, in one place.

``GET /api/v1/devices``, its CSV export on the dashboard and the dashboard's device table
all read devices through ``query_devices``, so a view in the browser, the file it exports
and the API answer for the same address hold the same devices in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from polyfleet.controller.domain.assets import Asset
from polyfleet.controller.domain.entitlement import FLAGS, EntitlementVerdict
from polyfleet.controller.errors import InvalidInput
from polyfleet.controller.services.inventory import DeviceFilter, Inventory
from polyfleet.controller.store.base import Doc
from polyfleet.shared.schema import SEVERITY_ORDER, HealthState
from polyfleet.shared.version import FirmwareVersion, VersionError

#: Columns a table may be sorted by; ``-name`` sorts descending.
SORT_KEYS = (
    "serial",
    "name",
    "model",
    "provider",
    "firmware",
    "health",
    "site",
    "room",
    "last_seen",
)
DEFAULT_SORT = "serial"
#: The inventory's own filters (``DeviceFilter``), by query parameter name.
FILTERS = ("site", "room", "model", "provider", "health", "firmware")
MAX_LIMIT = 10_000
#: What ``monitoring`` may select: units an agent reports, or registered Poly products the
#: agents do not poll (listed from the asset registry, health state ``not_monitored``).
MONITORING = ("polled", "not_monitored")
#: What ``no_room`` may be (links and scripts have sent each), and what it means.
NO_ROOM_VALUES = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}

#: Columns of a device list as CSV (``polyfleet controller devices export --csv``).
CSV_COLUMNS = (
    "serial",
    "model",
    "provider",
    "firmware_version",
    "firmware_build",
    "health",
    "problems",
    "site",
    "room",
    "system_name",
    "host_serial",
    "last_seen",
)

#: A verdict lookup by serial (None when the device is in neither registry nor reports).
VerdictOf = Callable[[str], EntitlementVerdict | None]


def _firmware_key(device: Doc) -> tuple[int, Any]:
    firmware = device.get("firmware") or {}
    version, build = str(firmware.get("version") or ""), str(firmware.get("build") or "")
    try:
        return (1, FirmwareVersion.parse(version, build=build or None))
    except VersionError:
        return (0, version)


def _health_key(device: Doc) -> int:
    try:
        return SEVERITY_ORDER.index(HealthState(device["health"]["state"]))
    except ValueError:
        return len(SEVERITY_ORDER)


_SORTERS: dict[str, Callable[[Doc], Any]] = {
    "serial": lambda d: d["serial"],
    "name": lambda d: (d.get("system_name") or "").casefold(),
    "model": lambda d: d.get("model") or "",
    "provider": lambda d: d.get("provider") or "",
    "firmware": _firmware_key,
    "health": _health_key,
    "site": lambda d: d.get("site") or "",
    "room": lambda d: (d.get("room") is None, (d.get("room") or "").casefold()),
    "last_seen": lambda d: (d.get("last_seen") is not None, d.get("last_seen") or ""),
}


@dataclass(frozen=True, kw_only=True)
class DeviceQuery:
    """What a device list asks for; every field has a query parameter of the same name."""

    where: DeviceFilter = field(default_factory=DeviceFilter)
    #: Words that must all appear in the serial, name, room, site, model or firmware.
    q: str | None = None
    #: Only devices whose entitlement verdict carries this flag.
    flag: str | None = None
    #: Only devices without a room.
    no_room: bool = False
    #: Only ``polled`` units or only ``not_monitored`` registered products (None: both).
    monitoring: str | None = None
    sort: str = DEFAULT_SORT
    descending: bool = False
    offset: int = 0
    limit: int | None = None

    @property
    def sort_param(self) -> str:
        return ("-" if self.descending else "") + self.sort

    @classmethod
    def parse(cls, values: Mapping[str, str]) -> DeviceQuery:
        """From query strings; InvalidInput names the bad parameter and what it accepts."""
        where = DeviceFilter.parse({name: values.get(name) for name in FILTERS})
        flag = values.get("flag") or None
        if flag is not None and flag not in FLAGS:
            raise InvalidInput("flag", f"flag must be one of {', '.join(FLAGS)}; got {flag!r}")
        sort_text = values.get("sort") or DEFAULT_SORT
        descending = sort_text.startswith("-")
        sort = sort_text.lstrip("-")
        if sort not in SORT_KEYS:
            allowed = ", ".join(SORT_KEYS)
            raise InvalidInput("sort", f"sort must be one of {allowed} (- first: descending)")
        no_room_text = values.get("no_room") or "0"
        if no_room_text not in NO_ROOM_VALUES:
            raise InvalidInput(
                "no_room",
                f"no_room must be 1 (only devices without a room) or 0; got {no_room_text!r}",
            )
        no_room = NO_ROOM_VALUES[no_room_text]
        monitoring = values.get("monitoring") or None
        if monitoring is not None and monitoring not in MONITORING:
            raise InvalidInput(
                "monitoring",
                f"monitoring must be one of {', '.join(MONITORING)}; got {monitoring!r}",
            )
        q = (values.get("q") or "").strip() or None
        return cls(
            where=where,
            q=q,
            flag=flag,
            no_room=no_room,
            monitoring=monitoring,
            sort=sort,
            descending=descending,
            offset=_whole(values, "offset", 0, 0, None),
            limit=_whole(values, "limit", None, 1, MAX_LIMIT),
        )


def _whole(
    values: Mapping[str, str], name: str, default: int | None, least: int, most: int | None
) -> Any:
    text = values.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or int(text) < least or (most is not None and int(text) > most):
        upper = f"..{most}" if most is not None else " or more"
        raise InvalidInput(name, f"{name} must be a whole number {least}{upper}; got {text!r}")
    return int(text)


@dataclass(frozen=True)
class DeviceRows:
    """The devices matching a query (``total`` before offset and limit), in its order."""

    rows: list[Doc]
    total: int


def _matches_words(device: Doc, words: list[str]) -> bool:
    firmware = device.get("firmware") or {}
    text = " ".join(
        str(part)
        for part in (
            device["serial"],
            device.get("system_name") or "",
            device.get("room") or "",
            device.get("site") or "",
            device.get("model") or "",
            firmware.get("version") or "",
            device.get("host_serial") or "",
        )
    ).casefold()
    return all(word in text for word in words)


def unpolled_row(asset: Asset) -> Doc:
    """A registered Poly product the agents do not poll, as the device list shows it: the
    registry's model as printed, site and room; no mode, firmware or report."""
    return {
        "serial": asset.serial,
        "model": asset.model,
        "provider": "",
        "firmware": {"version": "", "build": ""},
        "health": {"state": "not_monitored", "problems": []},
        "site": asset.site,
        "room": asset.room or None,
        "system_name": "",
        "host_serial": asset.host_serial,
        "last_seen": None,
        "monitoring": "not_monitored",
    }


def _unpolled_matches(where: DeviceFilter, row: Doc) -> bool:
    """The inventory's filters on a registered product: site and room can match; a model,
    mode, health or firmware filter names what only polled units have."""
    if where.model is not None or where.provider is not None:
        return False
    if where.health is not None or where.firmware is not None:
        return False
    if where.site is not None and row["site"] != where.site:
        return False
    return where.room is None or row["room"] == where.room


def query_devices(
    inventory: Inventory,
    query: DeviceQuery,
    verdict_of: VerdictOf | None = None,
    unpolled: Sequence[Doc] = (),
) -> DeviceRows:
    """Devices (as ``GET /api/v1/devices`` lists them) matching ``query``, sorted, one slice:
    the units agents report (``monitoring`` polled) and ``unpolled`` rows (``unpolled_row``).

    ``verdict_of`` is needed only for a ``flag`` filter.
    """
    rows: list[Doc] = []
    if query.monitoring in (None, "polled"):
        # Each summary is a fresh document: marking it changes nothing stored.
        rows = inventory.devices(query.where)
        for device in rows:
            device["monitoring"] = "polled"
    if query.monitoring in (None, "not_monitored"):
        rows += [row for row in unpolled if _unpolled_matches(query.where, row)]
    if query.no_room:
        rows = [device for device in rows if not device.get("room")]
    if query.q:
        words = query.q.casefold().split()
        rows = [device for device in rows if _matches_words(device, words)]
    if query.flag is not None:
        if verdict_of is None:
            raise InvalidInput("flag", "the entitlement flag filter is not available here")
        flag = query.flag
        rows = [
            device
            for device in rows
            if (verdict := verdict_of(device["serial"])) is not None and flag in verdict.flags
        ]
    key = _SORTERS[query.sort]
    # Serial order first, so equal keys keep a stable, predictable order.
    rows.sort(key=lambda device: device["serial"])
    rows.sort(key=key, reverse=query.descending)
    total = len(rows)
    end = None if query.limit is None else query.offset + query.limit
    return DeviceRows(rows=rows[query.offset : end], total=total)


def csv_row(device: Doc) -> list[str]:
    """One device (as the API lists it) as a row of ``CSV_COLUMNS``."""
    return [
        device["serial"],
        device["model"],
        device["provider"],
        device["firmware"]["version"],
        device["firmware"]["build"],
        device["health"]["state"],
        " ".join(problem["code"] for problem in device["health"]["problems"]),
        device["site"],
        device.get("room") or "",
        device.get("system_name", ""),
        device.get("host_serial") or "",
        device.get("last_seen") or "",
    ]
