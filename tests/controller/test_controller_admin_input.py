"""Admin-entered text is checked in one place: printable, no control characters, bounded."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from polyfleet.controller.domain.admin_input import (
    AdminInputError,
    ContractNumberText,
    contract_number,
    display_name,
    serial,
    shown,
)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("X3\r\nBcc: a@b", "a line break (U+000D) at character 3"),
        ("X3\n", "a line break (U+000A)"),
        ("Sala\tWawel", "a tab (U+0009)"),
        ("Sala\u202eWawel", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("Sala\u200bWawel", "U+200B ZERO WIDTH SPACE"),
        ("Sala\x1b[31m", "U+001B"),
        ("Sala\u2028Wawel", "U+2028"),
        ("   ", "is empty"),
        ("x" * 129, "is 129 characters long; at most 128"),
    ],
)
def test_unprintable_or_overlong_names_are_refused_saying_why(text: str, reason: str) -> None:
    """A name with a control, format or separator character, or too long, names the problem."""
    with pytest.raises(AdminInputError) as caught:
        display_name(text, field="room")
    assert caught.value.field == "room" and reason in str(caught.value)
    assert str(caught.value).startswith("room: ")


def test_printable_text_is_kept_without_surrounding_spaces() -> None:
    """Polish letters, inner spaces and punctuation pass; surrounding spaces are dropped."""
    assert display_name("  Sala Sukiennice - Kraków (2. piętro) ") == (
        "Sala Sukiennice - Kraków (2. piętro)"
    )
    assert contract_number(" HZ/2025/0001 ") == "HZ/2025/0001"
    assert serial("X50-1.a_b") == "X50-1.a_b"


def test_serial_allows_only_the_serial_alphabet() -> None:
    """A serial is letters, digits, '.', '_' and '-', as devices and the registry spell it."""
    with pytest.raises(AdminInputError, match="not a serial"):
        serial("X 3")
    with pytest.raises(AdminInputError, match="at most 64"):
        serial("X" * 65)


def test_request_models_get_the_same_checks_and_say_which_field() -> None:
    """The pydantic type refuses the same text, with the reason after the field's name."""

    class Body(BaseModel):
        contract_number: ContractNumberText | None = None

    assert Body(contract_number=" C-1 ").contract_number == "C-1"
    with pytest.raises(ValidationError) as caught:
        Body(contract_number="C-1\r\nX")
    (error,) = caught.value.errors()
    assert error["loc"] == ("contract_number",) and "line break" in error["msg"]
    with pytest.raises(ValidationError, match="is empty"):
        Body(contract_number="")


def test_stored_text_is_shown_on_one_line_with_escapes() -> None:
    """Text stored before the checks prints as escapes, never as a line break or reversal."""
    assert shown("X3\r\nBcc: a\u202eb Kraków") == "X3\\r\\nBcc: a\\u202eb Kraków"
