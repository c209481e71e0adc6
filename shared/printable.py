"""Text for a terminal or a log line: what could break the line or move the cursor, escaped.

Text from outside (what devices and agents report, what an admin typed before the input
checks, a request's path) may hold line breaks, ESC sequences or bidirectional overrides.
On a terminal they forge lines, recolour or clear the screen, or make text read otherwise
than it is. ``escaped`` writes each such character as a Python escape (``\\x1b``,
``\\n``, ``\\u202e``): visible, one line, and still telling what was there. Every command's
table cells and every log message go through it (``LogFormatter``).
"""

from __future__ import annotations

import logging
import unicodedata

#: Unicode categories never shown raw: control (Cc: CR, LF, TAB, ESC...), format (Cf:
#: zero-width and bidirectional controls), surrogates, private use, unassigned, and the
#: line and paragraph separators.
UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def unprintable(char: str) -> bool:
    """Whether one character is never shown raw."""
    return unicodedata.category(char) in UNPRINTABLE_CATEGORIES


def escaped(text: str) -> str:
    """``text`` on one line with every unprintable character as its escape (``\\x1b``)."""
    # str.isprintable is False for all of them (and for spaces other than " "): most text
    # is printable and costs one pass in C.
    if text.isprintable():
        return text
    return "".join(_escape(char) if unprintable(char) else char for char in text)


def _escape(char: str) -> str:
    # A lone surrogate (bytes that were not UTF-8) has no unicode_escape form of its own.
    return char.encode("unicode_escape", "backslashreplace").decode("ascii")


class LogFormatter(logging.Formatter):
    """A formatter whose messages are ``escaped``: a logged value cannot forge a log line or
    reach the terminal as a control sequence. Tracebacks keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escaped(super().formatMessage(record))
