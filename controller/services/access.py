"""API tokens, agent enrollment codes and agent credentials; only their sha256 is ever stored."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from polyfleet.controller.clock import Clock
from polyfleet.controller.errors import Conflict, Invalid, NotAllowed, NotFound
from polyfleet.controller.events import AgentEnrolled, EventBus
from polyfleet.controller.store.base import INVITES, TOKENS, Doc, Store, StoreUnavailable
from polyfleet.shared.schema import EnrollResponse

TOKEN_PREFIX = "pft_"  # noqa: S105 - a visible prefix, not a secret
AGENT_TOKEN_PREFIX = "pfa_"  # noqa: S105 - a visible prefix, not a secret
#: A token's last use is written to its record at most this often (every use is in memory).
LAST_USED_WRITE = timedelta(seconds=60)


class Role(StrEnum):
    ADMIN = "admin"
    VIEWER = "viewer"
    AGENT = "agent"


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who is calling: an admin or viewer token, an agent, or the local control socket."""

    role: Role
    name: str
    token_id: str
    agent_id: str | None = None
    site_id: str | None = None


#: The principal of the local control socket (file permissions guard it, like a root socket).
LOCAL_ADMIN = Principal(role=Role.ADMIN, name="local control socket", token_id="local")  # noqa: S106


class EnrollmentRefused(NotAllowed):
    """The enrollment code is unknown, used already, or expired."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="enrollment_refused", field="code")


class UnknownToken(NotFound, KeyError):
    """No API token with that id; when the id is an agent's credential, says how to revoke it."""

    def __init__(self, token_id: str, agent: Doc | None = None) -> None:
        if agent is not None:
            agent_id, site_id = agent["id"], agent["site_id"]
            message = (
                f"{token_id!r} is not an API token but the credential of agent {agent_id} "
                f"of site {site_id}: revoke the agent instead (DELETE /api/v1/agents/{agent_id}, "
                f"polyfleet controller agent revoke {agent_id})"
            )
        else:
            message = f"no API token {token_id!r}"
        super().__init__(message, field="token_id")
        self.token_id = token_id
        self.agent = agent


class UnknownAgent(NotFound, KeyError):
    def __init__(self, agent_id: str) -> None:
        super().__init__(f"no agent {agent_id!r}", field="agent_id")
        self.agent_id = agent_id


class LastAdminToken(Conflict):
    """Revoking this token would leave no admin token that works."""

    def __init__(self, token_id: str) -> None:
        super().__init__(
            f"token {token_id} is the last admin token that works: revoking it would leave "
            "nobody able to administer over the API; create another admin token first "
            "(polyfleet controller token create --role admin)",
            code="last_admin_token",
            field="token_id",
        )
        self.token_id = token_id


class BadExpiry(Invalid, ValueError):
    """A token's expiry that is not in the future."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="expires_at")


class UnknownSite(NotFound, KeyError):
    """No site with that id."""

    def __init__(self, site_id: str) -> None:
        super().__init__(
            f"no site {site_id!r}; add it with: polyfleet controller site add",
            field="site",
            template="no site {site}; add it with: polyfleet controller site add",
            params={"site": repr(site_id)},
        )
        self.site_id = site_id


def token_digest(token: str) -> str:
    """The stored form of a secret: sha256 hex (the secrets are high-entropy random).

    Any text has a digest: a header or cookie holding bytes that are not UTF-8 reaches here as
    text with lone surrogates, which matches no secret and must not fail to encode.
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def normalise_code(code: str) -> str:
    """Enrollment codes are typed by people: ignore case, dashes and spaces."""
    return code.replace("-", "").replace(" ", "").upper()


class Fleet(Protocol):
    """What access asks of the owner of sites and agents (``Inventory``): an agent is
    stored, and removed, in one change with its credential."""

    def has_site(self, site_id: str) -> bool: ...

    def agent(self, agent_id: str) -> Doc | None: ...

    def agents(self, site_id: str | None = None) -> list[Doc]: ...

    def add_agent(
        self,
        agent: Doc,
        *,
        together: Mapping[str, Mapping[str, Doc]],
        gone: Mapping[str, Iterable[str]],
    ) -> int: ...

    def remove_agent(self, agent_id: str, *, gone: Mapping[str, Iterable[str]]) -> int: ...


