"""Who may open which page: the session cookie, role checks, CSRF, and security headers.

Pages are marked with ``@page(...)``; the API's bearer check lets them by (their endpoint
spec is PUBLIC and hidden from the API document) and ``page_middleware`` checks them
instead: a signed-in session, the role, a kiosk session kept to the kiosk, and on every
POST the session's CSRF token and a same-origin ``Origin``. Errors become HTML pages.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Protocol, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

from aiohttp import web
from aiohttp.web_urldispatcher import MatchInfoError
from multidict import MultiDict, MultiDictProxy

from polyfleet.controller.errors import Conflict, NotAllowed, Refused
from polyfleet.controller.features.caller import Caller
from polyfleet.controller.http.errors import Handler, kept_headers
from polyfleet.controller.http.spec import ADMINS, PUBLIC, READERS, endpoint
from polyfleet.controller.keys import CORE
from polyfleet.controller.services.access import Role
from polyfleet.controller.services.audit import Origin
from polyfleet.controller.services.web_sessions import WebSession
from polyfleet.controller.store.base import StoreUnavailable
from polyfleet.controller.web.keys import SESSION
from polyfleet.controller.web.render import render, translator

log = logging.getLogger(__name__)

SESSION_COOKIE = "polyfleet_session"
#: Login CSRF: a random value in a cookie and in the sign-in form must match.
SIGNIN_COOKIE = "polyfleet_signin"
SIGNIN_COOKIE_MAX_AGE_S = 3600
#: What the values of our own cookies look like (``secrets.token_urlsafe``).
_COOKIE_SECRET = re.compile(r"[A-Za-z0-9_\-]{1,128}")

#: Scripts, styles and images from this origin only; no frames, no plugins, no inline code.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Same-origin: addresses never leak to other sites, and forms still carry a real Origin
    # (with no-referrer, browsers send "Origin: null" on a form post).
    "Referrer-Policy": "same-origin",
}

_PAGE = "__polyfleet_page__"
HandlerT = TypeVar("HandlerT", bound=Handler)


@dataclass(frozen=True)
class PageSpec:
    """Who may open a page: ``roles`` (empty: anyone, signed in or not); ``kiosk``: a wall
    screen's session may open it too."""

    roles: frozenset[Role]
    kiosk: bool = False


def page(
    summary: str, *, roles: frozenset[Role] = READERS, kiosk: bool = False
) -> Callable[[HandlerT], HandlerT]:
    """Mark a dashboard handler: checked by ``page_middleware``, not by the bearer check."""

    def attach(handler: HandlerT) -> HandlerT:
        endpoint(summary=summary, roles=PUBLIC, hidden=True)(handler)
        setattr(handler, _PAGE, PageSpec(roles=roles, kiosk=kiosk))
        return handler

    return attach


@dataclass(frozen=True)
class UploadedFile:
    """A file sent with a form (``<input type=file>``)."""

    filename: str
    content: bytes
    content_type: str


FORM: web.RequestKey[MultiDictProxy[str | UploadedFile]] = web.RequestKey("web_form")


def secret_cookie(request: web.Request, name: str) -> str:
    """The value of one of our own cookies, or "" when it is absent or could not be ours.

    A browser sends every cookie of the host, other programs' on the same host included, and
    a client may send any bytes: only a value shaped like the secrets we hand out is looked
    up, so an odd cookie means "not signed in", never an error.
    """
    value = request.cookies.get(name, "")
    return value if _COOKIE_SECRET.fullmatch(value) else ""


def _unreadable_form(what: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=f"The form could not be read ({what}); send it again.")


async def form_of(request: web.Request) -> MultiDictProxy[str | UploadedFile]:
    """A POST's form fields (files as ``UploadedFile``), read once.

    The body is read whole before any handler (within its deadline), so a multipart form
    is parsed from those bytes rather than from the already consumed stream. A form that
    is not UTF-8 text (no browser sends one) is refused with 400, saying so.
    """
    if FORM in request:
        return request[FORM]
    fields: MultiDict[str | UploadedFile] = MultiDict()
    if request.content_type == "multipart/form-data":
        for name, value in _multipart_fields(request, await request.read()):
            fields.add(name, value)
    elif request.content_type == "application/x-www-form-urlencoded":
        raw = await request.read()
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            raise _unreadable_form("it is not UTF-8 text") from None
        for name, value in pairs:
            fields.add(name, value)
    proxy = MultiDictProxy(fields)
    request[FORM] = proxy
    return proxy


