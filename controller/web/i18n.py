"""The dashboard's languages: English as written in the templates, Polish from the catalogue."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from polyfleet.controller.domain import language as texts
from polyfleet.controller.domain.language import Language
from polyfleet.controller.domain.language import polish_plural as polish_plural
from polyfleet.controller.errors import Refused

DEFAULT_LANGUAGE: Language = "en"
#: The catalogue's table of the dashboard's texts (keyed by their English).
TABLE = "dashboard"


def negotiate(accept_language: str | None) -> Language:
    """The best of our languages for an ``Accept-Language`` header (q-values honoured)."""
    best: tuple[float, int, Language] | None = None
    for position, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        language: Language | None = None
        if primary == "pl":
            language = "pl"
        elif primary in ("en", "*"):
            language = "en"
        if language is None:
            continue
        # Higher quality wins; among equals, the one listed first.
        candidate = (quality, -position, language)
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    return best[2] if best is not None else DEFAULT_LANGUAGE


@cache
def catalogue(language: Language) -> Mapping[str, str | list[str]]:
    """English text -> its translation (a list of plural forms for plural messages)."""
    if language == "en":
        return {}
    table = texts.catalogue(language).get(TABLE, {})
    for key, value in table.items():
        if isinstance(value, list) and len(value) != 3:
            raise ValueError(f"{language}: {TABLE}.{key!r} must list three plural forms")
    return table


@dataclass(frozen=True)
class Translator:
    """``gettext`` and ``ngettext`` for one language; ``{name}`` fields filled from keywords."""

    language: Language

    def gettext(self, message: str, **params: Any) -> str:
        found = catalogue(self.language).get(message, message)
        text = found if isinstance(found, str) else found[0]
        return text.format(**params) if params else text

    def refusal(self, exc: Refused) -> str:
        """A refusal in this language: its English text translated, its fields filled (the
        name of a form field translated too)."""
        params = dict(exc.params)
        if isinstance(params.get("field"), str):
            params["field"] = self.gettext(params["field"])
        found = catalogue(self.language).get(exc.template, exc.template)
        text = found if isinstance(found, str) else found[0]
        try:
            return text.format(**params) if params else text
        except (KeyError, IndexError, ValueError):
            # A catalogue entry naming a field the refusal lacks: the English message.
            return exc.message

    def ngettext(self, singular: str, plural: str, n: int, **params: Any) -> str:
        found = catalogue(self.language).get(singular)
        if isinstance(found, list):
            text = found[polish_plural(n)]
        else:
            text = singular if n == 1 else plural
        return text.format(n=n, **params)


def _(text: str) -> str:
    """Marks a text the dashboard translates when it is shown (not here)."""
    return text


#: The refusals the forms say in words, as their English texts with ``{fields}``
#: (``Refused.template``; the checks in ``domain/admin_input.py``, unknown serial or site,
#: a window already over), and the form fields they name: listed here so the catalogue's
#: checks know them as the dashboard's. Each is one literal, however long: those checks
#: read the first literal of a call.
REFUSAL_TEXTS = (
    _("{field}: expected text, got {kind}"),
    _("{field}: contains a line break ({code}) at character {position}; use printable text"),
    _("{field}: contains a tab ({code}) at character {position}; use printable text"),
    _(
        "{field}: contains the invisible character {code}{name} at character {position}; use printable text"  # noqa: E501
    ),
    _("{field}: is empty"),
    _("{field}: is {length} characters long; at most {max}"),
    _(
        "{field}: line {line} contains a line break ({code}) at character {position}; use printable text"  # noqa: E501
    ),
    _("{field}: line {line} contains a tab ({code}) at character {position}; use printable text"),
    _(
        "{field}: line {line} contains the invisible character {code}{name} at character {position}; use printable text"  # noqa: E501
    ),
    _("{field}: line {line} is {length} characters long; at most {max}"),
    _("{field}: {text} is not a serial (letters, digits, '.', '_' and '-' only)"),
    _("no device {serial}"),
    _("no site {site}; add it with: polyfleet controller site add"),
    _("maintenance {id} is already over (since {since})"),
    _("serial"),
    _("category"),
    _("summary"),
    _("description"),
    _("contact"),
    _("reason"),
    _(
        "no unit {serial}: it is neither enrolled nor in the asset registry; register it first (polyfleet controller assets import)"  # noqa: E501
    ),
    _("give the unit's serial or, for a site-wide problem, the site"),
)
