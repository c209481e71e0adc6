"""Templates: the Jinja environment, the filters that show times and durations, ``render``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import aiohttp_jinja2
import jinja2
from aiohttp import web
from markupsafe import Markup

from polyfleet.controller.domain.rollout import detail_text
from polyfleet.controller.domain.tickets import MODEL_NAMES, contract_flag_text, fault_text
from polyfleet.controller.keys import CORE
from polyfleet.controller.services.access import Role
from polyfleet.controller.web.i18n import Translator, negotiate
from polyfleet.controller.web.keys import SESSION, STATIC_VERSION
from polyfleet.controller.web.words import (
    check_global,
    device_text_filter,
    word_global,
)

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


@cache
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def moment(value: object) -> datetime | None:
    """A stored time (ISO text with offset, or a datetime) as an aware datetime, or None."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else None
    return None


def local_text(value: datetime, zone_name: str, *, seconds: bool = False) -> str:
    """``2026-03-02 10:00 +01:00``: the wall time of that zone, with its offset."""
    local = value.astimezone(zone(zone_name))
    offset = local.strftime("%z")
    shown = local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{shown} {offset[:3]}:{offset[3:]}"


@jinja2.pass_context
def when_filter(
    context: jinja2.runtime.Context, value: object, zone_name: str | None = None
) -> Markup:
    """A ``<time>`` element in the site's zone (else the dashboard's), offset shown."""
    found = moment(value)
    if found is None:
        return Markup("&ndash;")
    name = zone_name or context["default_zone"]
    text = local_text(found, name)
    iso = found.isoformat()
    return Markup('<time datetime="{}" title="{}">{}</time>').format(iso, name, text)


def site_zones(request: web.Request, sites: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Each site's time zone, which the moments of its devices and tickets are shown in
    (the dashboard's own where a site names none)."""
    default = request.app[CORE].web.timezone
    return {site["id"]: str(site.get("timezone") or default) for site in sites}


def duration_text(t: Translator, seconds: float) -> str:
    """A whole duration in the largest two units: ``2 d 3 h``, ``3 h 05 min``, ``12 min``."""
    whole = int(abs(seconds))
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return t.gettext("{d} d {h} h", d=days, h=hours)
    if hours:
        return t.gettext("{h} h {m:02d} min", h=hours, m=minutes)
    if minutes:
        return t.gettext("{m} min", m=minutes)
    return t.gettext("under a minute")


@jinja2.pass_context
def duration_global(context: jinja2.runtime.Context, seconds: float) -> str:
    return duration_text(context["t"], seconds)


@jinja2.pass_context
def left_filter(context: jinja2.runtime.Context, due: object) -> str:
    """Time left until ``due`` (``3 h 05 min left``), or how long it is overdue."""
    found = moment(due)
    if found is None:
        return ""
    t: Translator = context["t"]
    seconds = (found - context["now"]).total_seconds()
    if seconds < 0:
        return t.gettext("overdue by {duration}", duration=duration_text(t, seconds))
    return t.gettext("{duration} left", duration=duration_text(t, seconds))


@jinja2.pass_context
def ago_filter(context: jinja2.runtime.Context, value: object) -> str:
    """How long ago (``5 min ago``); empty for no time."""
    found = moment(value)
    if found is None:
        return ""
    t: Translator = context["t"]
    seconds = (context["now"] - found).total_seconds()
    if seconds < 0:
        return t.gettext("in {duration}", duration=duration_text(t, seconds))
    return t.gettext("{duration} ago", duration=duration_text(t, seconds))


def day_filter(value: object) -> str:
    if isinstance(value, date):
        return value.isoformat()
    return str(value) if value else "\N{EN DASH}"


@jinja2.pass_context
def query_filter(
    context: jinja2.runtime.Context, changes: Mapping[str, object], path: str | None = None
) -> str:
    """An address with the current page's query plus ``changes`` (None removes a key), for
    links that keep the view's state (filters, sort, page); on ``path`` if given."""
    request: web.Request = context["request"]
    merged: dict[str, str] = dict(request.query)
    for key, value in changes.items():
        if value is None or value == "":
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    target = path or request.path
    return f"{target}?{urlencode(merged)}" if merged else target


def setup_templates(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=when_filter,
        left=left_filter,
        ago=ago_filter,
        day=day_filter,
        query=query_filter,
    )
    env.filters["model_name"] = lambda value: MODEL_NAMES.get(value, value)
    env.filters["device_text"] = device_text_filter
    env.globals.update(
        word=word_global,
        check_words=check_global,
        detail_words=detail_text,
        model_names=MODEL_NAMES,
        fault_text=fault_text,
        contract_flag_text=contract_flag_text,
        duration=duration_global,
    )


def page_context(request: web.Request) -> dict[str, Any]:
    """What every page needs: who is signed in, the language, now, the CSRF token."""
    settings = request.app[CORE].web
    session = request.get(SESSION)
    t = Translator(negotiate(request.headers.get("Accept-Language")))
    return {
        "request": request,
        "t": t,
        "_": t.gettext,
        "ngettext": t.ngettext,
        "lang": t.language,
        "now": request.app[CORE].clock(),
        "default_zone": settings.timezone,
        "session": session,
        "is_admin": session is not None and session.principal.role is Role.ADMIN,
        "csrf": session.csrf if session is not None else "",
        "refresh_s": settings.refresh_s,
        "static_version": request.app[STATIC_VERSION],
        "fragment": request.headers.get("HX-Request") == "true",
    }


def render(
    request: web.Request, template: str, context: Mapping[str, Any], *, status: int = 200
) -> web.Response:
    merged = {**page_context(request), **context}
    response = aiohttp_jinja2.render_template(template, request, merged, status=status)
    response.headers["Cache-Control"] = "no-store"
    return response


def translator(request: web.Request) -> Translator:
    return Translator(negotiate(request.headers.get("Accept-Language")))
