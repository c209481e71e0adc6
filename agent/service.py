"""The running agent: poller, outbox, uplink and jobs wired together (``polyfleet agent run``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp

from polyfleet.agent.config import AgentConfig, InsecureUplinkRefused, check_controller_url
from polyfleet.agent.delivery import ReportSender
from polyfleet.agent.drivers import check_drivers
from polyfleet.agent.firmware import FirmwareUpdater
from polyfleet.agent.held import HeldReports
from polyfleet.agent.jobs import JobRunner
from polyfleet.agent.outbox import Outbox
from polyfleet.agent.pins import PinStore
from polyfleet.agent.poller import Poller
from polyfleet.agent.status import StatusServer
from polyfleet.agent.transport.ledger import SessionLedger
from polyfleet.agent.update_server import PackageCache, SiteUpdateServer
from polyfleet.agent.uplink import (
    ControllerRefused,
    ControllerUnavailable,
    Credential,
    Uplink,
    ssl_context_for,
)
from polyfleet.shared.errors import ConfigError, DeviceError, PolyfleetError, ProtocolError
from polyfleet.shared.periodic import Periodic
from polyfleet.shared.retry import Backoff
from polyfleet.shared.schema import AgentNotice, Meeting, RoomCalendarReport

log = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"
#: The first wait after a failed enrollment; later ones double up to ``backoff_max_s``.
ENROLL_RETRY_S = 1.0
#: Waits are drawn from the upper half of the back-off, so agents of a controller that
#: restarted do not all come back at the same moment.
UPLINK_JITTER = 0.5
HELD_DIR = "held"
#: Poll intervals of silence after which the controller calls a device unreachable.
SILENCE_POLLS = 3


async def enroll(
    config_or_url: AgentConfig | str | Sequence[str],
    code: str,
    *,
    credential_path: Path,
    agent_name: str = "",
    ca_file: Path | None = None,
    allow_insecure_uplink: bool = False,
) -> Credential:
    """Exchange a one-time enrollment code for this agent's credential and store it (mode 0600).

    A plain http:// URL off this machine is refused (ConfigError) before the code is
    sent, unless ``allow_insecure_uplink`` (or the config's key) says otherwise.
    With several controller URLs the code goes to the one answering as active, and the
    credential keeps them all.
    """
    if isinstance(config_or_url, AgentConfig):
        urls = list(config_or_url.controller_urls or (config_or_url.controller_url,))
        ca_file = ca_file or config_or_url.controller_ca_file
        allow_insecure_uplink = allow_insecure_uplink or config_or_url.allow_insecure_uplink
    elif isinstance(config_or_url, str):
        urls = [config_or_url]
    else:
        urls = list(config_or_url)
    urls = list(dict.fromkeys(url.rstrip("/") for url in urls if url))
    if not urls:
        raise ConfigError("no controller URL (give --controller or controller.url)")
    # The caller says what a plain-HTTP URL that is allowed means (the CLI, the service).
    for url in urls:
        check_controller_url(url, allow_insecure=allow_insecure_uplink)
    # The code works once: make sure the credential can be stored before spending it.
    await asyncio.to_thread(Credential.check_writable, credential_path)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        uplink = Uplink(urls, session=session, ssl_context=ssl_context_for(ca_file))
        answer = await uplink.enroll(code, agent_name=agent_name)
    credential = Credential(
        controller_url=uplink.base_url,
        controller_urls=tuple(urls) if len(urls) > 1 else (),
        agent_id=answer.agent_id,
        site_id=answer.site_id,
        token=answer.token,
        poll_interval_s=answer.poll_interval_s,
    )
    await asyncio.to_thread(credential.save, credential_path)
    return credential


class AgentService:
    """Everything ``polyfleet agent run`` does, startable in-process (``start``/``stop``)."""

    def __init__(self, config: AgentConfig) -> None:
        check_drivers(config)
        #: What to say about the uplink at start (plain http:// allowed); refusals raise here.
        self.uplink_warning = config.check_uplink()
        self.config = config
        self.outbox = Outbox(
            config.data_dir / OUTBOX_DIR,
            max_bytes=config.outbox_max_bytes,
            segment_bytes=config.outbox_segment_bytes,
        )
        self.held = HeldReports(config.data_dir / HELD_DIR, max_bytes=config.held_max_bytes)
        self.sender = ReportSender(
            self.outbox,
            self.held,
            batch_size=config.batch_size,
            held_retry_s=config.held_retry_s,
        )
        self.pins = PinStore(config.data_dir)
        self.credential: Credential | None = None
        self.session: aiohttp.ClientSession | None = None
        self.poller: Poller | None = None
        self.jobs: JobRunner | None = None
        self.package_cache = PackageCache(
            config.data_dir / "packages", max_bytes=config.updates_cache_max_bytes
        )
        self.update_server = SiteUpdateServer(
            self.package_cache,
            listen=config.updates_listen,
            advertise=config.updates_advertise,
            cert_dir=config.data_dir / "update-server",
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.started_at: datetime | None = None
        #: Why the last attempt to send did not work (None: it did, or none was made yet).
        self.uplink_error: str | None = None
        self.last_sent_at: datetime | None = None
        self.status_server = StatusServer(self.status, listen=config.status_listen)

    @property
    def batches_sent(self) -> int:
        return self.sender.batches_sent

    async def start(self) -> None:
        config = self.config
        await asyncio.to_thread(config.data_dir.mkdir, parents=True, exist_ok=True)
        await self.outbox.open()
        await self.held.open()
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar()
        )
        ledger = await asyncio.to_thread(SessionLedger, config.data_dir)
        self.poller = Poller(
            config, session=self.session, outbox=self.outbox, pins=self.pins, ledger=ledger
        )
        await self.poller.apply_config_pins()
        await self.outbox.put_notice(
            AgentNotice(
                kind="agent_started",
                detail=f"{len(config.devices)} devices configured",
                at=datetime.now(UTC),
            )
        )
        await self.update_server.start()
        self.started_at = datetime.now(UTC)
        await self.status_server.start()
        self.poller.start()
        if self.uplink_warning:
            log.warning("%s", self.uplink_warning)
        self._tasks.append(asyncio.create_task(self._send_loop(), name="outbox sender"))
        self._tasks.append(asyncio.create_task(self._job_puller().run(), name="job puller"))
        self._tasks.append(
            asyncio.create_task(self._calendar_reader().run(), name="calendar reader")
        )
        log.info(
            "agent started: %d devices, poll every %gs, outbox %s",
            len(config.devices),
            config.poll_interval_s,
            self.outbox.directory,
        )

    async def stop(self) -> None:
        self._stopping.set()
        if self.poller is not None:
            await self.poller.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.jobs is not None:
            await self.jobs.stop()
        await self.update_server.stop()
        await self.status_server.stop()
        await self.outbox.close()
        log.info(
            "agent stopped: this run the outbox took %d reports, dropped %d when full, "
            "%d entries wait for the controller",
            self.outbox.taken_total,
            self.outbox.dropped_total,
            len(self.outbox),
        )
        await self.held.close()
        if self.session is not None:
            await self.session.close()
            self.session = None

    def status(self) -> dict[str, Any]:
        """What ``polyfleet agent status`` shows (``GET /status``): problems in words first."""
        health = self.outbox.health
        problems: list[str] = []
        if not health.disk_ok:
            problems.append(f"outbox: {health.problem}; {health.action}")
        if self.uplink_error is not None:
            problems.append(f"uplink: {self.uplink_error}; reports wait in the outbox")
        failing = []
        answering = 0
        if self.poller is not None:
            for key, state in self.poller.states.items():
                if state.failing is None:
                    if state.polls:
                        answering += 1
                    continue
                failing.append({"device": key, "serial": state.serial, "reason": state.failing})
        credential = self.credential
        return {
            "agent": {
                "name": self.config.agent_name,
                "config": self.config.source,
                "data_dir": str(self.config.data_dir),
                "started_at": _iso(self.started_at),
            },
            "healthy": not problems,
            "problems": problems,
            "outbox": {
                "directory": str(self.outbox.directory),
                "entries": len(self.outbox),
                "bytes": self.outbox.size_bytes,
                "max_bytes": self.outbox.max_bytes,
                "disk_ok": health.disk_ok,
                "problem": health.problem,
                "action": health.action,
                "since": _iso(health.since),
                "memory_entries": health.memory_entries,
                "write_failures": health.write_failures,
                "taken_total": self.outbox.taken_total,
                "dropped_total": self.outbox.dropped_total,
                "refused_total": self.outbox.refused_total,
            },
            "uplink": {
                "controller_url": self.config.controller_url
                or (credential.controller_url if credential else ""),
                "enrolled": credential is not None,
                "ok": self.uplink_error is None and self.last_sent_at is not None,
                "error": self.uplink_error,
                "last_sent_at": _iso(self.last_sent_at),
                "batches_sent": self.sender.batches_sent,
            },
            "held": {"reports": len(self.held)},
            "devices": {
                "configured": len(self.config.devices),
                "answering": int(answering),
                "failing": failing,
            },
        }

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # --- the controller side ------------------------------------------------------------

    async def _credential(self) -> Credential | None:
        """Load the stored credential; enroll with the configured code when there is none."""
        if self.credential is not None:
            return self.credential
        path = self.config.credential_path
        if await asyncio.to_thread(path.exists):
            credential = await asyncio.to_thread(Credential.load, path)
            if not self.config.controller_url:
                # The URLs enrollment stored are the ones used: they get the same scrutiny.
                for url in credential.urls:
                    warning = check_controller_url(
                        url,
                        allow_insecure=self.config.allow_insecure_uplink,
                        where=f"{path}: controller_url",
                    )
                    if warning and warning != self.uplink_warning:
                        self.uplink_warning = warning
                        log.warning("%s", warning)
            self.credential = credential
        elif self.config.enrollment_code is not None and self.config.controller_url:
            code = await asyncio.to_thread(self.config.enrollment_code.read)
            self.credential = await enroll(
                self.config,
                code,
                credential_path=path,
                agent_name=self.config.agent_name,
            )
            log.info(
                "enrolled as agent %s of site %s", self.credential.agent_id, self.credential.site_id
            )
        else:
            return None
        slowest = self.config.poll_interval_s + self.config.jitter_s
        expected = self.credential.poll_interval_s
        if expected > 0 and slowest >= SILENCE_POLLS * expected:
            # The controller calls a device unreachable after that many of its intervals.
            log.warning(
                "agent.poll_interval_s %gs (+ jitter %gs) is not below %d x the controller's "
                "poll interval of %ds: its devices will look unreachable between polls",
                self.config.poll_interval_s,
                self.config.jitter_s,
                SILENCE_POLLS,
                expected,
            )
        return self.credential

    def _uplink(self, credential: Credential) -> Uplink:
        assert self.session is not None
        return Uplink(
            self.config.controller_urls or credential.urls,
            session=self.session,
            token=credential.token,
            ssl_context=ssl_context_for(self.config.controller_ca_file),
        )

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _send_loop(self) -> None:
        attempt = 0
        told_unenrolled = False
        told_refused = False
        down_since: str | None = None
        cap = self.config.backoff_max_s
        enroll_backoff = Backoff(first_s=ENROLL_RETRY_S, max_s=cap, jitter=UPLINK_JITTER)
        send_backoff = Backoff(first_s=self.config.send_interval_s, max_s=cap, jitter=UPLINK_JITTER)
        while not self._stopping.is_set():
            try:
                credential = await self._credential()
            except InsecureUplinkRefused as exc:
                # Nothing to retry until the admin changes something: say so once, keep reports.
                if not told_refused:
                    told_refused = True
                    log.error("not sending reports, they stay in the outbox: %s", exc)
                await self._pause(cap)
                continue
            except PolyfleetError as exc:
                attempt += 1
                log.warning("cannot enroll yet: %s", exc)
                await self._pause(enroll_backoff.delay(attempt))
                continue
            if credential is None:
                if not told_unenrolled:
                    told_unenrolled = True
                    log.warning(
                        "not enrolled: no credential at %s and no enrollment code configured; "
                        "reports stay in the outbox until `polyfleet agent enroll` is run",
                        self.config.credential_path,
                    )
                await self._pause(self.config.send_interval_s)
                continue
            await self.outbox.wait_for_entries(self.config.send_interval_s)
            uplink = self._uplink(credential)
            try:
                if self.sender.held_due():
                    await self.sender.retry_held(uplink)
                if not await self.sender.send_once(uplink):
                    continue
            except (ControllerUnavailable, ControllerRefused, ProtocolError) as exc:
                attempt += 1
                self.uplink_error = str(exc)
                if down_since is None:
                    down_since = str(exc)
                    log.warning(
                        "controller not taking reports (%s); keeping them in the outbox", exc
                    )
                await self._pause(send_backoff.delay(attempt))
                continue
            except Exception as exc:  # a disk error must not end sending for good
                attempt += 1
                self.uplink_error = "sending failed inside the agent (its log has details)"
                if down_since != repr(exc):
                    log.exception("sending reports failed; retrying")
                down_since = repr(exc)
                await self._pause(send_backoff.delay(attempt))
                continue
            if down_since is not None:
                log.info("controller taking reports again; %d still queued", len(self.outbox))
            down_since = None
            attempt = 0
            self.uplink_error = None
            self.last_sent_at = datetime.now(UTC)

    def _job_puller(self) -> Periodic:
        """Jobs pulled every ``jobs_interval_s``, backing off while the controller fails."""
        return Periodic(
            "job pull",
            self._pull_jobs,
            interval_s=self.config.jobs_interval_s,
            expected=(ControllerUnavailable, ControllerRefused, ProtocolError),
            backoff=Backoff(
                first_s=self.config.jobs_interval_s,
                max_s=self.config.backoff_max_s,
                jitter=UPLINK_JITTER,
            ),
            logger=log,
        )

    def _calendar_reader(self) -> Periodic:
        """Room calendars read every ``[updates] calendar_interval_s`` for rollout plans."""
        return Periodic(
            "calendar read",
            self._read_calendars,
            interval_s=self.config.updates_calendar_interval_s,
            expected=(ControllerUnavailable, ControllerRefused, ProtocolError),
            backoff=Backoff(
                first_s=self.config.updates_calendar_interval_s,
                max_s=max(self.config.backoff_max_s, self.config.updates_calendar_interval_s),
                jitter=UPLINK_JITTER,
            ),
            logger=log,
        )

    async def _read_calendars(self) -> None:
        """Each unit's meetings from now to ``calendar_ahead_s`` on, sent up in one batch: a
        unit without a calendar says ``off``, one that cannot say ``unreadable`` (free, both)."""
        credential = self.credential
        if credential is None or self.poller is None:
            return
        poller = self.poller
        start = datetime.now(UTC)
        end = start + timedelta(seconds=self.config.updates_calendar_ahead_s)
        readings: list[RoomCalendarReport] = []
        for key, state in poller.states.items():
            serial = state.serial
            if not serial:
                continue  # never polled yet: its serial is not known
            state_text: Literal["read", "off", "unreadable"] = "read"
            detail = ""
            meetings: list[Meeting] = []
            try:
                driver, _pins = await poller.driver(key)
                async with state.busy:
                    found = await driver.meetings(start, end)
            except DeviceError as exc:
                state_text, detail = "unreadable", f"{exc.reason}: {exc}"[:256]
            else:
                if found is None:
                    state_text = "off"
                else:
                    meetings = found
            readings.append(
                RoomCalendarReport(
                    serial=serial,
                    state=state_text,
                    detail=detail,
                    read_at=datetime.now(UTC),
                    start=start,
                    end=end,
                    meetings=meetings[:500],
                )
            )
        if readings:
            await self._uplink(credential).post_calendars(readings)

    async def _pull_jobs(self) -> None:
        """Hand the controller's new jobs to the runner (none before enrollment)."""
        credential = self.credential
        if credential is None or self.poller is None:
            return
        uplink = self._uplink(credential)
        if self.jobs is None:
            updater = FirmwareUpdater(
                self.poller,
                self.package_cache,
                self.update_server,
                journal_dir=self.config.data_dir / "updates",
                return_timeout_s=self.config.updates_return_timeout_s,
                call_recheck_s=self.config.updates_call_recheck_s,
            )
            self.jobs = JobRunner(self.poller, uplink, updater=updater)
            # An install cut off by a restart: its outcome is reported as soon as the unit
            # answers, not when the controller's lease hands the job out again.
            for job in await asyncio.to_thread(updater.interrupted):
                log.info("job %s (%s): resumed from its update journal", job.id, job.serial)
                self.jobs.submit(job)
        listing = await uplink.pull_jobs()
        for job in listing.jobs:
            self.jobs.submit(job)


def run_service(config: AgentConfig) -> int:
    """Run until SIGTERM/SIGINT (``polyfleet agent run``)."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await AgentService(config).run_until(stop)

    asyncio.run(main())
    return 0


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")
