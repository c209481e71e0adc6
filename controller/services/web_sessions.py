"""Dashboard sign-in: cookie sessions and one-time sign-in links; only their digests are stored.

A session is made from an admin or viewer API token and remembers the token's digest, not
the token: every request looks the token up again, so revoking it ends its sessions at once.
A session expires at a fixed time (no sliding renewal); a *kiosk* session (a wall screen,
viewer tokens only) lasts longer and may open the kiosk page alone.

A sign-in link carries a one-time code for one token: it is redeemed by a form post (so a
link preview or a proxy that fetches the address spends nothing), works once, and expires
within minutes. The token itself never appears in an address.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from polyfleet.controller.clock import Clock
from polyfleet.controller.services.access import AccessService, Principal, Role, token_digest
from polyfleet.controller.settings.web import (
    DEFAULT_KIOSK_SESSION_TTL_S,
    DEFAULT_LINK_TTL_S,
    DEFAULT_SESSION_TTL_S,
)
from polyfleet.controller.store.base import Doc, Store

#: Store collections (documents keyed by the sha256 of the secret).
SESSIONS = "web_sessions"
SIGNIN_LINKS = "web_signin_links"


class SignInRefused(Exception):
    """The token or link does not sign anyone in; ``reason`` says why, the message in words.

    Reasons: ``unknown_token``, ``agent_token``, ``admin_kiosk``, ``link_used``,
    ``link_expired``, ``no_such_token``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class WebSession:
    """A signed-in browser: who, until when, and the token its forms must carry (CSRF)."""

    key: str
    principal: Principal
    csrf: str
    kiosk: bool
    created_at: datetime
    expires_at: datetime


