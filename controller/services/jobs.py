"""Jobs for agents (collect diagnostics, reboot...): queue, hand out, store artifacts and results.

Python API for features (``app[CORE].jobs``)::

    job = await jobs.enqueue("SERIAL", JobKind.COLLECT_DIAGNOSTICS, params={...})
    # JobPending (a JobConflict) when a job of that kind is pending for the device already:
    # exc.job is that job, to wait for or report; jobs.pending(serial, kind) asks first.
    done = await jobs.wait(job["id"], timeout=600)     # JobTimeout if not finished in time
    done["status"]                     # "done" | "failed" | "refused" | "cancelled"
    path = jobs.artifact_path(job["id"])               # the uploaded bundle, or None
    jobs.get(job_id), jobs.find(serial=..., site_id=...)

A job document (collection ``jobs``): ``{id, kind, serial, site_id, params, status, created_at,
created_by, sent_at, finished_at, result: {status, detail, code?} | None, artifact: {sha256,
size, uploaded_at} | None, cancelled_by?}``; ``status`` goes ``queued`` -> ``sent`` ->
``done|failed|refused``, or ``cancelled`` by an admin while pending. A device has at most one
pending (queued or sent) job of each kind: twenty reboots ordered in a second are one reboot.
A ``sent`` job is handed out again after ``job_lease_s`` without a result (agent restarted).
Artifacts live in ``<data dir>/artifacts/<job id>.bin``, written elsewhere, fsynced, renamed.

The service keeps each device's jobs and each site's pending ones in memory (read once at
first use, kept with every job it makes or finishes, and with those it prepares for a
rollout to store), so an agent's poll and a device's page never read every job there is.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from polyfleet.controller.clock import Clock
from polyfleet.controller.errors import Conflict, NotFound, Refused
from polyfleet.controller.events import EventBus, JobFinished
from polyfleet.controller.services.inventory import Inventory, UnknownDevice
from polyfleet.controller.store.base import JOBS, Doc, Store
from polyfleet.controller.store.journal import fsync_dir
from polyfleet.shared.schema import Job, JobKind, JobResult

FINISHED = frozenset({"done", "failed", "refused", "cancelled"})
#: Every status a job has: queued, then sent to its agent, then one of :data:`FINISHED`.
JOB_STATUSES: tuple[str, ...] = ("queued", "sent", "done", "failed", "refused", "cancelled")


class UnknownJob(NotFound, KeyError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r} for this agent", field="job_id")
        self.job_id = job_id


class JobConflict(Conflict):
    """The job cannot take this call (finished already, artifact digest mismatch...)."""


class JobPending(JobConflict):
    """The device has a pending job of this kind already; ``job`` is that job."""

    def __init__(self, job: Doc) -> None:
        by = f" by {job['created_by']}" if job.get("created_by") else ""
        super().__init__(
            f"device {job['serial']} has a pending {job['kind']} job already: {job['id']} "
            f"({job['status']}, ordered {job['created_at']}{by}); wait for it to finish, or "
            f"cancel it with POST /api/v1/jobs/{job['id']}/cancel",
            code="job_pending",
            field="kind",
        )
        self.job = job


class ArtifactTooLarge(Refused):
    status = 413
    default_code = "body_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"artifact larger than the limit of {limit} bytes")
        self.limit = limit


class JobTimeout(TimeoutError):
    """``JobService.wait`` gave up; the job may still finish later."""


class JobService:
    """Owns the ``jobs`` collection and the artifacts directory."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        clock: Clock,
        *,
        inventory: Inventory,
        artifacts_dir: Path,
        lease_s: int,
        max_artifact_bytes: int,
    ) -> None:
        self._store = store
        self._bus = bus
        self._clock = clock
        self._inventory = inventory
        self._artifacts = artifacts_dir
        self._lease = timedelta(seconds=lease_s)
        self.max_artifact_bytes = max_artifact_bytes
        self._finished: dict[str, asyncio.Event] = {}
        #: (serial, kind) -> the id of its pending job; built from the store on first use.
        self._pending: dict[tuple[str, str], str] | None = None
        #: serial -> its jobs' ids, oldest first; site -> its pending jobs' ids (built with
        #: ``_pending``). An id whose document is missing (prepared, never stored) or, for a
        #: site, finished is dropped when met.
        self._of_serial: dict[str, list[str]] = {}
        self._open_at_site: dict[str, set[str]] = {}

    def _pending_jobs(self) -> dict[tuple[str, str], str]:
        if self._pending is None:
            pending: dict[tuple[str, str], str] = {}
            ordered = sorted(self._store.scan(JOBS).values(), key=lambda d: str(d["created_at"]))
            for doc in ordered:
                self._of_serial.setdefault(doc["serial"], []).append(doc["id"])
                if doc["status"] not in FINISHED:
                    pending.setdefault((doc["serial"], doc["kind"]), doc["id"])
                    self._open_at_site.setdefault(doc["site_id"], set()).add(doc["id"])
            self._pending = pending
        return self._pending

    def pending(self, serial: str, kind: JobKind | str) -> Doc | None:
        """The device's pending (queued or sent) job of this kind, if it has one."""
        key = (serial, JobKind(kind).value)
        index = self._pending_jobs()
        job_id = index.get(key)
        if job_id is None:
            return None
        doc = self.get(job_id)
        if doc is None or doc["status"] in FINISHED:
            # A document prepared but never stored, or finished: the kind is free again.
            del index[key]
            return None
        return doc

    def _release(self, doc: Doc) -> None:
        index = self._pending_jobs()
        key = (doc["serial"], doc["kind"])
        if index.get(key) == doc["id"]:
            del index[key]
        self._open_at_site.get(doc["site_id"], set()).discard(doc["id"])

    async def enqueue(
        self,
        serial: str,
        kind: JobKind,
        params: dict[str, Any] | None = None,
        *,
        created_by: str = "",
    ) -> Doc:
        """Queue a job for the agent of the device's site; durable when it returns.

        ``JobPending`` when the device has a pending job of this kind already.
        """
        doc = self.prepare(serial, kind, params, created_by=created_by)
        await self._store.wait_durable(self._store.apply({JOBS: {doc["id"]: doc}}))
        return doc

    def prepare(
        self,
        serial: str,
        kind: JobKind,
        params: dict[str, Any] | None = None,
        *,
        created_by: str = "",
    ) -> Doc:
        """A new queued job's document, not yet stored: for a caller that stores it together
        with its own change in one ``apply`` (a rollout records the order and the job at once),
        with no ``await`` between this call and that ``apply``.

        ``JobPending`` when the device has a pending job of this kind already.
        """
        device = self._inventory.find_device(serial)
        if device is None:
            raise UnknownDevice(serial)
        existing = self.pending(serial, kind)
        if existing is not None:
            raise JobPending(existing)
        job_id = "job_" + secrets.token_hex(8)
        # Taken now: a second order in the same moment finds this one.
        self._pending_jobs()[(serial, kind.value)] = job_id
        self._of_serial.setdefault(serial, []).append(job_id)
        self._open_at_site.setdefault(device["site_id"], set()).add(job_id)
        doc: Doc = {
            "id": job_id,
            "kind": kind.value,
            "serial": serial,
            "site_id": device["site_id"],
            "params": dict(params or {}),
            "status": "queued",
            "created_at": self._clock().isoformat(),
            "created_by": created_by,
            "sent_at": None,
            "finished_at": None,
            "result": None,
            "artifact": None,
        }
        return doc

    @staticmethod
    def storing(job: Doc) -> dict[str, dict[str, Doc]]:
        """The change that stores a job from ``prepare``, for the caller's own ``apply``."""
        return {JOBS: {job["id"]: job}}

    def get(self, job_id: str) -> Doc | None:
        return self._store.get(JOBS, job_id)

    def find(self, *, serial: str | None = None, site_id: str | None = None) -> list[Doc]:
        """Jobs of a device and/or a site, oldest first."""
        if serial is None:
            # A whole site's history: no page asks for it, so no index is kept for it.
            docs: list[Doc] = [
                doc
                for doc in list(self._store.scan(JOBS).values())
                if site_id is None or doc["site_id"] == site_id
            ]
        else:
            self._pending_jobs()
            ids = self._of_serial.get(serial, [])
            docs = []
            for job_id in list(ids):
                doc = self.get(job_id)
                if doc is None:
                    ids.remove(job_id)  # prepared, never stored
                elif site_id is None or doc["site_id"] == site_id:
                    docs.append(doc)
        return sorted(docs, key=lambda doc: str(doc["created_at"]))

    async def wait(self, job_id: str, *, timeout: float) -> Doc:
        """The job once finished (``done``, ``failed`` or ``refused``)."""
        doc = self.get(job_id)
        if doc is None:
            raise UnknownJob(job_id)
        if doc["status"] in FINISHED:
            return doc
        event = self._finished.setdefault(job_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            raise JobTimeout(f"job {job_id} not finished within {timeout} s") from None
        result = self.get(job_id)
        assert result is not None
        return result

    def artifact_path(self, job_id: str) -> Path | None:
        doc = self.get(job_id)
        if doc is None or doc.get("artifact") is None:
            return None
        return self._artifacts / f"{job_id}.bin"

    # -- the agent's side --------------------------------------------------------------------

    async def hand_out(self, site_id: str) -> list[Job]:
        """Jobs for a site's agent: queued ones and sent ones whose lease ran out."""
        now = self._clock()
        handed: dict[str, Doc] = {}
        self._pending_jobs()
        open_ids = self._open_at_site.get(site_id, set())
        for job_id in sorted(open_ids):
            doc = self.get(job_id)
            if doc is None or doc["status"] in FINISHED or doc["site_id"] != site_id:
                open_ids.discard(job_id)  # prepared and never stored, or over
                continue
            sent_at = doc["sent_at"]
            if doc["status"] == "sent" and now - datetime.fromisoformat(sent_at) < self._lease:
                continue
            handed[job_id] = {**doc, "status": "sent", "sent_at": now.isoformat()}
        if handed:
            await self._store.put_many(JOBS, handed)
        return [
            Job(
                id=doc["id"],
                kind=JobKind(doc["kind"]),
                serial=doc["serial"],
                params=doc["params"],
                created_at=datetime.fromisoformat(doc["created_at"]),
            )
            for doc in sorted(handed.values(), key=lambda doc: str(doc["created_at"]))
        ]

    async def reassign(
        self, job_id: str, *, why: str, params: dict[str, Any] | None = None
    ) -> Doc | None:
        """Hand a sent job out again at the site's next job poll, without waiting for its
        lease: the agent it went to is gone or has lost it (``why`` is kept in
        ``reassigned``). ``params`` are added to its own. None when it is not ``sent``.

        The same agent getting it again is harmless: an agent runs a job id once, and
        resumes one it was running from its journal.
        """
        doc = self.get(job_id)
        if doc is None or doc["status"] != "sent":
            return None
        now = self._clock()
        updated = {
            **doc,
            "status": "queued",
            "sent_at": None,
            "params": {**doc["params"], **(params or {})},
            "reassigned": [*doc.get("reassigned", []), {"at": now.isoformat(), "why": why}],
        }
        await self._store.wait_durable(self._store.apply({JOBS: {job_id: updated}}))
        self._pending_jobs()
        self._open_at_site.setdefault(doc["site_id"], set()).add(job_id)
        return updated

    def _agent_job(self, job_id: str, site_id: str) -> Doc:
        doc = self.get(job_id)
        if doc is None or doc["site_id"] != site_id:
            raise UnknownJob(job_id)
        return doc

    async def store_artifact(self, job_id: str, site_id: str, chunks: AsyncIterator[bytes]) -> Doc:
        """Stream an uploaded bundle to disk; returns ``{sha256, size, uploaded_at}``."""
        doc = self._agent_job(job_id, site_id)
        if doc["status"] in FINISHED:
            raise JobConflict(f"job {job_id} is finished already")
        await asyncio.to_thread(self._artifacts.mkdir, parents=True, exist_ok=True, mode=0o700)
        final = self._artifacts / f"{job_id}.bin"
        tmp = self._artifacts / f"{job_id}.{secrets.token_hex(4)}.part"
        digest = hashlib.sha256()
        size = 0
        handle = await asyncio.to_thread(open, tmp, "wb")
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > self.max_artifact_bytes:
                    raise ArtifactTooLarge(self.max_artifact_bytes)
                digest.update(chunk)
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_fsync_close, handle)
            await asyncio.to_thread(os.replace, tmp, final)
            await asyncio.to_thread(fsync_dir, self._artifacts)
        except BaseException:
            await asyncio.to_thread(_discard, handle, tmp)
            raise
        artifact = {
            "sha256": digest.hexdigest(),
            "size": size,
            "uploaded_at": self._clock().isoformat(),
        }
        current = self.get(job_id) or doc
        await self._store.put_many(JOBS, {job_id: {**current, "artifact": artifact}})
        return artifact

    async def finish(self, job_id: str, site_id: str, result: JobResult) -> Doc:
        """Record the agent's result; wakes ``wait`` and publishes ``JobFinished``.

        A result for a job cancelled meanwhile is kept in it (the job stays cancelled).
        """
        doc = self._agent_job(job_id, site_id)
        # Without a code it is stored as results were before codes, so a resend of a result
        # stored then is still the same result.
        answered = result.model_dump(
            mode="json", exclude={"artifact_sha256", *(() if result.code else ("code",))}
        )
        if doc["status"] == "cancelled" and doc["result"] is None:
            # Run before the agent heard of the cancel: keep what it did; still cancelled.
            late = {**doc, "result": answered}
            await self._store.wait_durable(self._store.apply({JOBS: {job_id: late}}))
            return late
        if doc["status"] in FINISHED:
            if doc["result"] == answered:
                return doc  # a resend of the same result
            raise JobConflict(f"job {job_id} is finished already with {doc['status']}")
        artifact = doc.get("artifact")
        if result.artifact_sha256 is not None:
            if artifact is None:
                raise JobConflict(
                    f"job {job_id}: no artifact uploaded; PUT it to .../artifact first"
                )
            if artifact["sha256"] != result.artifact_sha256.lower():
                raise JobConflict(
                    f"job {job_id}: artifact_sha256 does not match the uploaded artifact"
                )
        now = self._clock()
        updated = {
            **doc,
            "status": result.status,
            "finished_at": now.isoformat(),
            "result": answered,
        }
        event = JobFinished(
            at=now,
            site_id=site_id,
            serial=doc["serial"],
            job_id=job_id,
            job_kind=doc["kind"],
            status=result.status,
            detail=result.detail,
        )
        return await self._finished_now(updated, event)

    async def cancel(self, job_id: str, *, by: str) -> Doc:
        """Cancel a pending job (the agent no longer gets it); frees its kind for the device."""
        doc = self.get(job_id)
        if doc is None:
            raise UnknownJob(job_id)
        if doc["status"] in FINISHED:
            raise JobConflict(f"job {job_id} is {doc['status']} already")
        rollout = doc["params"].get("rollout_id")
        if rollout:
            raise JobConflict(
                f"job {job_id} belongs to rollout {rollout}: pause or abort the rollout instead"
            )
        now = self._clock()
        updated = {
            **doc,
            "status": "cancelled",
            "finished_at": now.isoformat(),
            "cancelled_by": by,
        }
        event = JobFinished(
            at=now,
            site_id=doc["site_id"],
            serial=doc["serial"],
            job_id=job_id,
            job_kind=doc["kind"],
            status="cancelled",
            detail=f"cancelled by {by}" if by else "cancelled",
        )
        return await self._finished_now(updated, event)

    async def _finished_now(self, updated: Doc, event: JobFinished) -> Doc:
        """Store a job's end with its event; free its kind, wake ``wait``, publish."""
        job_id = updated["id"]
        puts, deletes = self._bus.record([event])
        seq = self._store.apply({JOBS: {job_id: updated}, **puts}, deletes)
        self._release(updated)
        await self._store.wait_durable(seq)
        waiter = self._finished.pop(job_id, None)
        if waiter is not None:
            waiter.set()
        self._bus.dispatch([event])
        return updated


def _fsync_close(handle: Any) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()


def _discard(handle: Any, path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)
