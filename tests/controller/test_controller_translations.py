"""One catalogue of texts a language: the same keys in Polish and English, Polish only there."""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path

import pytest

import polyfleet.controller as controller_package
from polyfleet.controller.domain.language import ENGLISH_KEYED, catalogue

CONTROLLER = Path(controller_package.__file__).resolve().parent
POLISH_LETTERS = re.compile("[ąćęłńóśźżĄĆĘŁŃÓŚŹŻ]")


def _fields(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_both_languages_have_exactly_the_same_keys() -> None:
    """Every keyed table is in both files with the same keys (the dashboard's English is its
    keys, so only the Polish file has that table)."""
    english, polish = catalogue("en"), catalogue("pl")
    assert set(english) == set(polish) - ENGLISH_KEYED
    assert set(polish) >= ENGLISH_KEYED
    assert {"tickets.faults", "tickets.notes", "tickets.flags", "tickets.labels"} <= set(english)
    for table in english:
        assert set(english[table]) == set(polish[table]), table


@pytest.mark.parametrize("table", sorted(catalogue("en")))
def test_translations_name_the_same_fields_and_forms(table: str) -> None:
    """A Polish text names the {fields} of its English one, and plurals have three forms."""
    for key, english in catalogue("en")[table].items():
        polish = catalogue("pl")[table][key]
        assert type(english) is type(polish), f"{table}.{key}"
        english_forms = english if isinstance(english, list) else [english]
        polish_forms = polish if isinstance(polish, list) else [polish]
        assert len(english_forms) == len(polish_forms) in (1, 3), f"{table}.{key}"
        wanted = set().union(*map(_fields, english_forms))
        for form in polish_forms:
            assert _fields(form) == wanted, f"{table}.{key}"


def test_no_polish_text_is_written_in_the_code() -> None:
    """Outside docstrings, no string in the controller's code holds Polish: it is all in the
    catalogue (controller/data/translations), one file a language."""
    found = []
    for path in sorted(CONTROLLER.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        found += [
            f"{path.relative_to(CONTROLLER)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and POLISH_LETTERS.search(node.value)
        ]
    assert found == []
    # The pattern does find Polish where it is (so the scan above can fail).
    assert POLISH_LETTERS.search(str(catalogue("pl")["tickets.labels"]))
