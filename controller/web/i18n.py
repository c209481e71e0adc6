"""The dashboard's languages: English as written in the templates, Polish from a catalogue."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

Language = Literal["en", "pl"]
LANGUAGES: tuple[Language, ...] = ("en", "pl")
DEFAULT_LANGUAGE: Language = "en"
CATALOGUE_DIR = Path(__file__).resolve().parent / "translations"


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


def polish_plural(n: int) -> int:
    """Which Polish form: 1 urządzenie, 2-4 urządzenia (not 12-14), 5 urządzeń."""
    if n == 1:
        return 0
    if n % 10 in (2, 3, 4) and n % 100 not in (12, 13, 14):
        return 1
    return 2


@cache
def catalogue(language: Language) -> Mapping[str, str | list[str]]:
    """English text -> its translation (a list of plural forms for plural messages)."""
    if language == "en":
        return {}
    path = CATALOGUE_DIR / f"{language}.toml"
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    for key, value in data.items():
        if not isinstance(value, str) and not (
            isinstance(value, list) and len(value) == 3 and all(isinstance(v, str) for v in value)
        ):
            raise ValueError(f"{path}: {key!r} must be a text or a list of three plural forms")
    return data


@dataclass(frozen=True)
class Translator:
    """``gettext`` and ``ngettext`` for one language; ``{name}`` fields filled from keywords."""

    language: Language

    def gettext(self, message: str, **params: Any) -> str:
        found = catalogue(self.language).get(message, message)
        text = found if isinstance(found, str) else found[0]
        return text.format(**params) if params else text

    def ngettext(self, singular: str, plural: str, n: int, **params: Any) -> str:
        found = catalogue(self.language).get(singular)
        if isinstance(found, list):
            text = found[polish_plural(n)]
        else:
            text = singular if n == 1 else plural
        return text.format(n=n, **params)
