"""What a command prints cannot move the terminal's cursor, whatever a stored name holds."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from polyfleet.cli import main
from polyfleet.controller.keys import CORE
from polyfleet.controller.store.base import SITES
from polyfleet.controller.testing import running_controller
from polyfleet.shared.printable import escaped_lines

#: A name stored before the admin text checks: a forged line, a colour, a reversed text.
FORGED = "Wawel\r\nkrk2  Forged  0  online\x1b[2J\u202eplh"


async def test_a_table_escapes_what_a_stored_name_holds_and_json_keeps_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``site list`` prints a name holding CR LF, ESC and a bidi override escaped on its one
    row; ``--json`` gives the name as stored, and the streams are the command's own again."""
    data = tmp_path / "data"
    async with running_controller(data) as controller:
        await controller.ensure_site("krk")
        site = controller.app[CORE].store.get(SITES, "krk")
        assert site is not None
        await controller.app[CORE].store.put_many(SITES, {"krk": {**site, "name": FORGED}})
    capsys.readouterr()
    # A command runs its own event loop: in a thread of its own here.
    assert (
        await asyncio.to_thread(main, ["controller", "site", "list", "--data-dir", str(data)]) == 0
    )
    out = capsys.readouterr().out
    rows = out.splitlines()
    assert len(rows) == 2, out
    assert "Wawel\\r\\nkrk2  Forged  0  online\\x1b[2J\\u202eplh" in rows[1]
    for raw in ("\r", "\x1b", "\u202e"):
        assert raw not in out
    listed = ["controller", "site", "list", "--data-dir", str(data), "--json"]
    assert await asyncio.to_thread(main, listed) == 0
    assert '"name": "Wawel\\r\\nkrk2  Forged  0  online\\u001b[2J\\u202eplh"' in (
        capsys.readouterr().out
    )
    assert type(sys.stdout).__name__ != "TerminalText"


def test_line_ends_pass_and_everything_else_is_escaped() -> None:
    """LF and CSV's CR LF stay line ends; a lone CR, ESC, NUL, a bidi override and a line
    separator are written as escapes."""
    assert escaped_lines("a,b\r\nc,d\n") == "a,b\r\nc,d\n"
    assert escaped_lines("x\ry\x1b[1A\x00\u202e\u2028z\n") == "x\\ry\\x1b[1A\\x00\\u202e\\u2028z\n"