def _multipart_fields(request: web.Request, raw: bytes) -> list[tuple[str, str | UploadedFile]]:
    """The fields of a ``multipart/form-data`` body (files as ``UploadedFile``)."""
    content_type = request.headers.get("Content-Type", "")
    # Bytes a client sent that are not UTF-8 come back as they were, for the parser to judge.
    head = f"Content-Type: {content_type}\r\n\r\n".encode("utf-8", "surrogateescape")
    message = BytesParser(policy=HTTP).parsebytes(head + raw)
    found: list[tuple[str, str | UploadedFile]] = []
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        content = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            found.append((name, UploadedFile(filename, content, part.get_content_type())))
            continue
        try:
            found.append((name, content.decode(part.get_content_charset() or "utf-8")))
        except (LookupError, UnicodeDecodeError):
            raise _unreadable_form(f"field {name!r} is not UTF-8 text") from None
    return found


def dashboard_caller(request: web.Request, session: WebSession | None = None) -> Caller:
    """The signed-in browser as a use case's caller (or ``session``'s, for a sign-in that has
    only just made one); its actions are audited ``via`` the dashboard."""
    acting = session or request[SESSION]
    if acting is None:
        raise NotAllowed("sign in first")
    origin = Origin(via="http", address=request.remote)
    return Caller.of(acting.principal, origin, via="dashboard")


def admin_forms(request: web.Request) -> bool:
    """Whether a page shows its admin forms: only to whom the handlers they post to admit
    (``roles=ADMINS``)."""
    session = request[SESSION]
    return session is not None and session.principal.role in ADMINS


class ItemPage(Protocol):
    """The page of one item (a rollout, a ticket), asking to confirm or saying why not."""

    def __call__(
        self,
        request: web.Request,
        key: str,
        /,
        *,
        error: str | None = None,
        confirm: str | None = None,
        status: int = 200,
    ) -> web.Response: ...


def button_state(
    request: web.Request, *, error: str | None, confirm: str | None
) -> dict[str, object]:
    """What an item's page shows of its buttons (``act_from_page``): the question, the
    refusal or what was done. It does not refresh itself while it asks or refuses, so the
    question or the reason stays on screen."""
    return {
        "live": error is None and confirm is None,
        "error": error,
        "confirm": confirm,
        "done": request.query.get("done"),
    }


async def act_from_page(
    request: web.Request,
    item_page: ItemPage,
    key: str,
    verb: str,
    act: Callable[[], Awaitable[object]],
    *,
    ask_first: bool = False,
    shown: tuple[type[Refused], ...] = (Conflict,),
) -> web.StreamResponse:
    """A button on an item's page: ``act``, then back to that page (the path above the one
    posted to) saying it is done (``?done=verb``).

    ``ask_first``: without JavaScript nobody asked yet, so the page asks and its answer posts
    again with ``confirmed=1``. A refusal in ``shown`` (what the item's status allows now)
    is shown on the item's own page, beside the buttons; any other goes to the error page.
    """
    form = await form_of(request)
    if ask_first and form.get("confirmed") != "1":
        return item_page(request, key, confirm=verb)
    try:
        await act()
    except shown as exc:
        return item_page(request, key, error=exc.message, status=exc.status)
    raise web.HTTPSeeOther(f"{request.path.rsplit('/', 1)[0]}?done={verb}")


def page_spec(handler: object) -> PageSpec | None:
    found = getattr(handler, _PAGE, None)
    return found if isinstance(found, PageSpec) else None


def set_session_cookie(response: web.StreamResponse, value: str, max_age_s: int) -> None:
    # Secure: browsers keep it over HTTPS and on loopback addresses only, which is the point.
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=max_age_s,
        path="/",
        secure=True,
        httponly=True,
        samesite="Lax",
    )


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Lax")


