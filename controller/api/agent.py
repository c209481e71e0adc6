"""The agent protocol: enroll, post report batches, pull jobs, upload artifacts and results."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from polyfleet.controller.api import audit
from polyfleet.controller.api.models import ArtifactOut, Ok
from polyfleet.controller.domain import reported
from polyfleet.controller.http.auth import agent_site, principal
from polyfleet.controller.http.bodies import body_deadline_s, deadline_chunks
from polyfleet.controller.http.errors import (
    ApiError,
    check_depth,
    parse_json,
    read_body,
    read_json,
    read_model,
    validate,
)
from polyfleet.controller.http.spec import AGENTS, PUBLIC, endpoint
from polyfleet.controller.http.throttle import ENROLL_LIMITER, client_address
from polyfleet.controller.keys import CORE
from polyfleet.controller.services.access import EnrollmentRefused, token_digest
from polyfleet.controller.services.audit import Actor, AuditAction
from polyfleet.shared.schema import (
    MAX_BATCH_SNAPSHOTS,
    SUPPORTED_PROTOCOL_VERSIONS,
    EnrollRequest,
    EnrollResponse,
    JobList,
    JobResult,
    ReportBatch,
    ReportBatchAck,
)

ARTIFACT_CHUNK = 64 * 1024

ModelT = TypeVar("ModelT", bound=BaseModel)


def marked_text(request: web.Request, model: ModelT) -> ModelT:
    """What an agent sent, its text marked where it enters (``domain.reported``), counted."""
    marked, count = reported.mark_model(model)
    request.app[CORE].inventory.stats.marked_characters += count
    return marked


def check_protocol(data: dict[str, Any]) -> None:
    """Refuse a protocol version this controller does not speak, before anything else."""
    version = data.get("protocol_version")
    # A non-integer version is a type error, reported by schema validation with its field.
    is_int = isinstance(version, int) and not isinstance(version, bool)
    if is_int and version not in SUPPORTED_PROTOCOL_VERSIONS:
        supported = ", ".join(str(v) for v in sorted(SUPPORTED_PROTOCOL_VERSIONS))
        raise ApiError(
            400,
            "unsupported_protocol_version",
            f"protocol_version {version} is not supported (supported: {supported}); "
            "upgrade the agent or the controller",
            "protocol_version",
        )


@endpoint(
    summary="Exchange a one-time enrollment code for the agent's credential",
    roles=PUBLIC,
    request=EnrollRequest,
    response=EnrollResponse,
    errors=(400, 403, 413, 422, 429),
    tags=("agent",),
)
async def enroll(request: web.Request) -> web.Response:
    limiter, address = request.app[ENROLL_LIMITER], client_address(request)
    limiter.check(address, "failed enrollment attempts")
    data = await read_json(request)
    check_protocol(data)
    body = marked_text(request, validate(EnrollRequest, data))
    try:
        answer = await request.app[CORE].access.enroll(
            body.code, agent_name=body.agent_name, hostname=body.hostname
        )
    except EnrollmentRefused:
        # Only wrong codes count: many agents enrolling through one NAT address are not
        # slowed, while guessing a code is.
        limiter.spend(address)
        raise
    credential = token_digest(answer.token)[:12]
    enrolled = Actor(name=body.agent_name or answer.agent_id, role="agent", token_id=credential)
    details = {"name": body.agent_name, "hostname": body.hostname}
    await audit.record(
        request,
        AuditAction.AGENT_ENROLL,
        f"agent:{answer.agent_id}",
        details,
        site=answer.site_id,
        actor=enrolled,
    )
    return web.json_response(answer.model_dump(mode="json"))


@endpoint(
    summary="Post a batch of device snapshots (idempotent per report id)",
    roles=AGENTS,
    request=ReportBatch,
    own_depth_check=True,
    response=ReportBatchAck,
    errors=(400, 401, 403, 413, 422),
    tags=("agent",),
)
async def post_reports(request: web.Request) -> web.Response:
    raw = await read_body(request)
    inventory = request.app[CORE].inventory
    async with inventory.turn():
        # No local name for the batch: it goes before the wait for the disk.
        staged = inventory.stage(principal(request), await _read_batch(raw), raw=raw)
    ack = await inventory.finish(staged)
    # Without refusals, the answer agents before per-report refusals understand.
    return web.json_response(
        ack.model_dump(mode="json", exclude=None if ack.refused else {"refused"})
    )


async def _read_batch(raw: bytes) -> ReportBatch:
    """A valid batch: parsed in one pass; on failure, a second pass finds the precise error.

    The one pass needs no depth check: its parser stops at its own (safe) recursion limit and
    the schema allows no nesting beyond a report's, so a deep body fails it.
    """
    try:
        batch = ReportBatch.model_validate_json(raw)
    except ValidationError:
        pass
    else:
        check_protocol({"protocol_version": batch.protocol_version})
        return batch
    await check_depth(raw)
    data = parse_json(raw)
    check_protocol(data)
    reports = data.get("reports")
    if isinstance(reports, list) and len(reports) > MAX_BATCH_SNAPSHOTS:
        raise ApiError(
            413,
            "too_many_snapshots",
            f"{len(reports)} snapshots in one batch; at most {MAX_BATCH_SNAPSHOTS}: split it",
            "reports",
        )
    return validate(ReportBatch, data)


@endpoint(
    summary="Jobs waiting for this agent (also the agent's heartbeat)",
    roles=AGENTS,
    response=JobList,
    errors=(401, 403),
    tags=("agent",),
)
async def get_jobs(request: web.Request) -> web.Response:
    request.app[CORE].inventory.note_agent_call(principal(request))
    jobs = await request.app[CORE].jobs.hand_out(agent_site(request))
    return web.json_response(JobList(jobs=jobs).model_dump(mode="json"))


@endpoint(
    summary="Upload a job's artifact (binary bundle, size-limited); stored with its sha256",
    roles=AGENTS,
    request_media="application/octet-stream",
    response=ArtifactOut,
    errors=(401, 403, 404, 409, 413),
    tags=("agent",),
)
async def put_artifact(request: web.Request) -> web.Response:
    jobs = request.app[CORE].jobs
    declared = request.content_length
    if declared is not None and declared > jobs.max_artifact_bytes:
        raise ApiError(
            413,
            "body_too_large",
            f"artifact larger than the limit of {jobs.max_artifact_bytes} bytes",
        )
    chunks = deadline_chunks(
        request,
        request.content.iter_chunked(ARTIFACT_CHUNK),
        body_deadline_s(request, most=jobs.max_artifact_bytes),
    )
    artifact = await jobs.store_artifact(request.match_info["job_id"], agent_site(request), chunks)
    return web.json_response(artifact)


@endpoint(
    summary="Post a job's result",
    roles=AGENTS,
    request=JobResult,
    response=Ok,
    errors=(400, 401, 403, 404, 409, 422),
    tags=("agent",),
)
async def post_result(request: web.Request) -> web.Response:
    result = marked_text(request, await read_model(request, JobResult))
    await request.app[CORE].jobs.finish(request.match_info["job_id"], agent_site(request), result)
    return web.json_response(Ok(ok=True).model_dump())


def register(app: web.Application) -> None:
    app.router.add_post("/api/v1/agent/enroll", enroll)
    app.router.add_post("/api/v1/agent/reports", post_reports)
    app.router.add_get("/api/v1/agent/jobs", get_jobs, allow_head=False)
    app.router.add_put("/api/v1/agent/jobs/{job_id}/artifact", put_artifact)
    app.router.add_post("/api/v1/agent/jobs/{job_id}/result", post_result)
