"""Stored timestamps: ISO 8601 texts with offsets, put in order without a clock."""

from __future__ import annotations

from datetime import datetime


def earlier(text: str, other: str) -> bool:
    """Whether the time in ``text`` is before the one in ``other`` (ISO 8601 texts with offsets).

    Stored times are mostly pydantic's JSON form, UTC with ``Z``: two such texts of one length
    compare as strings, which spares two parses per report on the ingest path; anything else
    is parsed.
    """
    if len(text) == len(other) and text[-1] == "Z" and other[-1] == "Z":
        return text < other
    return datetime.fromisoformat(text) < datetime.fromisoformat(other)
