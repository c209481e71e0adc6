"""The audit log: every admin action with who, when, what and from where; append-only.

Recording an action is one line. In a request handler, who and where come from the request
(the bearer token's name and id, the client address; the OS user for the local control
socket)::

    from polyfleet.controller.api import audit

    await audit.record(request, "site.rename", f"site:{site_id}", {"name": [old, new]})
    await audit.record(request, "job.create", f"job:{job['id']}", {...}, site=job["site_id"])

Code with no request at hand (a CLI command working on the store while no server runs,
background work done on an admin's behalf) calls the service with an ``Actor`` and an
``Origin``::

    await app[CORE].audit.record(actor, origin, "assets.import", "assets", {"added": 12})

What goes in:

- ``action``: ``<object>.<verb>``, lowercase: ``token.create``, ``token.revoke``,
  ``agent.revoke``, ``invite.create``, ``site.add``, ``site.rename``, ``device.move``,
  ``device.room``, ``job.create``, ``job.cancel``, ``ticket.fill``, ``ticket.ack``...,
  ``assets.import``, ``rollout.start``... Filtering by ``token`` finds every ``token.*``.
- ``target``: what was acted on, ``<kind>:<id>`` (``device:X50-1``, ``token:3fa2c1d0e9b8``).
- ``details``: a small JSON object saying what changed (``{"name": ["old", "new"]}``), at
  most ``MAX_DETAILS_BYTES`` encoded (larger ones are cut and marked ``truncated``): give
  counts and the first few serials, not whole files. Never secrets: no token, enrollment
  code or password, not even in part.
- ``site``: the site the action concerns, when there is one (for ``?site=`` filters).

An entry (collection ``audit``, keyed by its zero-padded id) is written once and never
changed; nothing deletes one except retention, which drops entries older than
``[audit] retention_days`` at start and every hour. ``record`` returns once the entry is
durable. Read the log with ``GET /api/v1/audit`` or ``polyfleet controller audit``.
"""

from __future__ import annotations

import bisect
import getpass
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from polyfleet.controller.clock import Clock
from polyfleet.controller.store.base import Doc, Store

log = logging.getLogger(__name__)

AUDIT_ENTRIES = "audit"
#: Holds the last id given out, so ids are never reused after retention empties the log.
AUDIT_MARK = "audit_mark"
#: Largest encoded ``details`` kept whole.
MAX_DETAILS_BYTES = 4096
#: Entries one query answers: unless asked, and at most.
DEFAULT_PAGE = 100
MAX_PAGE = 1000
_KEY_WIDTH = 12


class AuditAction(StrEnum):
    """Every action the audit log records, ``<object>.<verb>``: spelled here once."""

    SITE_ADD = "site.add"
    SITE_UPDATE = "site.update"
    SITE_CONTACT = "site.contact"
    INVITE_CREATE = "invite.create"
    DEVICE_MOVE = "device.move"
    DEVICE_ROOM = "device.room"
    JOB_CREATE = "job.create"
    JOB_CANCEL = "job.cancel"
    TOKEN_CREATE = "token.create"  # noqa: S105  # an action name, not a secret
    TOKEN_REVOKE = "token.revoke"  # noqa: S105  # an action name, not a secret
    AGENT_ENROLL = "agent.enroll"
    AGENT_REVOKE = "agent.revoke"
    SIGNIN_LINK_CREATE = "signin_link.create"
    SESSION_SIGNIN = "session.signin"
    SESSION_SIGNOUT = "session.signout"
    ASSETS_IMPORT = "assets.import"
    RELEASE_PACKAGE = "release.package"
    ROLLOUT_PLAN = "rollout.plan"
    ROLLOUT_START = "rollout.start"
    ROLLOUT_PAUSE = "rollout.pause"
    ROLLOUT_RESUME = "rollout.resume"
    ROLLOUT_ABORT = "rollout.abort"
    ROLLOUT_HALT = "rollout.halt"
    ROLLOUT_PENALTY_RELEASE = "rollout.penalty_release"
    TICKET_OPEN = "ticket.open"
    MAINTENANCE_ADD = "maintenance.add"
    MAINTENANCE_END = "maintenance.end"
    TICKET_FILL = "ticket.fill"
    TICKET_SEND = "ticket.send"
    TICKET_ACK = "ticket.ack"
    TICKET_ACCEPT = "ticket.accept"
    TICKET_SHIPPED = "ticket.shipped"
    TICKET_RECEIVED = "ticket.received"
    TICKET_RETURNED = "ticket.returned"
    TICKET_CLOSE = "ticket.close"
    #: A new admin session on a unit from outside its site's admin networks (a security
    #: event the controller records from what an agent reported).
    ADMIN_SESSION_UNEXPECTED = "admin_session.unexpected"


