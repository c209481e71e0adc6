"""Signing in (with an API token or a one-time link) and out; the API that makes such links."""

from __future__ import annotations

import hmac
import logging
import secrets

from aiohttp import web

from polyfleet.controller.features.access import SIGNIN_LINK_PATH
from polyfleet.controller.features.caller import record
from polyfleet.controller.http.errors import ApiError
from polyfleet.controller.http.spec import PUBLIC, READERS
from polyfleet.controller.http.throttle import AUTH_LIMITER, client_address
from polyfleet.controller.keys import CORE
from polyfleet.controller.services.audit import AuditAction
from polyfleet.controller.services.web_sessions import SignInRefused, WebSession
from polyfleet.controller.web.keys import SESSION
from polyfleet.controller.web.render import render, translator
from polyfleet.controller.web.security import (
    SIGNIN_COOKIE,
    clear_session_cookie,
    dashboard_caller,
    form_of,
    page,
    safe_next,
    secret_cookie,
    set_session_cookie,
    set_signin_cookie,
)

log = logging.getLogger(__name__)


def _nonce(request: web.Request) -> str:
    return secret_cookie(request, SIGNIN_COOKIE) or secrets.token_urlsafe(24)


def _nonce_ok(request: web.Request, given: object) -> bool:
    expected = secret_cookie(request, SIGNIN_COOKIE)
    # compare_digest takes ASCII text only; any other text is simply not the nonce.
    return (
        isinstance(given, str)
        and given.isascii()
        and bool(expected)
        and hmac.compare_digest(expected, given)
    )


def _expired_form(request: web.Request, nonce: object) -> web.Response | None:
    """The sign-in form again, saying it expired, when a posted form's nonce is not the one
    this browser was given (none when it is)."""
    if _nonce_ok(request, nonce):
        return None
    t = translator(request)
    return _signin_form(
        request, error=t.gettext("The sign-in form had expired; please try again."), status=403
    )


def _signin_form(
    request: web.Request, *, error: str | None = None, status: int = 200
) -> web.Response:
    nonce = _nonce(request)
    response = render(
        request,
        "signin.html",
        {
            "error": error,
            "nonce": nonce,
            "next": safe_next(request.query.get("next")),
            "plain_http": _plain_http_elsewhere(request),
        },
        status=status,
    )
    set_signin_cookie(response, nonce)
    return response


def _plain_http_elsewhere(request: web.Request) -> bool:
    """Plain HTTP to a host that is not this machine: the browser will not keep the cookie."""
    if request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https":
        return False
    host = request.host.rsplit(":", 1)[0].strip("[]")
    return host not in ("localhost", "::1") and not host.startswith("127.")


def _signed_in(session: WebSession, cookie: str, target: str) -> web.StreamResponse:
    response = web.Response(status=303, headers={"Location": target})
    ttl = int((session.expires_at - session.created_at).total_seconds())
    set_session_cookie(response, cookie, ttl)
    return response


@page("Sign-in form", roles=PUBLIC)
async def signin_page(request: web.Request) -> web.StreamResponse:
    if request.get(SESSION) is not None:
        raise web.HTTPSeeOther(safe_next(request.query.get("next")))
    return _signin_form(request)


