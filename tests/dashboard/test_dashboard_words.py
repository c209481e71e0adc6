"""Every stored value the dashboard shows has its words, in English and in Polish."""

from __future__ import annotations

import pytest

from polyfleet.controller.web.i18n import Translator, catalogue
from polyfleet.controller.web.words import ENUMERATED, WORDS, device_text, word_for


@pytest.mark.parametrize("table", sorted(ENUMERATED))
def test_every_value_of_each_enum_has_a_word(table: str) -> None:
    """Each enum, status, kind, reason and flag the controller stores has a word; none left
    over for a value that no longer exists."""
    values = set(ENUMERATED[table])
    assert values, table
    assert values == set(WORDS[table]), (
        f"{table}: no word for {sorted(values - set(WORDS[table]))}; "
        f"words for values that do not exist: {sorted(set(WORDS[table]) - values)}"
    )


def test_every_word_has_its_polish() -> None:
    """The catalogue's Polish table has every English word of every table."""
    polish = catalogue("pl")
    missing = sorted(
        f"{table}.{value}: {english!r}"
        for table, words in WORDS.items()
        for value, english in words.items()
        if english not in polish
    )
    assert not missing, "\n".join(missing)


def test_values_are_shown_in_words_in_both_languages() -> None:
    """What a page shows for a value is words, and a device's own values are too."""
    english, polish = Translator("en"), Translator("pl")
    assert word_for(english, "device_status", "waiting_window") == "waiting for its window"
    assert word_for(polish, "job_kind", "collect_diagnostics") != "collect diagnostics"
    assert word_for(english, "device_value", "SOME_NEW_STATE") == "some new state"
    assert word_for(english, "job_status", None) == "\N{EN DASH}"
    assert device_text(english, "camera all_down") == "camera all down"
    assert "all_down" not in device_text(polish, "camera all_down")
