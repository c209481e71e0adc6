"""Rollouts: plans with waves and exclusions, live progress, halt reasons, the penalty box;
creating a plan and starting, pausing, resuming or aborting one (admins, after a confirmation).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from polyfleet.controller.domain.rollout import (
    DEVICE_STATUSES,
    REASON_CODES,
    PlanError,
    stored_abort_criteria,
)
from polyfleet.controller.errors import Invalid
from polyfleet.controller.features import rollouts, sites
from polyfleet.controller.features.caller import Permission
from polyfleet.controller.http.spec import ADMINS
from polyfleet.controller.keys import CORE
from polyfleet.controller.services.rollout import RolloutConflict
from polyfleet.controller.web.render import render, site_zones
from polyfleet.controller.web.security import (
    act_from_page,
    button_state,
    dashboard_caller,
    form_of,
    page,
)
from polyfleet.shared.schema import Model

_FORM_TEXT = ("target", "canary", "waves", "window", "start", "wave_gap", "max_failures")
_FORM_INTEGERS = ("canary", "max_failures", "per_site")


def plan_body(form: MultiDictProxy[Any]) -> dict[str, Any]:
    """The API's plan body (``POST /api/v1/rollouts``) from the page's form fields."""
    body: dict[str, Any] = {}
    for name in (*_FORM_TEXT, "per_site", "name"):
        value = form.get(name)
        if isinstance(value, str) and value.strip():
            # The name as typed: the text checks see every character of it.
            body[name] = value if name == "name" else value.strip()
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
    core, caller = request.app[CORE], dashboard_caller(request)
    return render(
        request,
        "rollouts.html",
        {
            "nav": "rollouts",
            "live": form is None and preview is None and error is None,
            "rollouts": rollouts.list_rollouts(core, caller),
            "running": rollouts.rollouts_under_way(core, caller),
            "penalty": rollouts.penalty_box(core, caller),
            "releases": await rollouts.target_releases(core, caller),
            "sites": sites.list_sites(core, caller),
            "models": [model.value for model in Model if model is not Model.UNKNOWN],
            "form": form or {},
            "preview": preview,
            "error": error,
            "error_field": error_field,
            "can_act": caller.may(Permission.OPERATE),
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
    core, caller = request.app[CORE], dashboard_caller(request)
    # A preview first; the plan is stored only once confirmed (by the browser or, without
    # JavaScript, by the form this page then shows).
    storing = form.get("step") == "create" and form.get("confirmed") == "1"
    try:
        plan = await rollouts.plan_rollout(core, caller, plan_body(form), dry_run=not storing)
    except Invalid as exc:
        # The form again, with what was typed and the field at fault named.
        return await _list_page(
            request, form=shown, error=exc.message, error_field=exc.field, status=exc.status
        )
    if not storing:
        confirm = {"confirm": True} if form.get("step") == "create" else {}
        return await _list_page(request, form=shown | confirm, preview=plan)
    raise web.HTTPSeeOther(f"/rollouts/{plan['id']}")


def _rollout_page(
    request: web.Request,
    rollout_id: str,
    *,
    error: str | None = None,
    confirm: str | None = None,
    status: int = 200,
) -> web.Response:
    core, caller = request.app[CORE], dashboard_caller(request)
    rollout = rollouts.rollout(core, caller, rollout_id)
    progress = rollouts.rollout_status(core, caller, rollout_id)
    zones = site_zones(request, sites.list_sites(core, caller))
    by_wave: dict[int | None, list[dict[str, Any]]] = {}
    for device in rollout["devices"]:
        by_wave.setdefault(device.get("wave"), []).append(device)
    return render(
        request,
        "rollout.html",
        {
            "nav": "rollouts",
            **button_state(request, error=error, confirm=confirm),
            "r": rollout,
            "progress": progress,
            "waves": rollout["waves"],
            "by_wave": by_wave,
            "criteria": stored_abort_criteria(rollout),
            "statuses": DEVICE_STATUSES,
            "reason_codes": REASON_CODES,
            "zones": zones,
            "actions": rollouts.allowed_actions(caller, rollout["status"]),
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
    action = rollouts.checked_action(str(form.get("action") or ""))

    async def act() -> None:
        await rollouts.act(request.app[CORE], dashboard_caller(request), rollout_id, action)

    # The rollout's page says why not: its status, or a package that is missing.
    return await act_from_page(
        request, _rollout_page, rollout_id, action, act, ask_first=True, shown=(RolloutConflict,)
    )


@page("Release a device from the penalty box (admins)", roles=ADMINS)
async def penalty_release(request: web.Request) -> web.StreamResponse:
    serial = request.match_info["serial"]
    await rollouts.release_from_penalty_box(request.app[CORE], dashboard_caller(request), serial)
    raise web.HTTPSeeOther("/rollouts")


def register(app: web.Application) -> None:
    router = app.router
    router.add_get("/rollouts", rollouts_page, allow_head=False, name="rollouts")
    router.add_post("/rollouts", rollout_create)
    router.add_post("/rollouts/penalty-box/{serial}/release", penalty_release)
    router.add_get("/rollouts/{rollout_id}", rollout_page, allow_head=False)
    router.add_post("/rollouts/{rollout_id}/action", rollout_action)