@page("Sign in with an API token", roles=PUBLIC)
async def signin_submit(request: web.Request) -> web.StreamResponse:
    t = translator(request)
    form = await form_of(request)
    if (expired := _expired_form(request, form.get("nonce"))) is not None:
        return expired
    token = form.get("token")
    kiosk = form.get("kiosk") == "1"
    target = "/kiosk" if kiosk else safe_next(str(form.get("next") or "/"))
    if not isinstance(token, str) or not token.strip():
        return _signin_form(request, error=t.gettext("Paste an API token."), status=400)
    limiter, address = request.app[AUTH_LIMITER], client_address(request)
    try:
        cookie, session = await request.app[CORE].sessions.sign_in(token, kiosk=kiosk)
    except SignInRefused as exc:
        try:
            # The same per-address limit on failures as bearer tokens: a form is no way
            # around it. A correct token signs in whatever else comes from the address.
            limiter.check(address, "failed credentials")
        except ApiError as limited:
            log.warning("dashboard sign-in refused from %s: %s", address, limited.message)
            error = t.gettext(
                "Too many failed sign-ins from this address; try again in {seconds} s.",
                seconds=limited.headers["Retry-After"],
            )
            response = _signin_form(request, error=error, status=429)
            response.headers.update(limited.headers)
            return response
        limiter.spend(address)
        log.warning("dashboard sign-in refused from %s: %s", address, exc)
        return _signin_form(request, error=_refusal_text(request, exc), status=401)
    log.info(
        "dashboard sign-in: %s (%s)%s",
        session.principal.name or session.principal.token_id,
        session.principal.role.value,
        " as a wall screen" if kiosk else "",
    )
    details = {"with": "token", "kiosk": kiosk, "expires_at": session.expires_at.isoformat()}
    target_token = f"token:{session.principal.token_id}"
    caller = dashboard_caller(request, session)
    await record(request.app[CORE], caller, AuditAction.SESSION_SIGNIN, target_token, details)
    return _signed_in(session, cookie, target)


def _refusal_text(request: web.Request, exc: SignInRefused) -> str:
    t = translator(request)
    texts = {
        "agent_token": t.gettext("Agent credentials cannot sign in to the dashboard."),
        "admin_kiosk": t.gettext("A wall screen signs in with a viewer token, never an admin one."),
        "link_expired": t.gettext("This sign-in link has expired; ask for a new one."),
        "link_used": t.gettext("This sign-in link was used already or never existed."),
        "token_expired": t.gettext(
            "This token has expired; create a new one with: polyfleet controller token create"
        ),
    }
    return texts.get(exc.reason, t.gettext("Unknown or revoked token."))


@page("Sign out", roles=READERS, kiosk=True)
async def signout(request: web.Request) -> web.StreamResponse:
    session = request[SESSION]
    assert session is not None
    await request.app[CORE].sessions.sign_out(session)
    target = f"token:{session.principal.token_id}"
    await record(request.app[CORE], dashboard_caller(request), AuditAction.SESSION_SIGNOUT, target)
    response = web.Response(status=303, headers={"Location": "/signin"})
    clear_session_cookie(response)
    return response


@page("A one-time sign-in link: who it signs in, and a button to use it", roles=PUBLIC)
async def link_page(request: web.Request) -> web.StreamResponse:
    code = request.query.get("code", "")
    principal = request.app[CORE].sessions.link_principal(code)
    nonce = _nonce(request)
    response = render(
        request,
        "signin_link.html",
        {"principal": principal, "code": code, "nonce": nonce},
        status=200 if principal is not None else 410,
    )
    set_signin_cookie(response, nonce)
    return response


@page("Use a one-time sign-in link", roles=PUBLIC)
async def link_submit(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    if (expired := _expired_form(request, form.get("nonce"))) is not None:
        return expired
    code = form.get("code")
    try:
        cookie, session = await request.app[CORE].sessions.redeem_link(
            code if isinstance(code, str) else ""
        )
    except SignInRefused as exc:
        return _signin_form(request, error=_refusal_text(request, exc), status=401)
    log.info(
        "dashboard sign-in by one-time link: %s (%s)",
        session.principal.name or session.principal.token_id,
        session.principal.role.value,
    )
    details = {"with": "one-time link", "expires_at": session.expires_at.isoformat()}
    target_token = f"token:{session.principal.token_id}"
    caller = dashboard_caller(request, session)
    await record(request.app[CORE], caller, AuditAction.SESSION_SIGNIN, target_token, details)
    return _signed_in(session, cookie, "/")


def register(app: web.Application) -> None:
    router = app.router
    router.add_get("/signin", signin_page, allow_head=False)
    router.add_post("/signin", signin_submit)
    router.add_post("/signout", signout)
    router.add_get(SIGNIN_LINK_PATH, link_page, allow_head=False)
    router.add_post(SIGNIN_LINK_PATH, link_submit)