@dataclass(frozen=True, kw_only=True)
class Actor:
    """Who acted: a token's name, its role and id; for local commands, the OS user."""

    name: str
    role: str
    token_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class Origin:
    """Where from: ``http`` (with the client address), ``control_socket`` (a CLI command
    through the running server) or ``local_store`` (a CLI command while no server ran)."""

    via: str
    address: str | None = None
    user: str | None = None
    pid: int | None = None


def local_user() -> str:
    """The name of the OS user running this process (its uid when it has no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def local_command() -> tuple[Actor, Origin]:
    """Actor and origin of an admin command run on this machine with no server running."""
    user = local_user()
    return Actor(name=user, role="admin"), Origin(via="local_store", user=user, pid=os.getpid())


def listed(items: Iterable[str], *, first: int = 20) -> dict[str, Any]:
    """A long list as audit details keep it: how many, and the first few."""
    items = list(items)
    return {"count": len(items), "first": items[:first]}


def _key(entry_id: int) -> str:
    return f"{entry_id:0{_KEY_WIDTH}d}"


def _bounded(details: Mapping[str, Any]) -> dict[str, Any]:
    encoded = json.dumps(details, ensure_ascii=False, sort_keys=True, default=str)
    if len(encoded.encode("utf-8")) <= MAX_DETAILS_BYTES:
        return dict(json.loads(encoded))
    # Cut on characters, so the text stays valid; the bytes may run a little over.
    return {"truncated": True, "text": encoded[: MAX_DETAILS_BYTES // 4]}


class InvalidAuditQuery(ValueError):
    """A filter or paging value is wrong; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def _moment(values: Mapping[str, str], name: str) -> datetime | None:
    text = values.get(name)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidAuditQuery(
            name,
            f"{name}: {text!r} is not an ISO 8601 moment with an offset "
            "(e.g. 2026-03-01T00:00:00+01:00)",
        )
    return moment


def _whole(values: Mapping[str, str], name: str, *, low: int) -> int | None:
    text = values.get(name)
    if not text:
        return None
    if not text.isdigit() or int(text) < low:
        raise InvalidAuditQuery(name, f"{name} must be an integer >= {low}, got {text!r}")
    return int(text)


@dataclass(frozen=True, kw_only=True)
class AuditQuery:
    """Filters and paging of ``AuditLog.query``; every filter is optional."""

    #: Exactly this action, or every action of this object (``token`` -> ``token.*``).
    action: str | None = None
    #: The actor's name or token id.
    actor: str | None = None
    target: str | None = None
    site: str | None = None
    #: Only entries at or after / before this moment.
    start: datetime | None = None
    end: datetime | None = None
    #: Newest first below this id (paging back), or oldest first above ``after`` (following).
    before: int | None = None
    after: int | None = None
    limit: int = DEFAULT_PAGE

    @classmethod
    def parse(cls, values: Mapping[str, str]) -> AuditQuery:
        """From query-string form: ``action, actor, target, site, from, to, before, after,
        limit``; ``InvalidAuditQuery`` names a bad one."""
        return cls(
            action=values.get("action") or None,
            actor=values.get("actor") or None,
            target=values.get("target") or None,
            site=values.get("site") or None,
            start=_moment(values, "from"),
            end=_moment(values, "to"),
            before=_whole(values, "before", low=0),
            after=_whole(values, "after", low=0),
            limit=min(_whole(values, "limit", low=1) or DEFAULT_PAGE, MAX_PAGE),
        )

    def matches(self, entry: Doc) -> bool:
        if self.action is not None:
            action = entry["action"]
            if action != self.action and not action.startswith(self.action + "."):
                return False
        if self.actor is not None and self.actor not in (
            entry["actor"]["name"],
            entry["actor"]["token_id"],
        ):
            return False
        if self.target is not None and entry["target"] != self.target:
            return False
        if self.site is not None and entry["site"] != self.site:
            return False
        if self.start is not None or self.end is not None:
            at = datetime.fromisoformat(entry["at"])
            if self.start is not None and at < self.start:
                return False
            if self.end is not None and at >= self.end:
                return False
        return True


