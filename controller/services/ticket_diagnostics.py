"""Ticket diagnostics through the jobs service: the site agent collects, the bundle comes back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from polyfleet.controller.services.jobs import JobPending, JobService
from polyfleet.controller.services.ticket_service import CollectedBundle
from polyfleet.shared.schema import JobKind


class DiagnosticsFailed(RuntimeError):
    """The agent could not collect the bundle; the message says what it answered."""


def _kind_of(content: bytes) -> tuple[str, str]:
    """(file suffix, content type) from the bundle's first bytes."""
    if content.startswith(b"\x1f\x8b"):
        return ".tar.gz", "application/gzip"
    if content.startswith(b"PK\x03\x04"):
        return ".zip", "application/zip"
    if len(content) > 262 and content[257:262] == b"ustar":
        return ".tar", "application/x-tar"
    return ".bin", "application/octet-stream"


class JobDiagnostics:
    """``DiagnosticsSource`` over ``JobService``: one ``collect_diagnostics`` job per call (W4)."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs

    async def collect(
        self,
        serial: str,
        *,
        site: str | None,
        timeout_s: float,
        network_targets: Sequence[str] = (),
    ) -> CollectedBundle:
        del site  # the jobs service routes by the device's own site
        params: dict[str, object] = {"reason": "fault ticket"}
        if network_targets:
            params["network_targets"] = list(network_targets)
        try:
            job = await self.jobs.enqueue(
                serial,
                JobKind.COLLECT_DIAGNOSTICS,
                params=params,
                created_by="tickets",
            )
        except JobPending as exc:
            job = exc.job  # one collection at a time per device: its bundle serves this ticket
        done = await self.jobs.wait(job["id"], timeout=timeout_s)
        result = done.get("result") or {}
        if done["status"] != "done":
            detail = result.get("detail") or "no detail"
            raise DiagnosticsFailed(f"agent answered {done['status']}: {detail}")
        path = self.jobs.artifact_path(job["id"])
        if path is None:
            raise DiagnosticsFailed(f"job {job['id']} finished without uploading a bundle")
        content = await asyncio.to_thread(path.read_bytes)
        suffix, content_type = _kind_of(content)
        return CollectedBundle(
            filename=f"diagnostics-{serial}-{job['id']}{suffix}",
            content=content,
            content_type=content_type,
        )