def signin_nonce(request: web.Request, response_cookies: dict[str, str]) -> str:
    """The login-CSRF value for a sign-in form (reused from its cookie, else a new one)."""
    value = secret_cookie(request, SIGNIN_COOKIE) or secrets.token_urlsafe(24)
    response_cookies[SIGNIN_COOKIE] = value
    return value


def set_signin_cookie(response: web.StreamResponse, value: str) -> None:
    response.set_cookie(
        SIGNIN_COOKIE,
        value,
        max_age=SIGNIN_COOKIE_MAX_AGE_S,
        path="/",
        secure=True,
        httponly=True,
        samesite="Strict",
    )


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a path on this site only (never another host)."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target:
        return "/"
    return target


def _same_origin(request: web.Request) -> bool:
    """A POST's ``Origin`` (sent by every current browser) names this very host."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        # No Origin (old browsers, some privacy settings): the CSRF token alone decides.
        return origin is None
    return urlsplit(origin).netloc == request.host


def _browser_page(request: web.Request) -> bool:
    """A browser asking for a page (not the API, metrics or a script)."""
    path = request.path
    if path.startswith(("/api/", "/metrics")):
        return False
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


def _to_signin(request: web.Request) -> web.StreamResponse:
    target = "/signin?next=" + quote(request.path_qs if request.method == "GET" else "/", safe="")
    if request.headers.get("HX-Request") == "true":
        # A live update of an expired session: the browser goes to the sign-in page whole.
        return web.Response(status=401, headers={"HX-Redirect": target})
    raise web.HTTPSeeOther(target)


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    t = translator(request)
    titles = {
        400: t.gettext("Bad request"),
        403: t.gettext("Not allowed"),
        404: t.gettext("Not found"),
        409: t.gettext("Not possible now"),
        503: t.gettext("Temporarily unavailable"),
    }
    title = titles.get(status, t.gettext("Something went wrong"))
    return render(request, "error.html", {"title": title, "message": message}, status=status)


@web.middleware
async def page_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    match = request.match_info
    if isinstance(match, MatchInfoError):
        if match.http_exception.status == 404 and _browser_page(request):
            # A mistyped dashboard address gets a page, not the API's JSON.
            request[SESSION] = request.app[CORE].sessions.find(
                secret_cookie(request, SESSION_COOKIE)
            )
            response: web.StreamResponse = error_page(
                request, 404, translator(request).gettext("There is no such page.")
            )
            response.headers.update(SECURITY_HEADERS)
            return response
        return await handler(request)
    spec = page_spec(match.handler)
    if spec is None:
        return await handler(request)
    response = await _guarded(request, handler, spec)
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


async def _guarded(request: web.Request, handler: Handler, spec: PageSpec) -> web.StreamResponse:
    t = translator(request)
    try:
        session = request.app[CORE].sessions.find(secret_cookie(request, SESSION_COOKIE))
        request[SESSION] = session
        if spec.roles:
            if session is None:
                return _to_signin(request)
            if session.kiosk and not spec.kiosk:
                raise web.HTTPSeeOther("/kiosk")
            if session.principal.role not in spec.roles:
                log.warning(
                    "refused %s %s to %s (%s)",
                    request.method,
                    request.path,
                    session.principal.name or session.principal.token_id,
                    session.principal.role.value,
                )
                message = (
                    t.gettext("Viewers can look but not change anything.")
                    if session.principal.role is Role.VIEWER
                    else t.gettext("This page is not for your role.")
                )
                return error_page(request, 403, message)
            if request.method == "POST":
                form = await form_of(request)
                token = form.get("csrf")
                if not (
                    _same_origin(request)
                    and isinstance(token, str)
                    and request.app[CORE].sessions.csrf_ok(session, token)
                ):
                    forged = t.gettext("The form had expired or came from another site; try again.")
                    return error_page(request, 403, forged)
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        page = error_page(request, exc.status, exc.text or exc.reason)
        page.headers.update(kept_headers(exc))
        return page
    except Refused as exc:
        return error_page(request, exc.status, t.refusal(exc))
    except StoreUnavailable:
        log.error("refusing %s %s: store unavailable", request.method, request.path)
        return error_page(request, 503, t.gettext("Storage failed; restart the controller."))
