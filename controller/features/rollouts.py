"""Rollouts and firmware packages: plan, read, start, pause, resume, abort, the penalty box,
and the packages the catalogued releases are installed from."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from polyfleet.controller.core import Controller
from polyfleet.controller.domain.rollout import ROLLOUT_STATUSES, RolloutStatus
from polyfleet.controller.errors import BadRequest
from polyfleet.controller.features.caller import Caller, Permission, record
from polyfleet.controller.services.audit import AuditAction
from polyfleet.controller.services.packages import package_json
from polyfleet.controller.services.rollout import TRANSITIONS, UnknownAction, request_from_json
from polyfleet.controller.store.base import Doc

#: Rollouts that move, or may move again: the overview and the rollouts page show them first.
UNDER_WAY = (RolloutStatus.RUNNING, RolloutStatus.PAUSED, RolloutStatus.HALTED)
#: What each admin action is audited as.
ACTION_AUDITS: Mapping[str, AuditAction] = {
    "start": AuditAction.ROLLOUT_START,
    "pause": AuditAction.ROLLOUT_PAUSE,
    "resume": AuditAction.ROLLOUT_RESUME,
    "abort": AuditAction.ROLLOUT_ABORT,
}


def checked_action(action: str) -> str:
    """``action`` when it is one of start, pause, resume and abort; UnknownAction if not."""
    if action not in ACTION_AUDITS:
        raise UnknownAction(action)
    return action


def list_rollouts(core: Controller, caller: Caller, *, status: str | None = None) -> list[Doc]:
    """Every rollout (or those in ``status``) without its devices, newest first."""
    caller.require(Permission.READ)
    if status is not None and status not in ROLLOUT_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(ROLLOUT_STATUSES)}")
    return core.rollouts.rollouts(status=status)


def rollouts_under_way(core: Controller, caller: Caller) -> list[Doc]:
    """The progress of each rollout running, paused or halted, newest first."""
    caller.require(Permission.READ)
    return [
        core.rollouts.progress(found["id"])
        for found in core.rollouts.rollouts()
        if found["status"] in UNDER_WAY
    ]


async def target_releases(core: Controller, caller: Caller) -> list[str]:
    """The catalogued releases a rollout may aim at, newest first."""
    caller.require(Permission.READ)
    releases = await core.catalogues.releases()
    return [release.text for release in reversed(releases.releases)]


async def plan_rollout(
    core: Controller, caller: Caller, body: Mapping[str, Any], *, dry_run: bool = False
) -> Doc:
    """Plan a rollout from the API's plan body: stored as ``planned`` (it starts only when
    started), or with ``dry_run`` only computed (``{"id": None, "status": "preview", ...}``).

    ``PlanError`` (422 ``invalid_plan``) names the key at fault, a text the admin text
    checks refuse included.
    """
    caller.require(Permission.OPERATE)
    request = request_from_json(body)
    catalogues = core.catalogues
    releases = await catalogues.releases()
    if dry_run:
        preview = core.rollouts.preview(request, plans=catalogues.plans, releases=releases)
        return {"id": None, "status": "preview", **preview}
    stored = await core.rollouts.plan(
        request, plans=catalogues.plans, releases=releases, created_by=caller.name
    )
    details = {"target": stored["target"], "devices": stored["summary"]["by_status"]}
    await record(core, caller, AuditAction.ROLLOUT_PLAN, f"rollout:{stored['id']}", details)
    return stored


def rollout(core: Controller, caller: Caller, rollout_id: str) -> Doc:
    """The stored plan with each device's state and the progress (``UnknownRollout``: none)."""
    caller.require(Permission.READ)
    return core.rollouts.rollout(rollout_id)


def rollout_status(core: Controller, caller: Caller, rollout_id: str) -> Doc:
    """Counts per status and wave, the halt reason and the updates under way."""
    caller.require(Permission.READ)
    return core.rollouts.progress(rollout_id)


def allowed_actions(caller: Caller, status: str) -> list[str]:
    """The actions ``caller`` may take on a rollout in ``status`` (none for a viewer)."""
    if not caller.may(Permission.OPERATE):
        return []
    return [action for action, allowed in TRANSITIONS.items() if status in allowed]


async def act(core: Controller, caller: Caller, rollout_id: str, action: str) -> Doc:
    """start, pause, resume or abort a rollout; ``RolloutConflict`` (409) when its status
    does not allow it, or when a package a planned hop needs is missing (start)."""
    caller.require(Permission.OPERATE)
    audited = ACTION_AUDITS[checked_action(action)]
    result = await core.rollouts.act(rollout_id, action, by=caller.name)
    details = {"status": result["status"], "target": result["target"]}
    await record(core, caller, audited, f"rollout:{result['id']}", details)
    return result


def device_rollouts(core: Controller, caller: Caller, serial: str) -> list[Doc]:
    """Every rollout that planned the device, newest first, with its entry in each."""
    caller.require(Permission.READ)
    core.inventory.device(serial)
    return core.rollouts.device_history(serial)


def penalty_box(core: Controller, caller: Caller) -> list[Doc]:
    """Devices that failed twice, with why: no rollout tries them until released."""
    caller.require(Permission.READ)
    return core.rollouts.penalty_box()


async def release_from_penalty_box(core: Controller, caller: Caller, serial: str) -> Doc:
    """Let rollouts try a device again (``NotInPenaltyBox``, 404, when it is not held)."""
    caller.require(Permission.OPERATE)
    await core.rollouts.release_from_penalty_box(serial)
    await record(core, caller, AuditAction.ROLLOUT_PENALTY_RELEASE, f"device:{serial}")
    return {"released": serial}


# -- firmware packages ----------------------------------------------------------------------


def list_packages(core: Controller, caller: Caller) -> list[Doc]:
    """The packages kept for catalogued releases, oldest release first."""
    caller.require(Permission.READ)
    return [package_json(doc) for doc in core.packages.packages()]


async def add_package(
    core: Controller,
    caller: Caller,
    version: str,
    chunks: AsyncIterator[bytes],
    *,
    sha256: str | None = None,
) -> Doc:
    """Keep a catalogued release's package, its SHA-256 and size recorded; ``PackageError``
    (422 ``invalid_package``) keeps nothing: a release not catalogued, a digest that differs.
    """
    # Packages belong to the release catalogue: administering, as the catalogues are.
    caller.require(Permission.ADMINISTER)
    releases = await core.catalogues.releases()
    doc = await core.packages.add(releases, version, chunks, sha256=sha256, added_by=caller.name)
    details = {"sha256": doc["sha256"], "size": doc["size"]}
    await record(core, caller, AuditAction.RELEASE_PACKAGE, f"release:{doc['version']}", details)
    return package_json(doc)