class AuditLog:
    """Owns the ``audit`` collection: appends entries, answers queries, applies retention."""

    def __init__(self, store: Store, clock: Clock, *, retention_days: int) -> None:
        self._store = store
        self._clock = clock
        self.retention = timedelta(days=retention_days)
        #: Ids of the kept entries, ascending (ids only grow).
        self._ids: list[int] = []
        self._loaded = False

    def load(self) -> None:
        """Read the ids kept in the store (once it is open) and drop expired entries."""
        self._ids = sorted(int(key) for key in self._store.scan(AUDIT_ENTRIES))
        self._loaded = True
        self.prune()

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()

    async def record(
        self,
        actor: Actor,
        origin: Origin,
        action: AuditAction,
        target: str,
        details: Mapping[str, Any] | None = None,
        *,
        site: str | None = None,
    ) -> Doc:
        """Append one entry; returns it once durable."""
        self._ensure_loaded()
        entry_id = (self._ids[-1] + 1) if self._ids else self._next_after_restart()
        entry: Doc = {
            "id": entry_id,
            "at": self._clock().isoformat(),
            "action": str(action),
            "target": target,
            "site": site,
            "details": _bounded(details or {}),
            "actor": asdict(actor),
            "origin": asdict(origin),
        }
        seq = self._store.apply({AUDIT_ENTRIES: {_key(entry_id): entry}})
        # The id is taken before awaiting, so concurrent records never share one.
        self._ids.append(entry_id)
        await self._store.wait_durable(seq)
        log.info("audit: %s %s %s by %s via %s", entry_id, action, target, actor.name, origin.via)
        return entry

    def _next_after_restart(self) -> int:
        # With every entry pruned, ids continue from the high-water mark, never reused.
        meta = self._store.get(AUDIT_MARK, "last_id")
        return int(meta["id"]) + 1 if meta else 1

    def prune(self) -> int:
        """Drop entries older than the retention period; how many went."""
        self._ensure_loaded()
        cutoff = self._clock() - self.retention
        gone: list[str] = []
        for entry_id in self._ids:
            entry = self._store.get(AUDIT_ENTRIES, _key(entry_id))
            if entry is not None and datetime.fromisoformat(entry["at"]) >= cutoff:
                break
            gone.append(_key(entry_id))
        if not gone:
            return 0
        keep_mark = {AUDIT_MARK: {"last_id": {"id": self._ids[-1]}}}
        del self._ids[: len(gone)]
        self._store.apply(keep_mark, {AUDIT_ENTRIES: gone})
        log.info("audit: %d entries older than %s dropped", len(gone), cutoff.isoformat())
        return len(gone)

    def query(self, query: AuditQuery) -> tuple[list[Doc], bool]:
        """Matching entries (newest first, or oldest first with ``after``) and whether more."""
        self._ensure_loaded()
        found: list[Doc] = []
        for entry in self._walk(query):
            if query.matches(entry):
                if len(found) == query.limit:
                    return found, True
                found.append(entry)
        return found, False

    def _walk(self, query: AuditQuery) -> Iterator[Doc]:
        ids = self._ids
        if query.after is not None:
            start = bisect.bisect_right(ids, query.after)
            stop = len(ids) if query.before is None else bisect.bisect_left(ids, query.before)
            order: range = range(start, stop)
        else:
            top = len(ids) if query.before is None else bisect.bisect_left(ids, query.before)
            order = range(top - 1, -1, -1)
        for index in order:
            entry = self._store.get(AUDIT_ENTRIES, _key(ids[index]))
            if entry is not None:
                yield entry
