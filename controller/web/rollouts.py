"""Rollouts: plans with waves and exclusions, live progress, halt reasons, the penalty box;
creating a plan and starting, pausing, resuming or aborting one (admins, after a confirmation).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from polyfleet.controller.api.entitlement import CATALOGUES
from polyfleet.controller.api.overview import ROLLOUTS_UNDER_WAY
from polyfleet.controller.api.rollouts import ROLLOUTS
from polyfleet.controller.domain.rollout import DEVICE_STATUSES, REASON_CODES, PlanError
from polyfleet.controller.http.errors import ApiError
from polyfleet.controller.http.spec import ADMINS
from polyfleet.controller.keys import INVENTORY, STORE
from polyfleet.controller.services.audit import AuditAction
from polyfleet.controller.services.rollout import (
    TRANSITIONS,
    RolloutConflict,
    UnknownRollout,
    request_from_json,
)
from polyfleet.controller.store.base import SITES
from polyfleet.controller.web.keys import SESSION, SETTINGS
from polyfleet.controller.web.render import render
from polyfleet.controller.web.security import audit_action, form_of, page
from polyfleet.shared.schema import Model

_FORM_TEXT = ("target", "canary", "waves", "window", "start", "wave_gap", "max_failures")
_FORM_INTEGERS = ("canary", "max_failures", "per_site")


def _is_admin(request: web.Request) -> bool:
    session = request[SESSION]
    return session is not None and session.principal.role in ADMINS


def plan_body(form: MultiDictProxy[Any]) -> dict[str, Any]:
    """The API's plan body (``POST /api/v1/rollouts``) from the page's form fields."""
    body: dict[str, Any] = {}
    for name in (*_FORM_TEXT, "per_site", "name"):
        value = form.get(name)
        if isinstance(value, str) and value.strip():
            body[name] = value.strip()
    for name in _FORM_INTEGERS:
        if name in body:
            text = body[name]
            if not text.lstrip("-").isdigit():
                raise PlanError(name, f"{text!r}: a whole number expected")
            body[name] = int(text)
    for name in ("sites", "models"):
        values = [str(v) for v in form.getall(name, []) if str(v).strip()]
        if values:
            body[name] = values
    exclude = str(form.get("exclude") or "")
    if exclude.strip():
        body["exclude"] = [serial for serial in exclude.replace(",", " ").split() if serial]
    return body


async def _list_page(
    request: web.Request,
    *,
    form: dict[str, Any] | None = None,
    preview: dict[str, Any] | None = None,
    error: str | None = None,
    error_field: str | None = None,
    status: int = 200,
) -> web.Response:
    service = request.app[ROLLOUTS]
    releases = await request.app[CATALOGUES].releases()
    rollouts = service.rollouts()
    live = [service.progress(r["id"]) for r in rollouts if r["status"] in ROLLOUTS_UNDER_WAY]
    return render(
        request,
        "rollouts.html",
        {
            "nav": "rollouts",
            "live": form is None and preview is None and error is None,
            "rollouts": rollouts,
            "running": live,
            "penalty": service.penalty_box(),
            "releases": [release.text for release in reversed(releases.releases)],
            "sites": request.app[INVENTORY].sites(),
            "models": [model.value for model in Model if model is not Model.UNKNOWN],
            "form": form or {},
            "preview": preview,
            "error": error,
            "error_field": error_field,
            "can_act": _is_admin(request),
        },
        status=status,
    )


@page("Rollouts: plans, live progress, the penalty box, and a form to plan one")
async def rollouts_page(request: web.Request) -> web.Response:
    return await _list_page(request)


@page("Plan a rollout: preview it, or store it as planned (admins)", roles=ADMINS)
async def rollout_create(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    shown = {name: form.get(name) for name in form} | {
        "sites": form.getall("sites", []),
        "models": form.getall("models", []),
    }
    catalogues = request.app[CATALOGUES]
    releases = await catalogues.releases()
    service = request.app[ROLLOUTS]
    session = request[SESSION]
    assert session is not None
    try:
        plan_request = request_from_json(plan_body(form))
        if form.get("step") != "create":
            preview = service.preview(plan_request, plans=catalogues.plans, releases=releases)
            return await _list_page(request, form=shown, preview=preview)
        if form.get("confirmed") != "1":
            preview = service.preview(plan_request, plans=catalogues.plans, releases=releases)
            return await _list_page(request, form={**shown, "confirm": True}, preview=preview)
        stored = await service.plan(
            plan_request,
            plans=catalogues.plans,
            releases=releases,
            created_by=session.principal.name,
        )
    except PlanError as exc:
        return await _list_page(
            request, form=shown, error=str(exc), error_field=exc.field, status=422
        )
    details = {"target": stored["target"], "devices": stored["summary"]["devices"]}
    await audit_action(request, AuditAction.ROLLOUT_PLAN, f"rollout:{stored['id']}", details)
    raise web.HTTPSeeOther(f"/rollouts/{stored['id']}")


def _rollout_page(
    request: web.Request,
    rollout_id: str,
    *,
    error: str | None = None,
    confirm: str | None = None,
    status: int = 200,
) -> web.Response:
    service = request.app[ROLLOUTS]
    try:
        rollout = service.rollout(rollout_id)
        progress = service.progress(rollout_id)
    except UnknownRollout as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    zones = {
        site_id: str(site.get("timezone") or request.app[SETTINGS].timezone)
        for site_id, site in request.app[STORE].scan(SITES).items()
    }
    actions = [action for action, allowed in TRANSITIONS.items() if rollout["status"] in allowed]
    waves = rollout["waves"]
    by_wave: dict[int | None, list[dict[str, Any]]] = {}
    for device in rollout["devices"]:
        by_wave.setdefault(device.get("wave"), []).append(device)
    return render(
        request,
        "rollout.html",
        {
            "nav": "rollouts",
            "live": error is None and confirm is None,
            "r": rollout,
            "progress": progress,
            "waves": waves,
            "by_wave": by_wave,
            "statuses": DEVICE_STATUSES,
            "reason_codes": REASON_CODES,
            "zones": zones,
            "actions": actions if _is_admin(request) else [],
            "error": error,
            "confirm": confirm,
            "done": request.query.get("done"),
        },
        status=status,
    )


@page("One rollout: waves, devices with their reasons, progress, history and controls")
async def rollout_page(request: web.Request) -> web.Response:
    return _rollout_page(request, request.match_info["rollout_id"])


@page("Start, pause, resume or abort a rollout (admins, confirmed)", roles=ADMINS)
async def rollout_action(request: web.Request) -> web.StreamResponse:
    rollout_id = request.match_info["rollout_id"]
    form = await form_of(request)
    action = str(form.get("action") or "")
    if action not in TRANSITIONS:
        raise ApiError(404, "not_found", f"no action {action!r}: {', '.join(TRANSITIONS)}")
    if form.get("confirmed") != "1":
        return _rollout_page(request, rollout_id, confirm=action)
    session = request[SESSION]
    assert session is not None
    try:
        result = await request.app[ROLLOUTS].act(rollout_id, action, by=session.principal.name)
    except UnknownRollout as exc:
        raise ApiError(404, "not_found", str(exc)) from None
    except RolloutConflict as exc:
        return _rollout_page(request, rollout_id, error=str(exc), status=409)
    details = {"status": result["status"]}
    await audit_action(request, AuditAction(f"rollout.{action}"), f"rollout:{rollout_id}", details)
    raise web.HTTPSeeOther(f"/rollouts/{rollout_id}?done={action}")


@page("Release a device from the penalty box (admins)", roles=ADMINS)
async def penalty_release(request: web.Request) -> web.StreamResponse:
    serial = request.match_info["serial"]
    if not await request.app[ROLLOUTS].release_from_penalty_box(serial):
        raise ApiError(404, "not_found", f"{serial} is not in the penalty box")
    await audit_action(request, AuditAction.ROLLOUT_RELEASE, f"device:{serial}")
    raise web.HTTPSeeOther("/rollouts")


def register(app: web.Application) -> None:
    router = app.router
    router.add_get("/rollouts", rollouts_page, allow_head=False, name="rollouts")
    router.add_post("/rollouts", rollout_create)
    router.add_post("/rollouts/penalty-box/{serial}/release", penalty_release)
    router.add_get("/rollouts/{rollout_id}", rollout_page, allow_head=False)
    router.add_post("/rollouts/{rollout_id}/action", rollout_action)
