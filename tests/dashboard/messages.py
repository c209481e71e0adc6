"""Every English text the dashboard shows, found in its templates and modules."""

from __future__ import annotations

import re
from pathlib import Path

from polyfleet.controller.web import i18n
from polyfleet.controller.web.words import WORDS

WEB = Path(i18n.__file__).resolve().parent
_STRING = r'"((?:[^"\\]|\\.)*)"|\'((?:[^\'\\]|\\.)*)\''
#: ``_("...")``, ``t.gettext("...")`` and the singular of ``ngettext("...", "...", n)``.
_CALL = re.compile(r"(?:\b_|\bgettext|\bngettext)\(\s*(?:" + _STRING + r")", re.S)
#: Texts shown as values: a ticket note's ``pending`` delivery state.
VALUES = ("pending",)


def messages() -> set[str]:
    found: set[str] = set(VALUES)
    found |= {english for words in WORDS.values() for english in words.values()}
    for path in [*WEB.glob("templates/*.html"), *WEB.glob("*.py")]:
        for match in _CALL.finditer(path.read_text(encoding="utf-8")):
            text = match.group(1) if match.group(1) is not None else match.group(2)
            found.add(text.encode().decode("unicode_escape").encode("latin-1").decode("utf-8"))
    return found
