"""One firmware hop on one unit: never in a call, through the site update server, then verified.

The steps of a ``firmware_update`` job (params: ``rollout_id, hop_index, version, sha256,
size, window_end, provider``):

1. baseline: read the unit (unreachable or off: refused, the rollout moves it to its next
   window); already on the hop's version: verified at once;
2. never in a call: while it is, say ``postponed_in_call`` and look again every
   ``call_recheck_s``; still in a call when its window closes: refused;
3. ``downloading``: the package is fetched once for the site into the cache;
4. the order: the unit's ``upgrade.auto.*`` settings are saved in the job's journal, then
   pointed at this site's update server and the hop's version, then the unit reboots;
5. ``installing``: wait until the unit answers on a new version, says its update failed,
   or ``return_timeout_s`` passes (``did_not_return``);
6. ``verifying``: the hop's version and build, the same provider mode, camera and
   microphones up, and no problem the baseline did not have; the saved settings go back.

The journal (``<data dir>/updates/<job id>.json``) is written before each step acts, so an
agent killed at any moment resumes the job where it was and never orders a unit twice.
The evidence (baseline, the report after, each check) is uploaded as the job's artifact.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from polyfleet.agent.poller import Poller
from polyfleet.agent.update_server import (
    PackageCache,
    PackageMismatch,
    PackageRef,
    PackageUnavailable,
    SiteUpdateServer,
)
from polyfleet.agent.uplink import ControllerRefused, ControllerUnavailable, Uplink
from polyfleet.shared.durable import write_atomically
from polyfleet.shared.errors import CertificateMismatch, DeviceError, DeviceUnreachable
from polyfleet.shared.schema import FailureCode, Job, JobProgress, JobResult, Snapshot
from polyfleet.shared.version import FirmwareVersion, VersionError

log = logging.getLogger(__name__)

#: The unit settings an update order changes, and so restores afterwards.
UPDATE_KEYS = (
    "upgrade.auto.enable",
    "upgrade.auto.server.address",
    "upgrade.auto.version",
)
#: Journals of finished jobs are kept this long (a resent job gets its result from them),
#: then deleted, so ``<data dir>/updates`` does not grow with every update ever run.
FINISHED_KEEP_S = 30 * 86400
#: How often the unit is looked at while it installs.
RETURN_POLL_S = 2.0
#: Problems that mean "camera or microphones down" (a verification check of its own).
AV_PROBLEMS = {"camera_down": "camera", "microphone_down": "microphones"}


class Journal:
    """The job's state on disk, written atomically before each step acts."""

    def __init__(self, directory: Path, job_id: str) -> None:
        self.path = directory / f"{job_id}.json"
        self.data: dict[str, Any] = {}

    def load(self) -> None:
        try:
            self.data = json.loads(self.path.read_text("utf-8"))
        except (OSError, ValueError):
            self.data = {}

    def save(self, **changes: Any) -> None:
        self.data.update(changes)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(self.path, json.dumps(self.data))


def prune_finished(directory: Path, older_than_s: float = FINISHED_KEEP_S) -> int:
    """Delete journals of finished jobs last written more than ``older_than_s`` ago (by then
    the controller has long had their result); how many went. Unfinished ones always stay:
    they are how a job resumes."""
    cutoff = time.time() - older_than_s
    removed = 0
    for path in directory.glob("*.json"):
        journal = Journal(directory, path.stem)
        try:
            if path.stat().st_mtime >= cutoff:
                continue
            journal.load()
            if journal.data.get("phase") == "finished":
                path.unlink()
                removed += 1
        except OSError as exc:
            log.debug("update journal %s not pruned: %s", path, exc)
    return removed


def failure_code_of(exc: DeviceError) -> FailureCode:
    """The failure code of a unit that would not let a job go on."""
    if isinstance(exc, CertificateMismatch):
        return FailureCode.CERTIFICATE_CHANGED
    if isinstance(exc, DeviceUnreachable):
        return FailureCode.DEVICE_UNREACHABLE
    return FailureCode.DEVICE_ERROR


def _unreachable(exc: DeviceError) -> JobResult:
    """Refused before the order: the unit was not touched, its next window may do."""
    return JobResult(
        status="refused", detail=f"unreachable: {exc.reason}"[:256], code=failure_code_of(exc)
    )


def _same_version(snapshot: Snapshot, version: str) -> bool:
    try:
        wanted = FirmwareVersion.parse(version)
        seen = FirmwareVersion.parse(
            snapshot.firmware.version, build=snapshot.firmware.build or None
        )
    except VersionError:
        return False
    return seen == wanted or (seen.same_release(wanted) and wanted.build in (0, seen.build))


