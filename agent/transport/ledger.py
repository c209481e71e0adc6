"""The REST sessions this agent holds open on units, kept on disk so a killed agent closes them.

Sessions left open have wedged real units' REST API until a power cycle. Every call logs
out as it ends; an agent killed mid-call (SIGKILL, a power cut of its host) cannot. So each
login is written down (``<data_dir>/device-sessions.json``) before the session is used, and
struck off at logout: what a new agent finds there was left open by the one before it, and
its next poll of that unit logs it out first (``DELETE /rest/session`` as that session).

The file holds session ids and XSRF tokens, credentials of the unit for as long as the
session lives: it is written owner-only, like the agent's own credential. It is written
without fsync: a killed process leaves the page cache behind, and a host that lost power
took the unit's sessions' clients with it either way (the unit expires them in time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from polyfleet.shared.durable import write_atomically
from polyfleet.shared.errors import os_error_words

log = logging.getLogger(__name__)

LEDGER_FILE = "device-sessions.json"
#: Sessions remembered at most (a site's agent holds one per unit it talks to at once).
MAX_ENTRIES = 4096


@dataclass(frozen=True)
class OpenSession:
    """One session an agent opened on a unit: where, its id and its XSRF token (4.6.2+)."""

    host: str
    port: int
    session_id: str
    xsrf: str | None = None


class SessionLedger:
    """The sessions open now (this run's) and those a previous run left open, per unit.

    ``opened`` and ``closed`` are awaited by the REST client around every session; writes
    of sessions opened and closed together are coalesced into one rewrite of the file.
    """

    def __init__(self, data_dir: Path | None) -> None:
        self.path = None if data_dir is None else data_dir / LEDGER_FILE
        self._open: dict[str, OpenSession] = {}
        self._left: dict[str, OpenSession] = self._read() if self.path is not None else {}
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None
        self._write_lock = threading.Lock()
        self._failing: str | None = None

    def _read(self) -> dict[str, OpenSession]:
        assert self.path is not None
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            words = os_error_words(exc) if isinstance(exc, OSError) else f"not JSON: {exc}"
            log.warning(
                "%s: unreadable (%s); sessions a crash left open expire on their own",
                self.path,
                words,
            )
            return {}
        found: dict[str, OpenSession] = {}
        for item in raw.get("sessions", []) if isinstance(raw, dict) else []:
            try:
                entry = OpenSession(
                    host=str(item["host"]),
                    port=int(item["port"]),
                    session_id=str(item["session_id"]),
                    xsrf=None if item.get("xsrf") is None else str(item["xsrf"]),
                )
            except (KeyError, TypeError, ValueError):
                continue
            if entry.session_id:
                found[entry.session_id] = entry
        return dict(list(found.items())[:MAX_ENTRIES])

    # --- what the REST client tells -------------------------------------------------------

    async def opened(self, entry: OpenSession) -> None:
        """A login succeeded: on disk before the session is used."""
        if len(self._open) < MAX_ENTRIES:
            self._open[entry.session_id] = entry
            await self._save()

    async def closed(self, session_id: str) -> None:
        """A session ended (logged out, or found gone): struck off."""
        had = self._open.pop(session_id, None) or self._left.pop(session_id, None)
        if had is not None:
            await self._save()

    def unclosed(self, session_id: str) -> None:
        """A logout the unit did not answer: the session is left for the next poll to end."""
        entry = self._open.pop(session_id, None)
        if entry is not None:
            self._left[session_id] = entry

    # --- what the driver asks -------------------------------------------------------------

    def left_open(self, host: str, port: int) -> list[OpenSession]:
        """Sessions an earlier run of the agent left open on this unit."""
        return [e for e in self._left.values() if e.host == host and e.port == port]

    def is_ours(self, session_id: str) -> bool:
        """Whether this agent opened the session (now, or in a run that did not close it)."""
        return session_id in self._open or session_id in self._left

    # --- the file ---------------------------------------------------------------------------

    async def _save(self) -> None:
        if self.path is None:
            return
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._write_all())
        await asyncio.shield(self._writer)

    async def _write_all(self) -> None:
        while self._dirty:
            await asyncio.sleep(0)  # sessions opened or closed in this tick share the write
            self._dirty = False
            entries = [asdict(e) for e in (*self._left.values(), *self._open.values())]
            try:
                await asyncio.to_thread(self._write, {"sessions": entries})
            except OSError as exc:
                reason = os_error_words(exc)
                if self._failing != reason:
                    log.error(
                        "cannot write %s (%s): sessions of a crash would stay open until the "
                        "units expire them",
                        self.path,
                        reason,
                    )
                self._failing = reason
                return
            self._failing = None

    def _write(self, doc: dict[str, Any]) -> None:
        assert self.path is not None
        with self._write_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, json.dumps(doc), sync=False)
