"""What an admin may type into a field: printable text of bounded length, checked in one place.

Every field an admin sets (a ticket's serial and contract number, site and room names,
token names, notes...) ends up in e-mail headers, webhook bodies, CSV files and terminal
output. A line break in a serial once made every later e-mail fail to build, so the API,
the CLI and the importers all check such text here, and say what is wrong in words::

    from polyfleet.controller.domain.admin_input import AdminInputError, display_name
    name = display_name(raw, field="name")      # AdminInputError(field, message) if bad

For pydantic request models, the ``*Text`` annotated types apply the same checks.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema

from polyfleet.controller.errors import Invalid
from polyfleet.shared.printable import UNPRINTABLE_CATEGORIES, escaped

#: A serial: what devices report and the asset registry holds (shared.schema.Serial).
SERIAL_MAX_CHARS = 64
SERIAL_PATTERN = re.compile(r"[A-Za-z0-9._\-]+")
#: A service contract number, as the distributor prints it.
CONTRACT_NUMBER_MAX_CHARS = 128
#: Names people give things: sites, rooms, tokens.
NAME_MAX_CHARS = 128
#: Longer free text (a note, a reason).
TEXT_MAX_CHARS = 2000
#: Unicode categories never allowed: control (Cc: CR, LF, TAB, ESC...), format (Cf: zero-width
#: and bidirectional overrides, which make text read differently than it is), surrogates,
#: private use, unassigned, and the line and paragraph separators.
_REFUSED_CATEGORIES = UNPRINTABLE_CATEGORIES


class AdminInputError(Invalid, ValueError):
    """A field's text is not acceptable; ``field`` names it, the message says why.

    ``message`` may be an English text with ``{name}`` fields filled from ``params``: the
    dashboard then says it in the page's language (``Refused.template``)."""

    def __init__(self, field: str, message: str, params: dict[str, Any] | None = None) -> None:
        reason = message.format(**params) if params else message
        words = message if params else message.replace("{", "{{").replace("}", "}}")
        super().__init__(
            f"{field}: {reason}",
            field=field,
            template="{field}: " + words,
            params={**(params or {}), "field": field},
        )
        self.reason = reason
        #: The reason's English text with its fields, and their values.
        self.reason_template = message if params else words
        self.reason_params: dict[str, Any] = dict(params or {})


def _describe(char: str, position: int) -> tuple[str, dict[str, Any]]:
    """Why a character is refused, as a text with fields and their values."""
    name = unicodedata.name(char, "")
    params: dict[str, Any] = {"code": f"U+{ord(char):04X}", "position": position}
    if char in "\r\n":
        return "contains a line break ({code}) at character {position}; use printable text", params
    if char == "\t":
        return "contains a tab ({code}) at character {position}; use printable text", params
    return (
        "contains the invisible character {code}{name} at character {position}; use printable text",
        {**params, "name": f" {name}" if name else ""},
    )


def printable_text(
    value: str, *, field: str, max_chars: int = TEXT_MAX_CHARS, allow_empty: bool = False
) -> str:
    """``value`` without surrounding spaces; AdminInputError when it holds a character that
    is not printable (control, format, separator) or is longer than ``max_chars``."""
    if not isinstance(value, str):
        raise AdminInputError(field, "expected text, got {kind}", {"kind": type(value).__name__})
    for position, char in enumerate(value, start=1):
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise AdminInputError(field, *_describe(char, position))
    text = value.strip()
    if not text and not allow_empty:
        raise AdminInputError(field, "is empty")
    if len(text) > max_chars:
        raise _too_long(field, len(text), max_chars)
    return text


def _too_long(field: str, length: int, max_chars: int) -> AdminInputError:
    return AdminInputError(
        field, "is {length} characters long; at most {max}", {"length": length, "max": max_chars}
    )


#: Longest description of a ticket opened by hand.
DESCRIPTION_MAX_CHARS = 8000


def multiline_text(value: str, *, field: str, max_chars: int = DESCRIPTION_MAX_CHARS) -> str:
    """Free text of several lines (a ticket's description): each line printable as
    ``printable_text`` checks it, line ends normalised to ``\\n``, surrounding blank lines
    dropped; "" is allowed."""
    if not isinstance(value, str):
        raise AdminInputError(field, "expected text, got {kind}", {"kind": type(value).__name__})
    checked: list[str] = []
    for number, line in enumerate(value.replace("\r\n", "\n").split("\n"), start=1):
        try:
            checked.append(printable_text(line, field=field, max_chars=max_chars, allow_empty=True))
        except AdminInputError as exc:
            raise AdminInputError(
                field, "line {line} " + exc.reason_template, {**exc.reason_params, "line": number}
            ) from None
    text = "\n".join(checked).strip("\n")
    if len(text) > max_chars:
        raise _too_long(field, len(text), max_chars)
    return text


