"""The dashboard speaks Polish and English, chosen by the browser's Accept-Language."""

from __future__ import annotations

import re
import string

from dashboard.messages import messages
from polyfleet.controller.web.i18n import Translator, catalogue, negotiate, polish_plural


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_text_the_dashboard_shows_has_a_polish_translation() -> None:
    """Each English text in the templates and page modules is in the Polish catalogue."""
    polish = catalogue("pl")
    missing = sorted(text for text in messages() if text not in polish)
    assert missing == []


def test_polish_translations_keep_the_same_fields() -> None:
    """A translation names the same {fields} as its English text (else it fails to render)."""
    for english, polish in catalogue("pl").items():
        forms = polish if isinstance(polish, list) else [polish]
        wanted = _fields(english) - {"n"}
        for form in forms:
            assert wanted <= _fields(form), english
            assert _fields(form) <= _fields(english) | {"n"}, english


def test_the_polish_catalogue_holds_no_stale_texts() -> None:
    """Every Polish entry is still used somewhere (a renamed text leaves none behind)."""
    stale = sorted(set(catalogue("pl")) - messages())
    assert stale == []


def test_accept_language_picks_polish_or_english_by_quality() -> None:
    """pl-PL first gives Polish; a higher q for English gives English; others fall back."""
    assert negotiate("pl-PL,pl;q=0.9,en;q=0.8") == "pl"
    assert negotiate("en-GB,en;q=0.9,pl;q=0.8") == "en"
    assert negotiate("de-DE,de;q=0.9,pl;q=0.5") == "pl"
    assert negotiate("de-DE") == "en"
    assert negotiate("pl;q=0.2, en;q=0.7") == "en"
    assert negotiate("pl;q=0") == "en"
    assert negotiate(None) == "en"


def test_polish_plurals_follow_polish_grammar() -> None:
    """1 urządzenie, 2-4 urządzenia (but 12-14 urządzeń), 5+ urządzeń, 22 urządzenia."""
    t = Translator("pl")
    shown = {n: t.ngettext("{n} device", "{n} devices", n) for n in (1, 2, 4, 5, 12, 14, 22, 25)}
    assert shown == {
        1: "1 urządzenie",
        2: "2 urządzenia",
        4: "4 urządzenia",
        5: "5 urządzeń",
        12: "12 urządzeń",
        14: "14 urządzeń",
        22: "22 urządzenia",
        25: "25 urządzeń",
    }
    assert [polish_plural(n) for n in (0, 1, 3, 11, 21, 102)] == [2, 0, 1, 2, 2, 1]
    assert re.fullmatch(r"\d+ devices", Translator("en").ngettext("{n} device", "{n} devices", 3))