class AccessService:
    """Creates and checks credentials. Plain secrets are returned once and never stored.

    Owns ``tokens`` and ``invites``; the agents themselves are the ``fleet``'s.
    """

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        clock: Clock,
        *,
        fleet: Fleet,
        code_ttl_s: int,
        poll_interval_s: int,
    ) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._fleet = fleet
        self._code_ttl = timedelta(seconds=code_ttl_s)
        self._poll_interval_s = poll_interval_s
        #: When each token was last used, as seen by this process (digest -> time); written to
        #: its record at most every ``LAST_USED_WRITE``, so use costs no write per request.
        self._used: dict[str, datetime] = {}

    def authenticate(self, token: str) -> Principal | None:
        """The principal owning ``token``, or None (unknown, revoked or expired); a use."""
        digest = token_digest(token)
        found = self.principal_of(digest)
        if found is not None:
            self.note_use(digest)
        return found

    def refusal(self, token: str) -> str:
        """Why ``token`` is refused, in words (never the token itself)."""
        digest = token_digest(token)
        if self.expired(digest):
            doc = self._store.get(TOKENS, digest) or {}
            return (
                f"token {doc.get('id')} expired at {doc.get('expires_at')}; "
                "create a new one with: polyfleet controller token create"
            )
        return "unknown or revoked bearer token"

    def expired(self, digest: str) -> bool:
        """The token with this digest exists but its expiry has passed."""
        doc = self._store.get(TOKENS, digest)
        return doc is not None and _expired(doc, self._clock())

    def principal_of(self, digest: str) -> Principal | None:
        """The principal of the stored token with this digest (a dashboard session keeps only
        the digest, so revoking the token ends its sessions), or None. Only a look: a use is
        counted by ``authenticate`` and ``note_use``."""
        doc = self._store.get(TOKENS, digest)
        # The lookup is by digest; comparing again in constant time keeps timing flat anyway.
        if doc is None or not hmac.compare_digest(str(doc.get("sha256", "")), digest):
            return None
        if _expired(doc, self._clock()):
            return None
        return Principal(
            role=Role(doc["role"]),
            name=str(doc.get("name", "")),
            token_id=str(doc["id"]),
            agent_id=doc.get("agent_id"),
            site_id=doc.get("site_id"),
        )

    def note_use(self, digest: str) -> None:
        """The token with this digest was just used (a request, a dashboard page)."""
        doc = self._store.get(TOKENS, digest)
        if doc is None:
            return
        now = self._clock()
        self._used[digest] = now
        stored = doc.get("last_used_at")
        if stored is not None and now - datetime.fromisoformat(stored) < LAST_USED_WRITE:
            return
        # Not waited for: a lost last-used time is no loss; the record is the one just read
        # (no await since), so a revoke cannot be undone by it. A failing store says so
        # elsewhere; the time stays in memory meanwhile.
        with contextlib.suppress(StoreUnavailable):
            self._store.apply({TOKENS: {digest: {**doc, "last_used_at": now.isoformat()}}})

    def last_used(self, digest: str, doc: Doc) -> str | None:
        """When the token was last used: this process's memory, else its record."""
        seen = self._used.get(digest)
        return seen.isoformat() if seen is not None else doc.get("last_used_at")

    async def create_token(
        self, role: Role, name: str = "", *, expires_at: datetime | None = None
    ) -> tuple[str, Doc]:
        """A new admin or viewer token: (the secret, to show once; its stored record)."""
        if role is Role.AGENT:
            raise ValueError("agent credentials come from enrollment, not token create")
        now = self._clock()
        if expires_at is not None and expires_at <= now:
            raise BadExpiry(
                f"the expiry {expires_at.isoformat()} is not in the future "
                f"(now {now.isoformat(timespec='seconds')})"
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_digest(token)
        doc: Doc = {
            "id": digest[:12],
            "sha256": digest,
            "role": role.value,
            "name": name,
            "created_at": now.isoformat(),
        }
        if expires_at is not None:
            doc["expires_at"] = expires_at.isoformat()
        await self._store.put_many(TOKENS, {digest: doc})
        return token, self._public_token(digest, doc)

    def _public_token(self, digest: str, doc: Doc) -> dict[str, Any]:
        return {
            **public_token(doc),
            "expires_at": doc.get("expires_at"),
            "expired": _expired(doc, self._clock()),
            "last_used_at": self.last_used(digest, doc),
        }

    def digest_of(self, token_id: str) -> str | None:
        """The digest of the admin or viewer token with this id, or None."""
        for digest, doc in self._store.scan(TOKENS).items():
            if doc["id"] == token_id and doc["role"] in (Role.ADMIN.value, Role.VIEWER.value):
                return digest
        return None

    def list_tokens(self) -> list[Doc]:
        """API tokens (admin and viewer), oldest first; agent credentials are ``list_agents``."""
        return sorted(
            (
                self._public_token(digest, doc)
                for digest, doc in self._store.scan(TOKENS).items()
                if doc["role"] != Role.AGENT.value
            ),
            key=lambda doc: (str(doc["created_at"]), str(doc["id"])),
        )

    def _find_token(self, token_id: str) -> tuple[str, Doc] | None:
        for digest, doc in self._store.scan(TOKENS).items():
            if doc["id"] == token_id:
                return digest, doc
        return None

    async def revoke_token(self, token_id: str) -> Doc:
        """Remove an API token; its record as it was. Refuses an agent's credential
        (``UnknownToken`` naming the agent) and the last admin token (``LastAdminToken``)."""
        found = self._find_token(token_id)
        if found is None:
            raise UnknownToken(token_id)
        digest, doc = found
        if doc["role"] == Role.AGENT.value:
            raise UnknownToken(token_id, self._fleet.agent(str(doc.get("agent_id"))))
        if doc["role"] == Role.ADMIN.value and not self._other_admin(digest):
            raise LastAdminToken(token_id)
        # Checked and removed with no await in between: two revokes cannot both pass the check.
        await self._store.wait_durable(self._store.apply({}, {TOKENS: [digest]}))
        self._used.pop(digest, None)
        return self._public_token(digest, doc)

    def _other_admin(self, digest: str) -> bool:
        """Another admin token exists that still works (not expired)."""
        now = self._clock()
        return any(
            doc["role"] == Role.ADMIN.value and key != digest and not _expired(doc, now)
            for key, doc in self._store.scan(TOKENS).items()
        )

    def list_agents(self, site_id: str | None = None) -> list[Doc]:
        """Enrolled agents (of one site), by site then enrollment time."""
        agents = [public_agent(doc) for doc in self._fleet.agents(site_id)]
        return sorted(agents, key=lambda doc: (doc["site_id"], doc["enrolled_at"], doc["id"]))

    async def revoke_agent(self, agent_id: str) -> Doc:
        """Remove an agent and its credential (its next call is refused); its record as it was."""
        agent = self._fleet.agent(agent_id)
        if agent is None:
            raise UnknownAgent(agent_id)
        credentials = [
            digest
            for digest, doc in self._store.scan(TOKENS).items()
            if doc.get("agent_id") == agent_id
        ]
        await self._store.wait_durable(
            self._fleet.remove_agent(agent_id, gone={TOKENS: credentials})
        )
        return public_agent(agent)

    async def create_invite(self, site_id: str) -> tuple[str, datetime]:
        """A one-time enrollment code for ``site_id``'s agent and when it expires."""
        if not self._fleet.has_site(site_id):
            raise UnknownSite(site_id)
        raw = base64.b32encode(secrets.token_bytes(10)).decode("ascii")
        code = "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))
        now = self._clock()
        expires = now + self._code_ttl
        doc = {"site_id": site_id, "created_at": now.isoformat(), "expires_at": expires.isoformat()}
        await self._store.put_many(INVITES, {token_digest(normalise_code(code)): doc})
        return code, expires

    async def enroll(self, code: str, *, agent_name: str, hostname: str) -> EnrollResponse:
        """Exchange a code for an agent credential; the code is consumed."""
        key = token_digest(normalise_code(code))
        invite = self._store.get(INVITES, key)
        now = self._clock()
        if invite is None:
            raise EnrollmentRefused("unknown or already used enrollment code")
        if _expired(invite, now):
            await self._store.delete(INVITES, key)
            raise EnrollmentRefused(
                "enrollment code expired; create a new one with `polyfleet controller agent invite`"
            )
        site_id = str(invite["site_id"])
        agent_id = "agt_" + secrets.token_hex(6)
        token = AGENT_TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_digest(token)
        agent: Doc = {
            "id": agent_id,
            "site_id": site_id,
            "name": agent_name,
            "hostname": hostname,
            "enrolled_at": now.isoformat(),
            "last_seen": now.isoformat(),
            "token_id": digest[:12],
        }
        credential: Doc = {
            "id": digest[:12],
            "sha256": digest,
            "role": Role.AGENT.value,
            "name": agent_name or agent_id,
            "agent_id": agent_id,
            "site_id": site_id,
            "created_at": now.isoformat(),
        }
        event = AgentEnrolled(
            at=now, site_id=site_id, agent_id=agent_id, agent_name=agent_name, hostname=hostname
        )
        event_puts, event_deletes = self._bus.record([event])
        # One commit: the code is gone exactly when the credential exists.
        seq = self._fleet.add_agent(
            agent,
            together={TOKENS: {digest: credential}, **event_puts},
            gone={INVITES: [key], **event_deletes},
        )
        await self._store.wait_durable(seq)
        self._bus.dispatch([event])
        return EnrollResponse(
            agent_id=agent_id, site_id=site_id, token=token, poll_interval_s=self._poll_interval_s
        )


def _expired(doc: Doc, now: datetime) -> bool:
    """A record (token, invite) whose expiry, if it has one, has passed at ``now``."""
    expires = doc.get("expires_at")
    return expires is not None and datetime.fromisoformat(expires) <= now


def public_token(doc: Doc) -> dict[str, Any]:
    """A token record without its digest."""
    return {key: doc[key] for key in ("id", "role", "name", "created_at") if key in doc}


def public_agent(doc: Doc) -> dict[str, Any]:
    """An agent as the admin API lists it (``token_id`` names its credential, never the secret)."""
    return {
        "id": doc["id"],
        "site_id": doc["site_id"],
        "name": doc.get("name", ""),
        "hostname": doc.get("hostname", ""),
        "enrolled_at": doc["enrolled_at"],
        "last_seen": doc.get("last_seen"),
        "token_id": doc.get("token_id"),
        # Set by ingestion when its reports come from the future (see Inventory).
        "clock": doc.get("clock") or {"state": "ok", "skew_s": None, "since": None},
    }