def verify(before: Snapshot, after: Snapshot, version: str) -> list[dict[str, Any]]:
    """The checks after a hop, each ``{check, ok, detail}`` (the report before is the baseline)."""
    checks: list[dict[str, Any]] = []
    shown = f"{after.firmware.version} build {after.firmware.build or '?'}"
    checks.append(
        {
            "check": "version",
            "ok": _same_version(after, version),
            "detail": f"{shown}, expected {version}",
        }
    )
    checks.append(
        {
            "check": "provider",
            "ok": after.provider == before.provider,
            "detail": f"{after.provider.value}, before {before.provider.value}",
        }
    )
    codes_after = {p.code.value for p in after.health.problems}
    codes_before = {p.code.value for p in before.health.problems}
    for code, what in AV_PROBLEMS.items():
        checks.append(
            {
                "check": code.removesuffix("_down") + "_up",
                "ok": code not in codes_after,
                "detail": f"{what} {'down' if code in codes_after else 'up'}",
            }
        )
    new = sorted(codes_after - codes_before - set(AV_PROBLEMS))
    checks.append(
        {
            "check": "no_new_problems",
            "ok": not new,
            "detail": ("new: " + ", ".join(new)) if new else "none new",
        }
    )
    return checks


class FirmwareUpdater:
    """Runs ``firmware_update`` jobs for the agent's JobRunner."""

    def __init__(
        self,
        poller: Poller,
        cache: PackageCache,
        server: SiteUpdateServer,
        *,
        journal_dir: Path,
        return_timeout_s: float,
        call_recheck_s: float,
    ) -> None:
        self.poller = poller
        self.cache = cache
        self.server = server
        self.journal_dir = journal_dir
        self.return_timeout_s = return_timeout_s
        self.call_recheck_s = call_recheck_s

    async def _progress(self, uplink: Uplink, job: Job, status: str, detail: str = "") -> None:
        try:
            progress = JobProgress.model_validate({"status": status, "detail": detail[:256]})
            await uplink.post_progress(job.id, progress)
        except (ControllerUnavailable, ControllerRefused) as exc:
            # Progress is a courtesy; the result is what counts and is retried.
            log.debug("job %s: progress not posted: %s", job.id, exc)

    async def _snapshot(self, key: str) -> Snapshot:
        driver, _pins = await self.poller.driver(key)
        async with self.poller.states[key].busy:
            return (await driver.poll())[0]

    def interrupted(self) -> list[Job]:
        """Jobs whose unit was ordered to update by this agent (or was being ordered) when it
        stopped: run again, they follow the unit to its outcome from their journal."""
        jobs: list[Job] = []
        for path in sorted(self.journal_dir.glob("*.json")):
            journal = Journal(self.journal_dir, path.stem)
            journal.load()
            if journal.data.get("phase") not in ("ordering", "ordered"):
                continue
            try:
                jobs.append(Job.model_validate(journal.data["job"]))
            except (KeyError, ValueError) as exc:
                # Written by an agent from before the job was kept: the lease brings it back.
                log.debug("update journal %s holds no job: %s", path, exc)
        return jobs

    async def run(self, job: Job, key: str, uplink: Uplink) -> JobResult:
        pruned = await asyncio.to_thread(prune_finished, self.journal_dir)
        if pruned:
            log.info("update journals: %d of jobs finished over 30 days ago deleted", pruned)
        journal = Journal(self.journal_dir, job.id)
        await asyncio.to_thread(journal.load)
        if journal.data.get("phase") == "finished":
            return JobResult.model_validate(journal.data["result"])
        result, evidence = await self._run(job, key, uplink, journal)
        if evidence:
            evidence["result"] = result.model_dump(mode="json", exclude={"artifact_sha256"})
            blob = json.dumps(evidence, indent=2, default=str).encode()
            try:
                await uplink.upload_artifact(job.id, blob)
                result = result.model_copy(
                    update={"artifact_sha256": hashlib.sha256(blob).hexdigest()}
                )
            except (ControllerUnavailable, ControllerRefused) as exc:
                log.warning("job %s: evidence not uploaded: %s", job.id, exc)
        await asyncio.to_thread(
            journal.save, phase="finished", result=result.model_dump(mode="json")
        )
        return result

    async def _run(
        self, job: Job, key: str, uplink: Uplink, journal: Journal
    ) -> tuple[JobResult, dict[str, Any]]:
        params = job.params
        version = str(params.get("version") or "")
        window_end = datetime.fromisoformat(str(params["window_end"]))
        phase = journal.data.get("phase")
        if phase not in ("ordered",):
            # 1. the baseline
            try:
                before = await self._snapshot(key)
            except DeviceError as exc:
                return _unreachable(exc), {}
            if _same_version(before, version):
                checks = verify(before, before, version)
                current = {
                    "before": before.model_dump(mode="json"),
                    "after": None,
                    "checks": checks,
                }
                return JobResult(status="done", detail=f"already on {version}"), current
            # 2. never in a call
            driver, _pins = await self.poller.driver(key)
            while True:
                try:
                    async with self.poller.states[key].busy:
                        in_call = await driver.in_call()
                except DeviceError as exc:
                    return _unreachable(exc), {}
                if not in_call:
                    break
                if datetime.now(UTC) >= window_end:
                    return (
                        JobResult(
                            status="refused",
                            detail="in_call: still in a call when its window closed",
                            code=FailureCode.IN_CALL,
                        ),
                        {},
                    )
                await self._progress(uplink, job, "postponed_in_call", "in a call; waiting")
                await asyncio.sleep(self.call_recheck_s)  # waits-for: the call to end
            # 2b. never into a booked room: the install and its expected length clear of meetings
            booked, calendar = await self._wait_out_meetings(job, key, uplink, window_end)
            if booked is not None:
                return booked, {"calendar": calendar}
            # 3. the package, once for the site
            await self._progress(uplink, job, "downloading", f"package {version}")
            ref = PackageRef(version, str(params["sha256"]), int(params["size"]))
            try:
                await self.cache.ensure(uplink, ref)
            except PackageUnavailable as exc:
                code = (
                    FailureCode.CHECKSUM_MISMATCH
                    if isinstance(exc, PackageMismatch)
                    else FailureCode.DOWNLOAD_FAILED
                )
                detail = f"package_unavailable: {exc}"[:256]
                return JobResult(status="failed", detail=detail, code=code), {}
            # 4. the order: settings saved first, so they can go back whatever happens next
            try:
                async with self.poller.states[key].busy:
                    saved = journal.data.get("saved")
                    if phase != "ordering" or not isinstance(saved, dict):
                        saved = await driver.read_config(list(UPDATE_KEYS))
                    # else: stopped mid-order before: what the unit holds may be our own
                    # order, and what it had before is what was saved then.
                    if await driver.in_call():
                        return (
                            JobResult(
                                status="refused",
                                detail="in_call: a call started",
                                code=FailureCode.IN_CALL,
                            ),
                            {},
                        )
                    await asyncio.to_thread(
                        journal.save,
                        phase="ordering",
                        saved=saved,
                        before=before.model_dump(mode="json"),
                        calendar=calendar,
                        # Kept from the order on, so that a restarted agent reports its
                        # outcome without waiting for the controller to hand it out again.
                        job=job.model_dump(mode="json"),
                    )
                    await driver.write_config(
                        {
                            "upgrade.auto.enable": "true",
                            "upgrade.auto.server.address": self.server.url,
                            "upgrade.auto.version": version,
                        }
                    )
                    await driver.reboot()
            except DeviceError as exc:
                await self._restore(key, journal)
                return _unreachable(exc), {}
            ordered_at = datetime.now(UTC)
            await asyncio.to_thread(
                journal.save, phase="ordered", ordered_at=ordered_at.isoformat()
            )
        before = Snapshot.model_validate(journal.data["before"])
        ordered_at = datetime.fromisoformat(journal.data["ordered_at"])
        await self._progress(uplink, job, "installing", f"to {version}")
        # 5. back?
        after, said = await self._wait_return(key, version, ordered_at)
        evidence: dict[str, Any] = {
            "before": before.model_dump(mode="json"),
            "after": after.model_dump(mode="json") if after else None,
            "update_status": said,
            "server": self.server.url,
        }
        if journal.data.get("calendar"):
            evidence["calendar"] = journal.data["calendar"]
        if after is None and said.get("state") == "CERTIFICATE_CHANGED":
            evidence["checks"] = [
                {"check": "certificate", "ok": False, "detail": said.get("reason", "")[:200]}
            ]
            return (
                JobResult(
                    status="failed",
                    detail="certificate_changed: the unit answers with another certificate; "
                    "check it and re-pin it before it is trusted again",
                    code=FailureCode.CERTIFICATE_CHANGED,
                ),
                evidence,
            )
        if after is None:
            evidence["checks"] = [
                {"check": "returned", "ok": False, "detail": f"silent {self.return_timeout_s:g}s"}
            ]
            return (
                JobResult(
                    status="failed",
                    detail=f"did_not_return: no answer {self.return_timeout_s:g}s after the order",
                    code=FailureCode.DID_NOT_RETURN,
                ),
                evidence,
            )
        # 6. verification against the baseline
        await self._progress(uplink, job, "verifying", f"{after.firmware.version}")
        checks = verify(before, after, version)
        if said.get("state") == "FAILED" and not _same_version(after, version):
            checks.insert(
                0, {"check": "install", "ok": False, "detail": said.get("reason", "")[:200]}
            )
        evidence["checks"] = checks
        evidence["restored"] = await self._restore(key, journal)
        failed = [c for c in checks if not c["ok"]]
        if failed:
            first = failed[0]
            code = (
                FailureCode.INSTALL_FAILED
                if first["check"] == "install"
                else FailureCode.VERIFICATION_FAILED
            )
            detail = f"{first['check']}: {first['detail']}"[:256]
            return JobResult(status="failed", detail=detail, code=code), evidence
        return JobResult(status="done", detail=f"on {version}, verified"), evidence

    async def _wait_out_meetings(
        self, job: Job, key: str, uplink: Uplink, window_end: datetime
    ) -> tuple[JobResult | None, dict[str, Any] | None]:
        """Wait while a meeting overlaps ``[now, now + hop length)``; ``room_booked`` when
        the room stays booked until the window closes. The second item is what the evidence
        says of the calendar: the meeting refused for, or why an unread calendar (off, or
        unreadable) counted as free; None when it was read and the room is free."""
        length = timedelta(seconds=float(job.params.get("hop_length_s") or 0))
        if length <= timedelta(0):
            return None, None
        driver, _pins = await self.poller.driver(key)
        while True:
            now = datetime.now(UTC)
            try:
                async with self.poller.states[key].busy:
                    meetings = await driver.meetings(now, now + length)
            except DeviceError as exc:
                log.info("job %s: room calendar unreadable, counted free: %s", job.id, exc)
                text = f"the room calendar could not be read: {exc.reason}; its room counts as free"
                return None, {"state": "unreadable", "text": text[:256]}
            if meetings is None:
                text = "the unit has no room calendar set up: its room counts as free"
                return None, {"state": "off", "text": text}
            clash = min(
                (m for m in meetings if m.start < now + length and m.end > now),
                key=lambda m: m.start,
                default=None,
            )
            if clash is None:
                return None, None
            shown = f"{clash.start.isoformat()} to {clash.end.isoformat()}"
            if clash.end + length > window_end:
                refusal = JobResult(
                    status="refused",
                    detail=f"room_booked: booked {shown}, no room left in its window",
                    code=FailureCode.ROOM_BOOKED,
                )
                # Start and end only: the subject never leaves the unit.
                said = {
                    "state": "read",
                    "text": f"room booked {shown} until its window closes",
                    "meeting": clash.model_dump(mode="json"),
                }
                return refusal, said
            try:
                progress = JobProgress(
                    status="postponed_booked", detail=f"room booked {shown}", meeting=clash
                )
                await uplink.post_progress(job.id, progress)
            except (ControllerUnavailable, ControllerRefused) as exc:
                log.debug("job %s: progress not posted: %s", job.id, exc)
            await asyncio.sleep(self.call_recheck_s)  # waits-for: the meeting to end

    async def _wait_return(
        self, key: str, version: str, ordered_at: datetime
    ) -> tuple[Snapshot | None, dict[str, str]]:
        """The unit's report once it is back (or has said its update failed), else None."""
        deadline = ordered_at.timestamp() + self.return_timeout_s
        said: dict[str, str] = {}
        while datetime.now(UTC).timestamp() < deadline:
            try:
                snapshot = await self._snapshot(key)
                driver, _pins = await self.poller.driver(key)
                said = await driver.update_status()
            except CertificateMismatch as exc:
                # Back, but not the certificate it was pinned to: nothing it says is trusted.
                return None, {"state": "CERTIFICATE_CHANGED", "version": "", "reason": exc.reason}
            except DeviceError:
                await asyncio.sleep(RETURN_POLL_S)  # waits-for: the unit to come back
                continue
            if _same_version(snapshot, version):
                return snapshot, said
            if said.get("state") == "FAILED":
                return snapshot, said
            if said.get("state") in ("IDLE", "INSTALLED") and snapshot.uptime_s is not None:
                # Back, on the old version, without a word: the install did not take.
                elapsed = datetime.now(UTC).timestamp() - ordered_at.timestamp()
                if snapshot.uptime_s < elapsed:
                    return snapshot, said
            await asyncio.sleep(RETURN_POLL_S)  # waits-for: the install to finish
        return None, said

    async def _restore(self, key: str, journal: Journal) -> dict[str, Any]:
        """Put the unit's own update settings back; say whether that worked."""
        saved = journal.data.get("saved")
        if not isinstance(saved, dict):
            return {"ok": False, "detail": "nothing saved"}
        try:
            driver, _pins = await self.poller.driver(key)
            async with self.poller.states[key].busy:
                await driver.write_config({k: str(v) for k, v in saved.items()})
        except DeviceError as exc:
            return {"ok": False, "detail": f"not restored: {exc.reason}"}
        return {"ok": True, "settings": saved}