def serial(value: str, *, field: str = "serial") -> str:
    """A device serial: letters, digits, '.', '_' and '-', at most 64 characters."""
    text = printable_text(value, field=field, max_chars=SERIAL_MAX_CHARS)
    if not SERIAL_PATTERN.fullmatch(text):
        raise AdminInputError(
            field,
            "{text} is not a serial (letters, digits, '.', '_' and '-' only)",
            {"text": repr(text)},
        )
    return text


def contract_number(value: str, *, field: str = "contract_number") -> str:
    """A service contract number: printable, not empty, at most 128 characters."""
    return printable_text(value, field=field, max_chars=CONTRACT_NUMBER_MAX_CHARS)


def display_name(value: str, *, field: str = "name", allow_empty: bool = False) -> str:
    """A name people read (site, room, token): printable, at most 128 characters."""
    return printable_text(value, field=field, max_chars=NAME_MAX_CHARS, allow_empty=allow_empty)


#: A telephone number as people write it: digits with spaces, dashes, dots, slashes and
#: brackets, an optional leading ``+``.
PHONE_PATTERN = re.compile(r"\+?[0-9][0-9 ()./\-]*")
PHONE_MIN_DIGITS = 6
PHONE_MAX_CHARS = 32
#: An e-mail address: something, one @, a domain with a dot; no spaces.
EMAIL_PATTERN = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
EMAIL_MAX_CHARS = 254


def phone_number(value: str, *, field: str = "phone") -> str:
    """A telephone number an engineer can dial: ``+48 12 345 67 89``, ``(12) 345-67-89``."""
    text = printable_text(value, field=field, max_chars=PHONE_MAX_CHARS)
    digits = sum(char.isdigit() for char in text)
    if not PHONE_PATTERN.fullmatch(text) or digits < PHONE_MIN_DIGITS:
        raise AdminInputError(
            field,
            f"{text!r} is not a telephone number (digits, spaces, + ( ) - . /; at least "
            f"{PHONE_MIN_DIGITS} digits)",
        )
    return text


def email_address(value: str, *, field: str = "email") -> str:
    """An e-mail address: ``name@example.pl``."""
    text = printable_text(value, field=field, max_chars=EMAIL_MAX_CHARS)
    if not EMAIL_PATTERN.fullmatch(text):
        raise AdminInputError(field, f"{text!r} is not an e-mail address (name@example.pl)")
    return text


def network(value: str, *, field: str = "network") -> str:
    """An IP network in CIDR notation (``10.20.0.0/16``; an address alone is one host),
    written back in its normal form."""
    text = printable_text(value, field=field, max_chars=NAME_MAX_CHARS)
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise AdminInputError(
            field, f"{text!r} is not an IP network; write it as 10.20.0.0/16 or 192.0.2.7"
        ) from None


def shown(value: str) -> str:
    """``value`` for one line of a terminal or log: unprintable characters as escapes (\\n,
    \\u202e), so stored text from before these checks cannot break or disguise the output."""
    return escaped(value)


#: The same rules as a JSON schema pattern, for API documents (the checks above decide).
_PRINTABLE_PATTERN = (
    r"^[^\u0000-\u001f\u007f-\u009f\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]+$"
)
#: The same, for a text that may be left empty.
PRINTABLE_OR_EMPTY = _PRINTABLE_PATTERN[:-2] + "*$"


def _as_pydantic(check: Callable[[str], str], schema: dict[str, object]) -> tuple[object, ...]:
    def validate(value: str) -> str:
        try:
            return check(value)
        except AdminInputError as exc:
            # pydantic names the field itself; the reason alone reads well after it.
            raise ValueError(exc.reason) from None

    return (AfterValidator(validate), WithJsonSchema({"type": "string", **schema}))


def _free_text(value: str) -> str:
    return printable_text(value, field="text")


#: Request-model field types applying the checks above (and documenting them).
SerialText = Annotated[
    str,
    *_as_pydantic(
        serial,
        {"minLength": 1, "maxLength": SERIAL_MAX_CHARS, "pattern": r"^[A-Za-z0-9._\-]+$"},
    ),
]
ContractNumberText = Annotated[
    str,
    *_as_pydantic(
        contract_number,
        {"minLength": 1, "maxLength": CONTRACT_NUMBER_MAX_CHARS, "pattern": _PRINTABLE_PATTERN},
    ),
]
NameText = Annotated[
    str,
    *_as_pydantic(
        display_name,
        {"minLength": 1, "maxLength": NAME_MAX_CHARS, "pattern": _PRINTABLE_PATTERN},
    ),
]
FreeText = Annotated[
    str,
    *_as_pydantic(
        _free_text, {"minLength": 1, "maxLength": TEXT_MAX_CHARS, "pattern": _PRINTABLE_PATTERN}
    ),
]
