"""``build_controller``: the store the configuration names, the event bus and every service, once.

The server (``controller.app.create_app``) and every CLI command that works without a running
server build the same ``Controller``; the use cases in ``controller.features`` take it as their
first argument. Building does no I/O: ``open()`` opens the store and reads the state into the
services; a store that must already exist (a CLI command's) is checked with ``require_store``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from polyfleet.controller.clock import Clock, system_clock
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.domain.rollout import MIN_WAVE_GAP
from polyfleet.controller.errors import NotFound, Unavailable
from polyfleet.controller.events import EventBus
from polyfleet.controller.services.access import AccessService
from polyfleet.controller.services.admin_sessions import AdminSessionWatch
from polyfleet.controller.services.audit import AuditLog
from polyfleet.controller.services.entitlement import (
    Catalogues,
    ForecastCache,
    Registry,
    VerdictCache,
    catalogue_paths,
    load_plans,
)
from polyfleet.controller.services.inventory import Inventory
from polyfleet.controller.services.jobs import JobService
from polyfleet.controller.services.maintenance import MaintenanceService
from polyfleet.controller.services.packages import PackageService
from polyfleet.controller.services.rollout import DEFAULT_REASSIGN_AFTER, RolloutService
from polyfleet.controller.services.room_calendars import RoomCalendars
from polyfleet.controller.services.ticket_diagnostics import JobDiagnostics
from polyfleet.controller.services.ticket_service import TicketIndex, TicketService
from polyfleet.controller.services.web_sessions import SessionService
from polyfleet.controller.settings.security import security_webhook
from polyfleet.controller.settings.tickets import TicketSettings, ticket_settings
from polyfleet.controller.settings.web import WebSettings, web_settings
from polyfleet.controller.store.base import Store
from polyfleet.controller.store.postgres import PostgresStore
from polyfleet.controller.store.tinydb import TinyDBStore

#: The embedded store's folder inside the data directory.
STORE_DIR = "store"


class NoStore(NotFound):
    """A command that needs a store was pointed at a data directory that holds none."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(
            f"{data_dir} holds no controller store: check --data-dir (or the config's "
            "data_dir); a new store is made by serve or by site add",
            code="no_store",
            field="data_dir",
        )
        self.data_dir = data_dir


class NoDataDir(NotFound):
    """The data directory itself does not exist; nothing is created in its place."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(
            f"{data_dir} holds no controller store (there is no such folder): check "
            "--data-dir (or the config's data_dir); nothing was created",
            code="no_store",
            field="data_dir",
        )
        self.data_dir = data_dir


@dataclass(eq=False)
class TicketDesk:
    """Holds the ticket service once the store is open (it reads its state when built), and
    the index of tickets, which others query from the moment the store is loaded."""

    settings: TicketSettings
    service: TicketService | None = None
    index: TicketIndex = field(default_factory=TicketIndex)

    def get(self) -> TicketService:
        if self.service is None:
            raise Unavailable("the ticket service is starting", code="tickets_unavailable")
        return self.service


@dataclass(eq=False, kw_only=True)
class Controller:
    """Every service of one controller, over one store."""

    config: ControllerConfig
    clock: Clock
    store: Store
    bus: EventBus
    access: AccessService
    inventory: Inventory
    jobs: JobService
    audit: AuditLog
    sessions: SessionService
    web: WebSettings
    catalogues: Catalogues
    registry: Registry
    verdicts: VerdictCache
    forecasts: ForecastCache
    packages: PackageService
    rollouts: RolloutService
    calendars: RoomCalendars
    tickets: TicketDesk
    maintenance: MaintenanceService
    admin_sessions: AdminSessionWatch
    loaded: bool = field(default=False)

    def load(self) -> None:
        """Read the open store's state into the services (after ``store.open()``)."""
        self.bus.load()
        self.inventory.load()
        self.registry.load()
        self.audit.load()
        self.maintenance.load()
        self.tickets.index.load(self.store)
        self.loaded = True

    def start_tickets(self, *, background: bool = True) -> TicketService:
        """The ticket service, built now that the store is open (it restores its detector).

        ``background``: False in an admin command serving the store itself, whose process
        ends with the command: a ticket it fills in or sends is collected and sent by the
        server when it starts.
        """
        config = self.config
        plans_path, _ = catalogue_paths(config.section("entitlement"))
        service = TicketService(
            self.store,
            self.tickets.settings,
            plans=load_plans(plans_path),
            bundle_dir=config.data_dir / "ticket-bundles",
            diagnostics=JobDiagnostics(self.jobs),
            clock=self.clock,
            data_dir=config.data_dir.resolve(),
            index=self.tickets.index,
            inventory=self.inventory,
            registry=self.registry,
            background=background,
            maintenance=self.maintenance,
        )
        self.tickets.service = service
        return service

    async def open(self) -> None:
        """Open the store, read the state and the catalogues (a CLI command's whole start)."""
        await self.store.open()
        self.load()
        await self.catalogues.load()

    async def close(self) -> None:
        await self.bus.close()
        await self.store.close()


