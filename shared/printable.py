"""Text for a terminal or a log line: what could break the line or move the cursor, escaped.

Text from outside (what devices and agents report, what an admin typed before the input
checks, a request's path) may hold line breaks, ESC sequences or bidirectional overrides.
On a terminal they forge lines, recolour or clear the screen, or make text read otherwise
than it is. ``escaped`` writes each such character as a Python escape (``\\x1b``,
``\\n``, ``\\u202e``): visible, one line, and still telling what was there. Every command's
table cells and every log message go through it (``LogFormatter``), and a command's
standard output and error go through ``TerminalText``: what a command prints cannot move
the terminal's cursor, whatever a table cell held.
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
from typing import TextIO

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


#: A line end (LF, or CR LF as CSV writes it), or a run of anything else.
_LINES = re.compile(r"\r?\n|[^\r\n]+|\r")


def escaped_lines(text: str) -> str:
    """``text`` with every unprintable character escaped except its line ends (LF, CR LF)."""
    if text.isprintable():
        return text
    return "".join(
        piece if piece in ("\n", "\r\n") else escaped(piece) for piece in _LINES.findall(text)
    )


class TerminalText(io.TextIOBase):
    """A text stream in front of a command's standard output or error: line ends pass,
    every other control, format or bidirectional character is written as its escape.
    ``control`` writes a terminal sequence the command means to send (a redraw)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(escaped_lines(text))
        return len(text)

    def control(self, sequence: str) -> None:
        """Write a terminal control sequence as it is (the command's own, never data)."""
        self.stream.write(sequence)

    def flush(self) -> None:
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding


def write_control(stream: TextIO, sequence: str) -> None:
    """Send a terminal control sequence to ``stream`` unescaped, even through ``TerminalText``."""
    if isinstance(stream, TerminalText):
        stream.control(sequence)
    else:
        stream.write(sequence)
