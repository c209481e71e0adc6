"""Numbers in device answers: only finite values of at least zero are taken; the rest is unknown."""

from __future__ import annotations

from typing import Any

import pytest

from polyfleet.agent.drivers.videoos import _float, parse_uptime_text


@pytest.mark.parametrize(
    ("given", "taken"),
    [
        (12, 12.0),
        (0, 0.0),
        ("693845.31", 693845.31),
        (-1, None),
        ("-0.5", None),
        ("inf", None),
        ("1e400", None),
        (float("inf"), None),
        ("nan", None),
        (10**400, None),
        (True, None),
        (None, None),
        ([], None),
        ("", None),
        ("ten", None),
    ],
)
def test_only_finite_numbers_of_at_least_zero_are_taken(given: Any, taken: float | None) -> None:
    assert _float(given) == taken


def test_uptime_text_too_large_for_a_number_is_unknown() -> None:
    assert parse_uptime_text("1 Day, 2 Hours") == 93600.0
    assert parse_uptime_text("9" * 400 + " Days") is None
