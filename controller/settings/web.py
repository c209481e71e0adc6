"""Settings of the dashboard: the ``[web]`` table of ``controller.toml``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator

from polyfleet.shared.config import ConfigModel, between, check, positive

DEFAULT_SESSION_TTL_S = 12 * 3600
DEFAULT_KIOSK_SESSION_TTL_S = 30 * 24 * 3600
DEFAULT_LINK_TTL_S = 600
DEFAULT_REFRESH_S = 15
DEFAULT_KIOSK_REFRESH_S = 30
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: Times without a site of their own (the controller's, the SLA's) are shown in this zone.
DEFAULT_TIMEZONE = "Europe/Warsaw"


def _zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name like Europe/Warsaw)") from None
    return name


Seconds = Annotated[int, positive()]


class WebSettings(ConfigModel):
    """``[web]``: sessions, refresh rates, page size and the time zone of the dashboard."""

    session_ttl_s: Seconds = DEFAULT_SESSION_TTL_S
    kiosk_session_ttl_s: Seconds = DEFAULT_KIOSK_SESSION_TTL_S
    signin_link_ttl_s: Seconds = DEFAULT_LINK_TTL_S
    refresh_s: Seconds = DEFAULT_REFRESH_S
    kiosk_refresh_s: Seconds = DEFAULT_KIOSK_REFRESH_S
    page_size: Annotated[int, between(1, MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE
    timezone: Annotated[str, AfterValidator(_zone)] = DEFAULT_TIMEZONE


def web_settings(section: Mapping[str, Any]) -> WebSettings:
    """The ``[web]`` table checked; an error names ``web.KEY`` and what is expected."""
    return check(WebSettings, section, source=None, loc=("web",))
