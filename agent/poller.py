"""Polls every configured device on its own jittered schedule; the one place poll failures stop."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from polyfleet.agent.config import AgentConfig, DeviceConfig
from polyfleet.agent.drivers import driver_class
from polyfleet.agent.drivers.base import DeviceDriver, DriverContext, Pins
from polyfleet.agent.outbox import Outbox, OutboxFullError
from polyfleet.agent.pins import PinRecord, PinStore
from polyfleet.agent.transport.ledger import SessionLedger
from polyfleet.shared.errors import (
    AuthenticationFailed,
    CertificateMismatch,
    DeviceError,
    DeviceProtocolError,
    DeviceUnreachable,
    DeviceWedged,
    LockedOut,
    NotAPolyDevice,
    PolyfleetError,
    os_error_words,
)
from polyfleet.shared.fingerprint import short_fingerprint
from polyfleet.shared.retry import Backoff
from polyfleet.shared.schema import (
    AgentNotice,
    Firmware,
    Health,
    HealthState,
    Model,
    Problem,
    ProblemCode,
    Provider,
    Snapshot,
    Via,
)

log = logging.getLogger(__name__)

#: Snapshots kept per device for diagnostics bundles.
HISTORY = 5
#: Cross-checks of a unit whose SSH does not answer back off up to 2**this periods.
CROSS_CHECK_MAX_DOUBLINGS = 6
#: Peripheral state when the device was read a way that cannot see peripherals (SSH).
UNKNOWN_STATE = "UNKNOWN"

#: Driver failure -> problem code reported for the device.
ERROR_PROBLEMS: dict[type[DeviceError], ProblemCode] = {
    CertificateMismatch: ProblemCode.CERTIFICATE_CHANGED,
    LockedOut: ProblemCode.LOCKED_OUT,
    AuthenticationFailed: ProblemCode.AUTH_FAILED,
    DeviceUnreachable: ProblemCode.UNREACHABLE,
    DeviceWedged: ProblemCode.API_ERROR,
    NotAPolyDevice: ProblemCode.API_ERROR,
    DeviceProtocolError: ProblemCode.API_ERROR,
}


def problem_for(exc: DeviceError) -> ProblemCode:
    for kind, code in ERROR_PROBLEMS.items():
        if isinstance(exc, kind):
            return code
    return ProblemCode.API_ERROR


@dataclass
class DeviceState:
    """What the poller remembers about one configured device between cycles."""

    device: DeviceConfig
    serial: str = ""
    last: list[Snapshot] = field(default_factory=list)
    history: deque[Snapshot] = field(default_factory=lambda: deque(maxlen=HISTORY))
    password: str | None = None
    backoff_until: float = 0.0
    #: Logins refused in a row (bad credentials, locked out): each waits longer.
    refused_logins: int = 0
    failing: str | None = None
    blocked: DeviceError | None = None
    polls: int = 0
    pinned_serial: str = ""
    #: Held while anything talks to the device: real units dislike parallel sessions.
    busy: asyncio.Lock = field(default_factory=asyncio.Lock)
    device_contacts: int = 0
    #: Successful REST reads, counting towards the next SSH cross-check.
    rest_reads: int = 0
    cross_check_failing: str | None = None
    cross_check_problems: list[Problem] = field(default_factory=list)
    #: Set when SSH refused the credentials: no more SSH attempts (they feed a lockout).
    ssh_refused: str | None = None
    #: Periodic cross-checks wait until this many REST reads after SSH did not answer.
    cross_check_after: int = 0
    cross_check_failures: int = 0


class Poller:
    """One APScheduler job per device; a global semaphore bounds concurrent device sessions.

    Each poll runs under its own deadline, so a hung device only ever costs
    its own slot. Lockouts and refused credentials back off exponentially:
    every login attempt on a locked unit would extend the lockout. A wedged
    REST API is read over SSH; a healthy one is cross-checked over SSH every
    ``ssh_cross_check_every`` polls and whenever it names another unit, model
    or firmware than the last read.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        session: aiohttp.ClientSession,
        outbox: Outbox | None,
        pins: PinStore,
        clock: Callable[[], float] = time.monotonic,
        ledger: SessionLedger | None = None,
    ) -> None:
        self.config = config
        #: The REST sessions open on units, on disk: a killed agent's are closed on restart.
        self.ledger = ledger
        self.session = session
        self.outbox = outbox
        self.pins = pins
        self.clock = clock
        self.states: dict[str, DeviceState] = {d.key: DeviceState(d) for d in config.devices}
        #: A unit that refused a login is left alone a while: another wrong try may lock it.
        self._login_backoff = Backoff(
            first_s=max(config.lockout_backoff_s, 0.0), max_s=config.lockout_backoff_max_s
        )
        self._semaphore = asyncio.Semaphore(config.concurrency)
        self._scheduler: AsyncIOScheduler | None = None
        self._pin_changes: dict[str, dict[str, Any]] = {}
        self._pin_writer: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        #: Polls started by the schedule, one per device at most.
        self._polling: dict[str, asyncio.Task[list[Snapshot]]] = {}
        self._stopping = False
        #: Why the pin store refused a write, while it does (logged once).
        self._pins_failing: str | None = None
        for state in self.states.values():
            state.serial = state.device.serial

    # --- scheduling ---------------------------------------------------------------------

    async def apply_config_pins(self) -> None:
        """Store the config's pins (one rewrite for the whole site) and recall known serials."""
        given = {
            s.device.key: (s.device.tls_fingerprint, s.device.ssh_fingerprint)
            for s in self.states.values()
        }
        records = await asyncio.to_thread(self.pins.apply_config_many, given)
        for key, state in self.states.items():
            state.serial = state.serial or records[key].serial

    def start(self) -> None:
        """Schedule every device; first polls are spread over the jitter window."""
        scheduler = AsyncIOScheduler(timezone=UTC)
        interval = self.config.poll_interval_s
        jitter = self.config.jitter_s
        now = datetime.now(UTC)
        for key in self.states:
            first = now + timedelta(seconds=random.uniform(0, min(jitter, interval)))
            scheduler.add_job(
                self._launch_poll,
                IntervalTrigger(seconds=interval, jitter=jitter or None, timezone=UTC),
                args=[key],
                id=key,
                name=f"poll {key}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(interval)),
                next_run_time=first,
            )
        scheduler.start()
        self._scheduler = scheduler

    async def _launch_poll(self, key: str) -> None:
        """The scheduled job: start a poll this poller owns, unless the last one still runs.

        APScheduler's job returns at once, so stopping never cancels a job under
        APScheduler (which logs that as an error with a traceback); the polls
        themselves are ended quietly by :meth:`stop`.
        """
        if self._stopping:
            return
        running = self._polling.get(key)
        if running is not None and not running.done():
            log.debug("%s: previous poll still running; skipping this turn", key)
            return
        task = asyncio.create_task(self.poll_device(key), name=f"poll {key}")
        self._polling[key] = task
        task.add_done_callback(lambda done: self._forget_poll(key, done))

    def _forget_poll(self, key: str, task: asyncio.Task[list[Snapshot]]) -> None:
        if self._polling.get(key) is task:
            del self._polling[key]

    async def stop(self) -> None:
        """Stop scheduling and end polls in flight quietly (REST sessions still log out)."""
        self._stopping = True
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            scheduler.pause()
            # Jobs already handed to the event loop run their (instant) first step
            # now, so the shutdown below has no unstarted job to cancel and log.
            await asyncio.sleep(0)  # waits-for: one loop turn for submitted jobs
            scheduler.shutdown(wait=False)
        inflight = list(self._inflight | set(self._polling.values()))
        for task in inflight:
            task.cancel()
        await asyncio.gather(*inflight, return_exceptions=True)
        if self._pin_writer is not None:
            await asyncio.gather(self._pin_writer, return_exceptions=True)

    async def sweep(self) -> list[Snapshot]:
        """Poll every device once, concurrently (bounded); returns what was reported."""
        results = await asyncio.gather(*(self.poll_device(key) for key in self.states))
        return [s for result in results for s in result]

    # --- one device ---------------------------------------------------------------------

    def driver_for(self, state: DeviceState, password: str, pins: Pins) -> DeviceDriver:
        context = DriverContext(
            session=self.session,
            pins=pins,
            request_timeout_s=self.config.device_timeout_s,
            ledger=self.ledger,
        )
        return driver_class(state.device)(state.device, password, context)

    async def driver(self, key: str) -> tuple[DeviceDriver, Pins]:
        """A driver for ``key`` holding the device to its current pins (for jobs)."""
        state = self.states[key]
        record = await asyncio.to_thread(self.pins.get, key)
        pins = Pins(tls=record.tls, ssh=record.ssh)
        return self.driver_for(state, await self._password(state), pins), pins

    def find(self, serial: str) -> str | None:
        """The configured device whose serial (or whose camera's serial) is ``serial``."""
        for key, state in self.states.items():
            if state.serial == serial or any(s.serial == serial for s in state.last):
                return key
        return None

    async def _password(self, state: DeviceState) -> str:
        if state.password is None:
            state.password = await asyncio.to_thread(state.device.password.read)
        return state.password

    async def poll_device(self, key: str) -> list[Snapshot]:
        """Poll one device and spool its snapshots; never raises (this is the poll boundary)."""
        state = self.states[key]
        state.polls += 1
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            snapshots = await self._poll(state)
            if snapshots:
                # Read after the poll: a change this poll found is already pending.
                record = await asyncio.to_thread(self.pins.get, key)
                snapshots = self._mark_unreviewed(state, record, snapshots)
        except Exception:  # the boundary: one broken device must not stop the others
            log.exception("%s: unexpected failure while polling", key)
            return []
        finally:
            if task is not None:
                self._inflight.discard(task)
        if self.outbox is not None:
            for snapshot in snapshots:
                try:
                    await self.outbox.put(snapshot)
                except OutboxFullError as exc:
                    log.warning("%s: %s", key, exc)
                except Exception:  # still the boundary: a poll task never ends in an error
                    log.exception("%s: the outbox did not take a report", key)
        return snapshots

    async def _poll(self, state: DeviceState) -> list[Snapshot]:
        key = state.device.key
        now = self.clock()
        if state.blocked is not None and now < state.backoff_until:
            # Backing off: report what we know without touching the device, since every
            # login attempt on a locked unit extends its lockout.
            return self._failure_snapshots(state, state.blocked)
        try:
            password = await self._password(state)
        except PolyfleetError as exc:
            if state.failing != str(exc):
                log.error("%s: %s", key, exc)
            state.failing = str(exc)
            return []
        record = await asyncio.to_thread(self.pins.get, key)
        pins = Pins(tls=record.tls, ssh=record.ssh)
        driver = self.driver_for(state, password, pins)
        # One session per device at a time (a job may be using it); then a global slot.
        async with state.busy, self._semaphore:
            state.device_contacts += 1
            try:
                async with asyncio.timeout(self.config.device_timeout_s):
                    if record.tls is None and not self.config.trust_on_first_use:
                        await self._refuse_unpinned(state)
                    try:
                        snapshots = await driver.poll()
                    except (DeviceWedged, DeviceUnreachable, DeviceProtocolError) as exc:
                        if not state.device.ssh_port or state.ssh_refused is not None:
                            raise
                        try:
                            snapshots = await driver.poll_fallback(exc)
                        except CertificateMismatch:
                            raise  # a changed SSH host key is news in itself
                        except (AuthenticationFailed, LockedOut) as ssh_exc:
                            self._ssh_refused(state, ssh_exc)
                            raise exc from None
                        except DeviceError:
                            raise exc from None
            except TimeoutError:
                error: DeviceError = DeviceUnreachable(
                    f"{key}: no complete answer within {self.config.device_timeout_s:g}s",
                    host=state.device.host,
                )
                return await self._failed(state, error)
            except DeviceError as exc:
                return await self._failed(state, exc)
            if snapshots and snapshots[0].via is Via.REST:
                state.rest_reads += 1
                if self._cross_check_due(state, snapshots[0]):
                    snapshots = await self._cross_check(state, driver, snapshots)
        await self._learn_pins(state, pins, record.tls, record.ssh, snapshots)
        if state.failing is not None:
            log.info("%s: answering again (was: %s)", key, state.failing)
        state.failing = None
        state.blocked = None
        state.refused_logins = 0
        snapshots = self._fill_from_last(state, snapshots)
        state.serial = snapshots[0].serial
        state.last = snapshots
        state.history.append(snapshots[0])
        return snapshots

    def _mark_unreviewed(
        self, state: DeviceState, record: PinRecord, snapshots: list[Snapshot]
    ) -> list[Snapshot]:
        """Every report of a device whose new certificate or host key waits for review says so.

        A changed certificate fails every REST poll, so each report says so anyway; a
        changed SSH host key is only seen when SSH is used (a cross-check every few
        polls), while REST keeps answering. Until ``polyfleet agent pins accept`` (or a
        pin in the config) settles it, the device's own report carries the problem.
        """
        if not (record.pending_ssh or record.pending_tls):
            return snapshots
        host = snapshots[0]
        if any(p.code is ProblemCode.CERTIFICATE_CHANGED for p in host.health.problems):
            return snapshots
        changed = []
        if record.pending_tls:
            changed.append(
                f"certificate (device {short_fingerprint(record.pending_tls)}, "
                f"pinned {short_fingerprint(record.tls) if record.tls else 'none'})"
            )
        if record.pending_ssh:
            changed.append(
                f"SSH host key (device {short_fingerprint(record.pending_ssh)}, "
                f"pinned {short_fingerprint(record.ssh) if record.ssh else 'none'})"
            )
        detail = (
            f"the device's {' and '.join(changed)} changed; not trusted until an admin "
            f"checks it and runs: polyfleet agent pins accept {state.serial or state.device.host}"
        )
        problems = [
            *host.health.problems,
            Problem(code=ProblemCode.CERTIFICATE_CHANGED, detail=detail[:256]),
        ]
        marked = host.model_copy(update={"health": Health.from_problems(problems[-64:])})
        return [marked, *snapshots[1:]]

    def _ssh_refused(self, state: DeviceState, exc: DeviceError) -> None:
        """SSH refused the login: stop trying it, since failed logins lead to a lockout."""
        state.ssh_refused = exc.reason
        log.warning(
            "%s: SSH refused the login (%s); no SSH fallback or cross-check for this device "
            "until its password is read again (after a REST login failure or a restart)",
            state.device.key,
            exc.reason,
        )

    def _cross_check_due(self, state: DeviceState, snapshot: Snapshot) -> bool:
        """Every Nth REST read, and whenever REST names another unit, model or firmware.

        Devices are spread over the N cycles (a stable offset per device), so a
        site never opens all its SSH sessions in the same cycle.
        """
        if not state.device.ssh_port or state.ssh_refused is not None:
            return False
        last = state.last[0] if state.last else None
        if state.serial and snapshot.serial != state.serial:
            return True
        if (
            last is not None
            and last.via is Via.REST
            and (last.model, last.firmware) != (snapshot.model, snapshot.firmware)
        ):
            return True
        every = self.config.ssh_cross_check_every
        if every <= 0 or state.rest_reads < state.cross_check_after:
            return False
        offset = zlib.crc32(state.device.key.encode()) % every
        return (state.rest_reads + offset) % every == 0

    async def _cross_check(
        self, state: DeviceState, driver: DeviceDriver, snapshots: list[Snapshot]
    ) -> list[Snapshot]:
        """Compare what REST said with the SSH command line; a mismatch is a problem."""
        key = state.device.key
        host = snapshots[0]
        try:
            async with asyncio.timeout(self.config.device_timeout_s):
                problems = await driver.cross_check(host)
        except CertificateMismatch as exc:
            await self._pin_changed(state, exc)
            problems = [Problem(code=ProblemCode.CERTIFICATE_CHANGED, detail=_short(exc))]
        except (AuthenticationFailed, LockedOut) as exc:
            self._ssh_refused(state, exc)
            return snapshots
        except (DeviceError, TimeoutError) as exc:
            # SSH may be switched off on the unit: REST answered, so this is not a fault.
            reason = exc.reason if isinstance(exc, DeviceError) else "no SSH answer in time"
            if state.cross_check_failing != reason:
                log.info("%s: SSH cross-check not possible (%s)", key, reason)
            state.cross_check_failing = reason
            # A filtered port costs a whole timeout in a concurrency slot: ask ever less often.
            state.cross_check_failures += 1
            pause = max(1, self.config.ssh_cross_check_every)
            pause *= 2 ** min(state.cross_check_failures, CROSS_CHECK_MAX_DOUBLINGS)
            state.cross_check_after = state.rest_reads + pause
            return snapshots
        state.cross_check_failing = None
        state.cross_check_failures = 0
        state.cross_check_after = 0
        if not problems:
            return snapshots
        if state.cross_check_problems != problems:
            log.warning("%s: %s", key, "; ".join(p.detail for p in problems))
        state.cross_check_problems = problems
        merged = [*host.health.problems, *problems][:64]
        return [host.model_copy(update={"health": Health.from_problems(merged)}), *snapshots[1:]]

    async def _refuse_unpinned(self, state: DeviceState) -> None:
        """Without trust on first use, an unpinned device waits for ``pins accept``."""
        from polyfleet.agent.transport.rest import fetch_certificate_fingerprint

        device = state.device
        seen = await fetch_certificate_fingerprint(
            device.host, device.rest_port, timeout=self.config.device_timeout_s
        )
        raise CertificateMismatch(
            f"{device.key}: the device's certificate ({short_fingerprint(seen)}) is not pinned "
            "and trust_on_first_use is false",
            host=device.host,
            seen=seen,
            pinned="",
        )

    async def _failed(self, state: DeviceState, exc: DeviceError) -> list[Snapshot]:
        key = state.device.key
        if state.failing != exc.reason:
            # Log the first failure of a kind, not every repeat (the poll boundary's habit).
            log.warning("%s: %s (%s)", key, exc.reason, exc)
        state.failing = exc.reason
        if isinstance(exc, AuthenticationFailed | LockedOut):
            state.password = None  # re-read: the admin may have fixed the file
            state.ssh_refused = None
            state.refused_logins += 1
            state.backoff_until = self.clock() + self._login_backoff.delay(state.refused_logins)
            state.blocked = exc
        if isinstance(exc, CertificateMismatch):
            await self._pin_changed(state, exc)
        return self._failure_snapshots(state, exc)

    async def _pin_changed(self, state: DeviceState, exc: CertificateMismatch) -> None:
        """Keep the new fingerprint for review; the first sighting is logged and told upstream."""
        try:
            message = await asyncio.to_thread(self._record_pending, state, exc)
        except OSError as exc_disk:
            self._pins_unsaved(exc_disk)
            return
        if message is None or self.outbox is None:
            return
        notice = AgentNotice(kind="certificate_changed", detail=message[:256], at=datetime.now(UTC))
        try:
            await self.outbox.put_notice(notice)
        except OutboxFullError as exc_full:
            log.warning("%s: cannot queue the notice: %s", state.device.key, exc_full)

    def _record_pending(self, state: DeviceState, exc: CertificateMismatch) -> str | None:
        """Store a changed fingerprint as pending; returns what was logged when it is new."""
        record = self.pins.get(state.device.key)
        # Certificate and host key fingerprints differ, so the pin says which one changed.
        field_name = "pending_ssh" if record.ssh and exc.pinned == record.ssh else "pending_tls"
        if getattr(record, field_name) == exc.seen:
            return None
        what = "SSH host key" if field_name == "pending_ssh" else "certificate"
        message = (
            f"{state.serial or state.device.key}: the device's {what} changed "
            f"(device {short_fingerprint(exc.seen)}, "
            f"pinned {short_fingerprint(exc.pinned) if exc.pinned else 'none'}); "
            "not trusted until an admin checks it and runs: "
            f"polyfleet agent pins accept {state.serial or state.device.host}"
        )
        self.pins.update(state.device.key, **{field_name: exc.seen})
        log.warning("%s: %s", state.device.key, message)
        return message

    def _failure_snapshots(self, state: DeviceState, exc: DeviceError) -> list[Snapshot]:
        code = problem_for(exc)
        problem = Problem(code=code, detail=_short(exc))
        now = datetime.now(UTC)
        if not state.last and not state.serial:
            return []
        base = state.last or [
            Snapshot(
                serial=state.serial,
                model=Model.UNKNOWN,
                firmware=Firmware(),
                provider=Provider.UNKNOWN,
                health=Health(state=HealthState.OK),
                collected_at=now,
                via=Via.REST,
            )
        ]
        result = []
        for snapshot in base:
            health = Health.from_problems([problem])
            result.append(
                snapshot.model_copy(
                    update={
                        "health": health,
                        "collected_at": now,
                        "uptime_s": None,
                        "in_call": False if code is ProblemCode.UNREACHABLE else snapshot.in_call,
                        # Not read this time: the last poll's sessions may have ended since.
                        "sessions": None,
                    }
                )
            )
        return result

    def _fill_from_last(self, state: DeviceState, snapshots: list[Snapshot]) -> list[Snapshot]:
        """An SSH read cannot see provider or peripherals: keep what REST saw last.

        Peripherals keep their identity but not their state (``UNKNOWN``), and a
        camera with its own entry (E70) is still reported, as ``api_error`` with
        "state unknown": claiming it fine would be a guess, dropping it would
        look like the camera is gone.
        """
        if not snapshots or snapshots[0].via is not Via.SSH or not state.last:
            return snapshots
        last = state.last[0]
        first = snapshots[0]
        update: dict[str, Any] = {}
        if first.provider is Provider.UNKNOWN:
            update["provider"] = last.provider
        if not first.peripherals:
            update["peripherals"] = [
                p.model_copy(update={"state": UNKNOWN_STATE}) for p in last.peripherals
            ]
        host = first.model_copy(update=update)
        cause = next(
            (p.detail for p in first.health.problems if p.code is ProblemCode.API_ERROR),
            "REST does not answer",
        )
        seen = {s.serial for s in snapshots}
        cameras = []
        for camera in state.last[1:]:
            if camera.serial in seen or camera.host_serial != host.serial:
                continue
            problem = Problem(
                code=ProblemCode.API_ERROR,
                detail=(
                    f"state unknown: host {host.serial} answers over SSH only ({cause}); "
                    "cameras are read through its REST API"
                )[:256],
            )
            cameras.append(
                camera.model_copy(
                    update={
                        "health": Health.from_problems([problem]),
                        "collected_at": host.collected_at,
                        "in_call": host.in_call,
                        "uptime_s": None,
                        "via": Via.SSH,
                    }
                )
            )
        return [host, *snapshots[1:], *cameras]

    async def _learn_pins(
        self,
        state: DeviceState,
        pins: Pins,
        had_tls: str | None,
        had_ssh: str | None,
        snapshots: list[Snapshot],
    ) -> None:
        changes: dict[str, Any] = {}
        if had_tls is None and pins.seen_tls and self.config.trust_on_first_use:
            changes["tls"] = pins.seen_tls
            log.info("%s: pinned certificate %s on first use", state.device.key, pins.seen_tls)
        if had_ssh is None and pins.seen_ssh and self.config.trust_on_first_use:
            changes["ssh"] = pins.seen_ssh
        serial = snapshots[0].serial if snapshots else ""
        if serial and state.pinned_serial != serial:
            record = await asyncio.to_thread(self.pins.get, state.device.key)
            if record.serial != serial:
                changes["serial"] = serial
            state.pinned_serial = serial
        if changes:
            await self._save_pins(state.device.key, changes)

    async def _save_pins(self, key: str, changes: dict[str, Any]) -> None:
        """Queue pin changes; polls finishing together share one locked rewrite of the store."""
        self._pin_changes.setdefault(key, {}).update(changes)
        if self._pin_writer is None or self._pin_writer.done():
            self._pin_writer = asyncio.create_task(self._write_pins())
        await asyncio.shield(self._pin_writer)

    async def _write_pins(self) -> None:
        while self._pin_changes:
            await asyncio.sleep(0)  # let polls finishing in this tick join the same write
            changes, self._pin_changes = self._pin_changes, {}
            try:
                await asyncio.to_thread(self.pins.update_many, changes)
            except OSError as exc:
                # Unsaved, the pins are learned again on the next poll; the report still goes.
                self._pins_unsaved(exc)
                for key in changes:
                    self.states[key].pinned_serial = ""
                return
            self._pins_failing = None

    def _pins_unsaved(self, exc: OSError) -> None:
        reason = os_error_words(exc)
        if self._pins_failing != reason:
            log.error(
                "cannot store pins in %s (%s): first-contact pins and changed certificates "
                "are not kept, and are offered again on each poll until the disk takes writes",
                self.pins.path,
                reason,
            )
        self._pins_failing = reason


def _short(exc: DeviceError) -> str:
    """A device failure as a report's problem text: words only (messages never hold objects)."""
    if isinstance(exc, CertificateMismatch):
        # Its message already says what differs, and from which pin.
        return str(exc)[:256]
    return f"{exc.reason}: {exc}"[:256]
