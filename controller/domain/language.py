"""The controller's two languages and its one catalogue of texts, package data read once.

``controller/data/translations/<language>.toml`` holds every text of one language: the
``[tickets.*]`` tables, keyed (what a ticket, its notes and a contract flag say), and in the
Polish file the ``[dashboard]`` table, keyed by the English text the templates are written
in. The files ship with the package and do not change while it runs, so reading them once
at first use is reading constants, as importing a module is.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Literal

Language = Literal["pl", "en"]
LANGUAGES: tuple[Language, ...] = ("pl", "en")
#: Tables keyed by their English text (as gettext does): English has no table of its own.
ENGLISH_KEYED = frozenset({"dashboard"})

#: A text, or the forms of a plural message (Polish: 1, 2-4, 5+).
Text = str | list[str]


@cache
def catalogue(language: Language) -> Mapping[str, Mapping[str, Text]]:
    """Every table of ``language``'s file by its dotted name (``tickets.notes``, ``dashboard``)."""
    name = f"{language}.toml"
    source = resources.files("polyfleet.controller").joinpath("data", "translations", name)
    tables: dict[str, dict[str, Text]] = {}
    _collect(tomllib.loads(source.read_text(encoding="utf-8")), "", tables, name)
    return tables


def _collect(
    table: Mapping[str, object], prefix: str, tables: dict[str, dict[str, Text]], name: str
) -> None:
    for key, value in table.items():
        if isinstance(value, dict):
            _collect(value, f"{prefix}{key}.", tables, name)
        elif isinstance(value, str) or (
            isinstance(value, list) and value and all(isinstance(form, str) for form in value)
        ):
            tables.setdefault(prefix.rstrip("."), {})[key] = value
        else:
            raise ValueError(f"{name}: {prefix}{key} must be a text or a list of plural forms")


def keyed_texts(table: str) -> dict[str, dict[Language, str]]:
    """A keyed table in every language: key -> language -> text."""
    english = catalogue("en")[table]
    return {
        key: {language: str(catalogue(language)[table][key]) for language in LANGUAGES}
        for key in english
    }


def plural_text(table: str, key: str, language: Language, n: int) -> str:
    """The form of a plural text that agrees with ``n``, ``{n}`` filled in."""
    forms = catalogue(language)[table][key]
    if isinstance(forms, str):
        return forms.format(n=n)
    index = polish_plural(n) if language == "pl" else (0 if n == 1 else 2)
    return forms[index].format(n=n)


def polish_plural(n: int) -> int:
    """Which Polish form: 1 urządzenie, 2-4 urządzenia (not 12-14), 5 urządzeń."""
    if n == 1:
        return 0
    if n % 10 in (2, 3, 4) and n % 100 not in (12, 13, 14):
        return 1
    return 2
