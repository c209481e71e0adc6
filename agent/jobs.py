"""Jobs the controller hands the agent: diagnostics, reboot, firmware update (never in a call)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import tarfile
import time
from datetime import UTC, datetime

from polyfleet.agent.firmware import FirmwareUpdater, failure_code_of
from polyfleet.agent.poller import Poller
from polyfleet.agent.uplink import ControllerRefused, ControllerUnavailable, Uplink
from polyfleet.shared.errors import DeviceError
from polyfleet.shared.schema import FailureCode, Job, JobKind, JobResult

log = logging.getLogger(__name__)


def build_bundle(files: dict[str, bytes], *, now: datetime | None = None) -> bytes:
    """A ``.tar.gz`` of ``files`` under one ``diagnostics/`` folder (blocking: run in a thread)."""
    stamp = (now or datetime.now(UTC)).timestamp()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(f"diagnostics/{name}")
            info.size = len(content)
            info.mtime = int(stamp)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


class JobRunner:
    """Runs each job once and posts its result; a job already run is never run again."""

    def __init__(
        self, poller: Poller, uplink: Uplink, *, updater: FirmwareUpdater | None = None
    ) -> None:
        self.poller = poller
        self.uplink = uplink
        self.updater = updater
        self._done: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}

    def submit(self, job: Job) -> None:
        if job.id in self._done or job.id in self._running:
            return
        task = asyncio.create_task(self._run(job), name=f"job {job.id}")
        self._running[job.id] = task
        task.add_done_callback(lambda _t: self._running.pop(job.id, None))

    async def stop(self) -> None:
        """End jobs in flight (a result not yet posted is lost; the controller can order again)."""
        running = list(self._running.values())
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def wait_idle(self) -> None:
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def _run(self, job: Job) -> None:
        result = await self.execute(job)
        while True:
            try:
                await self.uplink.post_result(job.id, result)
                self._done.add(job.id)
                log.info("job %s (%s %s): %s", job.id, job.kind, job.serial, result.status)
                return
            except ControllerUnavailable:
                await asyncio.sleep(5)  # waits-for: the controller to come back
            except ControllerRefused as exc:
                log.warning("job %s: controller refused the result: %s", job.id, exc)
                self._done.add(job.id)
                return

    async def execute(self, job: Job) -> JobResult:
        key = self.poller.find(job.serial)
        if key is None:
            return JobResult(
                status="failed",
                detail=f"no device {job.serial} at this site",
                code=FailureCode.NOT_AT_SITE,
            )
        try:
            if job.kind is JobKind.REBOOT:
                host = self.poller.states[key].serial
                if job.serial != host:
                    # An E70 has no API of its own; restarting its host would end more than asked.
                    return JobResult(
                        status="refused",
                        detail=f"{job.serial} is a camera of {host} and cannot restart alone; "
                        f"reboot {host} instead",
                        code=FailureCode.NOT_SUPPORTED,
                    )
                return await self._reboot(key)
            if job.kind is JobKind.COLLECT_DIAGNOSTICS:
                return await self._diagnostics(job, key)
            if job.kind is JobKind.FIRMWARE_UPDATE and self.updater is not None:
                if job.serial != self.poller.states[key].serial:
                    return JobResult(
                        status="refused",
                        detail=f"{job.serial} is a camera: its firmware comes with its host's",
                        code=FailureCode.NOT_SUPPORTED,
                    )
                return await self.updater.run(job, key, self.uplink)
        except DeviceError as exc:
            return JobResult(
                status="failed", detail=f"{exc.reason}: {exc}"[:256], code=failure_code_of(exc)
            )
        except (ControllerUnavailable, ControllerRefused) as exc:
            return JobResult(
                status="failed",
                detail=f"upload failed: {exc}"[:256],
                code=FailureCode.UPLOAD_FAILED,
            )
        return JobResult(
            status="refused",
            detail=f"job kind {job.kind} is not supported here",
            code=FailureCode.NOT_SUPPORTED,
        )

    async def _reboot(self, key: str) -> JobResult:
        driver, _pins = await self.poller.driver(key)
        async with self.poller.states[key].busy:
            # Never disturb a device in a call: read first, act only when idle.
            if await driver.in_call():
                return JobResult(
                    status="refused", detail="device is in a call", code=FailureCode.IN_CALL
                )
            await driver.reboot()
        return JobResult(status="done", detail="reboot requested")

    async def _diagnostics(self, job: Job, key: str) -> JobResult:
        driver, _pins = await self.poller.driver(key)
        started = time.monotonic()
        async with self.poller.states[key].busy:
            targets = job.params.get("network_targets") or []
            # Remote diagnostics (H4): the unit's own view of the network, when asked.
            files = await driver.diagnostics(
                [str(target) for target in targets] if isinstance(targets, list) else []
            )
        state = self.poller.states[key]
        history = [s.model_dump(mode="json") for s in state.history]
        files["last-snapshots.json"] = json.dumps(history, indent=2).encode()
        files["job.json"] = json.dumps(
            {
                "job": job.id,
                "serial": job.serial,
                "device": key,
                "seconds": round(time.monotonic() - started, 3),
            },
            indent=2,
        ).encode()
        bundle = await asyncio.to_thread(build_bundle, files)
        await self.uplink.upload_artifact(job.id, bundle)
        digest = hashlib.sha256(bundle).hexdigest()
        missing = sorted(n for n in files if n.endswith(".error.txt"))
        detail = f"{len(bundle)} bytes" + (
            f"; could not read: {', '.join(missing)}" if missing else ""
        )
        return JobResult(status="done", detail=detail[:256], artifact_sha256=digest)
