"""Device drivers behind one contract (``base.py``), picked from a plain registry."""

from __future__ import annotations

from polyfleet.agent.drivers.base import DeviceDriver
from polyfleet.agent.drivers.videoos import VideoOSDriver

#: Driver name (``[[devices]] driver = ...``) -> class; explicit, no import magic.
DRIVERS: dict[str, type[DeviceDriver]] = {
    VideoOSDriver.platform: VideoOSDriver,
}