class SessionService:
    """Creates, finds and ends dashboard sessions and sign-in links."""

    def __init__(
        self,
        store: Store,
        access: AccessService,
        clock: Clock,
        *,
        session_ttl_s: int = DEFAULT_SESSION_TTL_S,
        kiosk_session_ttl_s: int = DEFAULT_KIOSK_SESSION_TTL_S,
        link_ttl_s: int = DEFAULT_LINK_TTL_S,
    ) -> None:
        self._store = store
        self._access = access
        self._clock = clock
        self.session_ttl = timedelta(seconds=session_ttl_s)
        self.kiosk_session_ttl = timedelta(seconds=kiosk_session_ttl_s)
        self.link_ttl = timedelta(seconds=link_ttl_s)

    # -- sessions ------------------------------------------------------------------------

    async def sign_in(self, token: str, *, kiosk: bool = False) -> tuple[str, WebSession]:
        """A new session for an admin or viewer token: (the cookie value, the session)."""
        digest = token_digest(token.strip())
        if self._access.principal_of(digest) is None:
            if self._access.expired(digest):
                raise SignInRefused("token_expired", "the token has expired")
            raise SignInRefused("unknown_token", "unknown or revoked token")
        return await self._start(digest, kiosk=kiosk)

    async def _start(self, digest: str, *, kiosk: bool) -> tuple[str, WebSession]:
        principal = self._access.principal_of(digest)
        if principal is None:
            raise SignInRefused("unknown_token", "unknown or revoked token")
        if principal.role not in (Role.ADMIN, Role.VIEWER):
            raise SignInRefused("agent_token", "agent credentials cannot sign in to the dashboard")
        if kiosk and principal.role is not Role.VIEWER:
            raise SignInRefused(
                "admin_kiosk", "a wall screen signs in with a viewer token, never an admin one"
            )
        self._access.note_use(digest)
        secret = secrets.token_urlsafe(32)
        now = self._clock()
        ttl = self.kiosk_session_ttl if kiosk else self.session_ttl
        doc: Doc = {
            "token_sha256": digest,
            "token_id": principal.token_id,
            "csrf": secrets.token_urlsafe(32),
            "kiosk": kiosk,
            "created_at": now.isoformat(),
            "expires_at": (now + ttl).isoformat(),
        }
        key = token_digest(secret)
        await self._store.put_many(SESSIONS, {key: doc})
        return secret, self._session(key, doc, principal)

    def find(self, secret: str) -> WebSession | None:
        """The live session of a cookie value; None when unknown, expired or its token revoked."""
        if not secret:
            return None
        key = token_digest(secret)
        doc = self._store.get(SESSIONS, key)
        if doc is None or datetime.fromisoformat(doc["expires_at"]) <= self._clock():
            return None
        digest = str(doc["token_sha256"])
        principal = self._access.principal_of(digest)
        if principal is None:
            return None
        self._access.note_use(digest)
        return self._session(key, doc, principal)

    async def sign_out(self, session: WebSession) -> None:
        await self._store.delete(SESSIONS, session.key)

    @staticmethod
    def _session(key: str, doc: Doc, principal: Principal) -> WebSession:
        return WebSession(
            key=key,
            principal=principal,
            csrf=str(doc["csrf"]),
            kiosk=bool(doc.get("kiosk", False)),
            created_at=datetime.fromisoformat(doc["created_at"]),
            expires_at=datetime.fromisoformat(doc["expires_at"]),
        )

    @staticmethod
    def csrf_ok(session: WebSession, given: str | None) -> bool:
        """Whether a form carried this session's CSRF token (compared in constant time)."""
        return given is not None and hmac.compare_digest(session.csrf, given)

    # -- one-time links --------------------------------------------------------------------

    async def create_link(self, token_id: str) -> tuple[str, datetime]:
        """A one-time sign-in code for the admin or viewer token ``token_id`` and its expiry."""
        digest = self._access.digest_of(token_id)
        if digest is None:
            raise SignInRefused("no_such_token", f"no admin or viewer token {token_id!r}")
        code = secrets.token_urlsafe(24)
        expires = self._clock() + self.link_ttl
        doc: Doc = {"token_sha256": digest, "expires_at": expires.isoformat()}
        await self._store.put_many(SIGNIN_LINKS, {token_digest(code): doc})
        return code, expires

    def link_principal(self, code: str) -> Principal | None:
        """Who a still valid link would sign in (shown before it is used), or None."""
        doc = self._store.get(SIGNIN_LINKS, token_digest(code)) if code else None
        if doc is None or datetime.fromisoformat(doc["expires_at"]) <= self._clock():
            return None
        return self._access.principal_of(str(doc["token_sha256"]))

    async def redeem_link(self, code: str) -> tuple[str, WebSession]:
        """Spend a link: a new session, or SignInRefused when it was used, expired or unknown."""
        key = token_digest(code) if code else ""
        doc = self._store.get(SIGNIN_LINKS, key) if key else None
        if doc is None:
            raise SignInRefused("link_used", "this sign-in link was used already or never existed")
        # Spent before anything else: no await between the read and the delete, so two
        # requests with one code cannot both get past this point.
        spent = self._store.apply({}, {SIGNIN_LINKS: [key]})
        if datetime.fromisoformat(doc["expires_at"]) <= self._clock():
            await self._store.wait_durable(spent)
            raise SignInRefused("link_expired", "this sign-in link has expired; ask for a new one")
        await self._store.wait_durable(spent)
        return await self._start(str(doc["token_sha256"]), kiosk=False)

    # -- housekeeping ------------------------------------------------------------------------

    async def prune(self) -> int:
        """Forget expired sessions and links, and those whose token is gone; how many."""
        now = self._clock()
        doomed: dict[str, list[str]] = {}
        for collection in (SESSIONS, SIGNIN_LINKS):
            for key, doc in list(self._store.scan(collection).items()):
                expired = datetime.fromisoformat(doc["expires_at"]) <= now
                if expired or self._access.principal_of(str(doc["token_sha256"])) is None:
                    doomed.setdefault(collection, []).append(key)
        if doomed:
            await self._store.wait_durable(self._store.apply({}, doomed))
        return sum(len(keys) for keys in doomed.values())
