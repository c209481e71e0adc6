"""Device drivers behind one contract (``base.py``), picked from a plain registry."""

from __future__ import annotations

from polyfleet.agent.config import AgentConfig, DeviceConfig
from polyfleet.agent.drivers.base import DeviceDriver
from polyfleet.agent.drivers.videoos import VideoOSDriver
from polyfleet.shared.errors import ConfigError

#: Driver name (``[[devices]] driver = ...``) -> class; explicit, no import magic.
DRIVERS: dict[str, type[DeviceDriver]] = {
    VideoOSDriver.platform: VideoOSDriver,
}


def driver_class(device: DeviceConfig) -> type[DeviceDriver]:
    """The driver class ``device`` names; ConfigError naming the file and key when unknown.

    The config module reads names only (it imports no driver), so the names are
    checked here, against the registry, with the place the config gave them.
    """
    try:
        return DRIVERS[device.driver]
    except KeyError:
        where = f"{device.origin}.driver" if device.origin else f"device {device.key}"
        raise ConfigError(
            f"{where}: unknown driver {device.driver!r} (known: {', '.join(sorted(DRIVERS))})"
        ) from None


def check_drivers(config: AgentConfig) -> None:
    """Raise ConfigError for the first configured device whose driver is not in the registry."""
    for device in config.devices:
        driver_class(device)