def open_store(config: ControllerConfig) -> Store:
    """The store the configuration names: PostgreSQL (``store_url``) or the embedded one."""
    if config.store_url is not None:
        return PostgresStore(config.store_url, advertise_url=config.advertise_url)
    return TinyDBStore(
        config.data_dir / STORE_DIR,
        snapshot_interval_s=config.snapshot_interval_s,
        journal_max_bytes=config.journal_max_bytes,
        retry_max_s=config.write_retry_max_s,
    )


def holds_store(data_dir: Path) -> bool:
    """True when ``data_dir`` holds an embedded controller store."""
    return (data_dir / STORE_DIR / "LOCK").exists()


def require_store(config: ControllerConfig) -> None:
    """Refuse, creating nothing, when the configured embedded store does not exist yet.

    A PostgreSQL database is made by the first controller or command that opens it, like a
    data directory by ``serve``; a mistyped ``--data-dir`` must not become a new empty store.
    """
    if config.store_url is not None:
        return
    if not config.data_dir.is_dir():
        raise NoDataDir(config.data_dir)
    if not holds_store(config.data_dir):
        raise NoStore(config.data_dir)


def build_controller(
    config: ControllerConfig, clock: Clock = system_clock, *, store: Store | None = None
) -> Controller:
    """Every service of a controller over the store ``config`` names (or ``store``).

    Nothing is read or written yet: the server opens the store in its lifecycle (or when it
    becomes active, on PostgreSQL), a command with ``await controller.open()``.
    """
    store = store if store is not None else open_store(config)
    bus = EventBus(store, keep=config.events_keep)
    inventory = Inventory(store, bus, clock, config)
    access = AccessService(
        store,
        bus,
        clock,
        fleet=inventory,
        code_ttl_s=config.enroll_code_ttl_s,
        poll_interval_s=config.poll_interval_s,
    )
    jobs = JobService(
        store,
        bus,
        clock,
        inventory=inventory,
        artifacts_dir=config.data_dir / "artifacts",
        lease_s=config.job_lease_s,
        max_artifact_bytes=config.max_artifact_bytes,
    )
    web = web_settings(config.section("web"))
    packages = PackageService(store, clock, packages_dir=config.data_dir / "packages")
    base = config.source.parent if config.source is not None else Path()
    tickets = TicketDesk(ticket_settings(config.sections, base=base, source=config.source))
    registry = Registry(store, inventory)
    catalogues = Catalogues(*catalogue_paths(config.section("entitlement")))
    calendars = RoomCalendars(store, clock, inventory)
    rollouts = config.section("rollouts")
    maintenance = MaintenanceService(store, clock, inventory)
    audit = AuditLog(store, clock, retention_days=config.audit_retention_days)
    return Controller(
        config=config,
        clock=clock,
        store=store,
        bus=bus,
        access=access,
        inventory=inventory,
        jobs=jobs,
        audit=audit,
        sessions=SessionService(
            store,
            access,
            clock,
            session_ttl_s=web.session_ttl_s,
            kiosk_session_ttl_s=web.kiosk_session_ttl_s,
            link_ttl_s=web.signin_link_ttl_s,
        ),
        web=web,
        catalogues=catalogues,
        registry=registry,
        verdicts=VerdictCache(),
        forecasts=ForecastCache(),
        packages=packages,
        rollouts=RolloutService(
            store,
            bus,
            clock,
            inventory=inventory,
            registry=registry,
            jobs=jobs,
            packages=packages,
            tickets=tickets.index,
            catalogues=catalogues,
            calendars=calendars,
            min_wave_gap=timedelta(
                seconds=float(rollouts.get("min_wave_gap_s", MIN_WAVE_GAP.total_seconds()))
            ),
            reassign_after=timedelta(
                seconds=float(
                    rollouts.get("reassign_after_s", DEFAULT_REASSIGN_AFTER.total_seconds())
                )
            ),
            maintenance=maintenance,
        ),
        calendars=calendars,
        tickets=tickets,
        maintenance=maintenance,
        admin_sessions=AdminSessionWatch(
            store,
            clock,
            inventory,
            audit,
            webhook=security_webhook(config.sections, base=base, source=config.source),
        ),
    )
