"""Settings of the dashboard: the ``[web]`` table of ``controller.toml``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from polyfleet.controller.config import ConfigError
from polyfleet.controller.services.web_sessions import (
    DEFAULT_KIOSK_SESSION_TTL_S,
    DEFAULT_LINK_TTL_S,
    DEFAULT_SESSION_TTL_S,
)

DEFAULT_REFRESH_S = 15
DEFAULT_KIOSK_REFRESH_S = 30
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: Times without a site of their own (the controller's, the SLA's) are shown in this zone.
DEFAULT_TIMEZONE = "Europe/Warsaw"


@dataclass(frozen=True, kw_only=True)
class WebSettings:
    session_ttl_s: int = DEFAULT_SESSION_TTL_S
    kiosk_session_ttl_s: int = DEFAULT_KIOSK_SESSION_TTL_S
    signin_link_ttl_s: int = DEFAULT_LINK_TTL_S
    refresh_s: int = DEFAULT_REFRESH_S
    kiosk_refresh_s: int = DEFAULT_KIOSK_REFRESH_S
    page_size: int = DEFAULT_PAGE_SIZE
    timezone: str = DEFAULT_TIMEZONE


_INTEGERS = (
    "session_ttl_s",
    "kiosk_session_ttl_s",
    "signin_link_ttl_s",
    "refresh_s",
    "kiosk_refresh_s",
    "page_size",
)


def web_settings(section: Mapping[str, Any]) -> WebSettings:
    """The ``[web]`` table checked; an error names ``web.KEY`` and what is expected."""
    values: dict[str, Any] = {}
    for key, value in section.items():
        if key in _INTEGERS:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"web.{key} must be a positive whole number, got {value!r}")
            values[key] = value
        elif key == "timezone":
            try:
                ZoneInfo(str(value))
            except (ZoneInfoNotFoundError, ValueError):
                raise ConfigError(
                    f"web.timezone: unknown time zone {value!r} (an IANA name like Europe/Warsaw)"
                ) from None
            values[key] = str(value)
        else:
            known = ", ".join([*_INTEGERS, "timezone"])
            raise ConfigError(f"unknown key web.{key}; known keys: {known}")
    if values.get("page_size", DEFAULT_PAGE_SIZE) > MAX_PAGE_SIZE:
        raise ConfigError(f"web.page_size must be at most {MAX_PAGE_SIZE}")
    return WebSettings(**values)
