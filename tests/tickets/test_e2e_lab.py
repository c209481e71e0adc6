"""End to end: a lab device's camera fails, the real agent reports it, a ticket reaches the desk."""

from __future__ import annotations

import gzip
import json
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp
from testkit.site_agents import (
    lab_agent_config,
    lab_password_file,
    start_enrolled_agent,
)
from testkit.waiting import wait_until

from polyfleet.agent.service import AgentService
from polyfleet.controller.core import TicketDesk
from polyfleet.controller.events import Event, SnapshotsIngested
from polyfleet.controller.testing import running_controller
from polyfleet.shared.schema import ProblemCode, Snapshot
from polyfleet.simulator.fleet import DeviceSpec, PeripheralSpec
from polyfleet.simulator.lab import Lab
from polyfleet.simulator.testing import make_device, start_lab
from tickets.conftest import SmtpPeer, WebhookPeer, ticket_sections

SITE = "test-site"


class SnapshotLog:
    """Every snapshot the controller ingests, in order (a subscriber of its event bus)."""

    def __init__(self) -> None:
        self.seen: list[Snapshot] = []

    def __call__(self, event: Event) -> None:
        if isinstance(event, SnapshotsIngested):
            self.seen += [report.snapshot for report in event.reports]

    def of(self, serial: str) -> list[Snapshot]:
        return [s for s in self.seen if s.serial == serial]


@asynccontextmanager
async def whole_product(
    tmp_path: Path,
    devices: list[DeviceSpec],
    registry_rows: list[str],
    smtp_peer: SmtpPeer,
    webhook_peer: WebhookPeer,
    *,
    snapshots: SnapshotLog | None = None,
    **tickets: Any,
) -> AsyncIterator[tuple[Lab, TicketDesk]]:
    """Lab devices, a real agent polling them, a controller filing tickets to the peers."""
    lab = await start_lab(tmp_path, devices)
    password = lab_password_file(tmp_path)
    settings: dict[str, Any] = {
        "min_duration_s": 1,
        "check_interval_s": 0.2,
        "language": "en",
        **tickets,
    }
    sections = ticket_sections(smtp_peer, webhook_peer, **settings)
    registry = (
        "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,"
        "site,room,host_serial\n" + "".join(row + "\n" for row in registry_rows)
    )
    service: AgentService | None = None
    try:
        async with (
            running_controller(tmp_path / "controller", sections=sections) as controller,
            aiohttp.ClientSession(headers=controller.admin_headers) as http,
        ):
            async with http.post(
                f"{controller.url}/api/v1/assets/import",
                data=registry.encode(),
                headers={"Content-Type": "text/csv"},
            ) as response:
                assert response.status == 200, await response.text()
            config = lab_agent_config(tmp_path, lab, password, controller.url, jobs_interval_s=0.1)
            service = await start_enrolled_agent(controller, SITE, config)
            desk = controller.core.tickets
            if snapshots is not None:
                controller.core.bus.subscribe(snapshots, kinds={SnapshotsIngested})
            await wait_until(lambda: desk.service is not None)
            yield lab, desk
    finally:
        if service is not None:
            await service.stop()
        await lab.stop()


async def test_W4_lab_camera_fault_reaches_the_desk_with_the_agents_bundle(
    tmp_path: Path, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """Lab camera fault -> agent reports -> one ticket, the agent's bundle mailed and posted."""
    rows = [
        f"E2EX1,studio_x50,2025-01-05,poly_plus,PP-E2E-1,2025-01-10,2028-01-09,{SITE},Boardroom,"
    ]
    devices = [make_device("E2EX1"), make_device("E2EX2")]
    async with whole_product(tmp_path, devices, rows, smtp_peer, webhook_peer) as (lab, desk):
        await lab.devices["E2EX1"].set_fault("camera_down", True)
        await wait_until(lambda: len(smtp_peer.received) >= 1 and bool(webhook_peer.received))
        tickets = desk.get().tickets()
        assert [(t.serial, t.fault, t.contract_number) for t in tickets] == [
            ("E2EX1", "camera_down", "PP-E2E-1")
        ]
        ticket = tickets[0]
        assert ticket.language == "en" and ticket.room == "Boardroom"
        mail = smtp_peer.received[0].message
        assert "camera failure" in mail["Subject"]
        attachment, evidence = list(mail.iter_attachments())
        assert json.loads(evidence.get_content())[0]["serial"] == "E2EX1"
        bundle = attachment.get_content()
        assert isinstance(bundle, bytes) and bundle.startswith(b"\x1f\x8b")
        with tarfile.open(fileobj=BytesIO(gzip.decompress(bundle))) as archive:
            names = archive.getnames()
        # W4: the logs archive and the SSH status output, as the issue names them.
        for wanted in ("system-logs.tar", "ssh-status.txt", "last-snapshots.json"):
            assert any(name.endswith(wanted) for name in names), (wanted, names)
        assert webhook_peer.received[0]["ticket"]["serial"] == "E2EX1"
        assert webhook_peer.bad_signatures == 0
        assert len(smtp_peer.received) == 1


async def test_H4_remote_diagnostics_bring_the_units_logs_and_network_tests(
    tmp_path: Path, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """A HEZO+ unit's camera fails while its LAN is degraded: the ticket's bundle holds the
    unit's log archive (which says so) and its own ping and traceroute to each configured
    target, every one failing beyond the gateway."""
    rows = [f"E2EH1,studio_x50,2025-01-05,hezo_plus,HZ-E2E-1,2025-01-10,2027-01-09,{SITE},Sala,"]
    targets = ["127.0.0.1", "sip.example.pl"]
    async with whole_product(
        tmp_path,
        [make_device("E2EH1")],
        rows,
        smtp_peer,
        webhook_peer,
        network_test_targets=targets,
    ) as (lab, desk):
        await lab.devices["E2EH1"].set_fault("lan_degraded", True)
        await lab.devices["E2EH1"].set_fault("camera_down", True)

        def camera_ticket_mailed() -> bool:
            return any("awaria kamery" in m.message["Subject"] for m in smtp_peer.received)

        await wait_until(camera_ticket_mailed)
        mail = next(m.message for m in smtp_peer.received if "kamery" in m.message["Subject"])
        bundle = next(
            a.get_content() for a in mail.iter_attachments() if a.get_filename().endswith(".tar.gz")
        )
        with tarfile.open(fileobj=BytesIO(gzip.decompress(bundle))) as archive:
            files = {
                name.rsplit("/", 1)[-1]: archive.extractfile(name).read()  # type: ignore[union-attr]
                for name in archive.getnames()
                if archive.getmember(name).isfile()
            }
        tests = json.loads(files["network-tests.json"])
        assert [t["target"] for t in tests] == targets
        for test in tests:
            assert test["ping"]["result"] == "FAILED" and test["ping"]["lossPercent"] == 100
            assert test["traceroute"]["result"] == "FAILED"
            assert [hop["address"] for hop in test["traceroute"]["hops"]][1:] == ["*", "*"]
        with tarfile.open(fileobj=BytesIO(files["system-logs.tar"])) as logs:
            network_log = logs.extractfile("logs/network.log").read().decode()  # type: ignore[union-attr]
        assert "packet loss beyond gateway" in network_log
        assert {t.plan for t in desk.get().tickets()} == {"hezo_plus"}


async def test_D1_lab_e70_fault_is_the_cameras_ticket_with_host_diagnostics(
    tmp_path: Path, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """An E70 failing on a G7500: one E70 ticket (its contract, Polish), linked to the host."""
    camera = PeripheralSpec(kind="e70", serial="E2EE70", firmware="1.3.0-001234")
    devices = [make_device("E2EG1", model="g7500", peripherals=[camera])]
    rows = [
        f"E2EG1,g7500,2025-01-05,poly_plus,PP-G1,2025-01-10,2028-01-09,{SITE},Aula,",
        f"E2EE70,studio_e70,2025-01-05,hezo_plus,HZ-E70,2025-01-10,2027-01-09,{SITE},Aula,E2EG1",
    ]
    async with whole_product(tmp_path, devices, rows, smtp_peer, webhook_peer) as (lab, desk):
        await lab.devices["E2EG1"].set_fault("e70_down", True)
        await wait_until(lambda: len(smtp_peer.received) >= 1)
        tickets = desk.get().tickets()
        assert [(t.serial, t.host_serial, t.contract_number) for t in tickets] == [
            ("E2EE70", "E2EG1", "HZ-E70")
        ]
        assert tickets[0].language == "pl" and tickets[0].bundle is not None
        mail = smtp_peer.received[0].message
        assert "E2EE70" in mail["Subject"]
        names = [part.get_filename() for part in mail.iter_attachments()]
        assert names == [tickets[0].bundle.filename, f"evidence-{tickets[0].id}.json"]


def _codes(snapshot: Snapshot) -> set[str]:
    return {p.code.value for p in snapshot.health.problems}


async def test_lab_short_camera_blip_files_no_ticket(
    tmp_path: Path, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """A lab camera down for under the hold time, then fine for longer: no ticket, no mail."""
    rows = [f"E2EB1,studio_x50,2025-01-05,hezo_plus,HZ-B1,2025-01-10,2027-01-09,{SITE},Aula,"]
    hold = timedelta(seconds=3)
    log = SnapshotLog()
    async with whole_product(
        tmp_path,
        [make_device("E2EB1")],
        rows,
        smtp_peer,
        webhook_peer,
        snapshots=log,
        min_duration_s=hold.total_seconds(),
    ) as (lab, desk):
        await lab.devices["E2EB1"].set_fault("camera_down", True)
        await wait_until(lambda: any("camera_down" in _codes(s) for s in log.of("E2EB1")))
        await lab.devices["E2EB1"].set_fault("camera_down", False)
        down = [s.collected_at for s in log.of("E2EB1") if "camera_down" in _codes(s)]
        # Healthy reports until past the moment a held fault would have opened.
        await wait_until(
            lambda: any(
                s.collected_at - down[0] > hold + timedelta(seconds=1) and not _codes(s)
                for s in log.of("E2EB1")
            )
        )
        down = [s.collected_at for s in log.of("E2EB1") if "camera_down" in _codes(s)]
        assert down[-1] - down[0] < hold, "the blip lasted longer than the hold time"
        await desk.get().tick()
        assert desk.get().tickets() == []
        assert smtp_peer.received == [] and webhook_peer.received == []


async def test_lab_site_with_most_devices_dark_files_one_site_ticket(
    tmp_path: Path, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """Three lab rooms lose power together: one site ticket naming them, no device tickets."""
    serials = ("E2ES1", "E2ES2", "E2ES3")
    rows = [
        f"{serial},studio_x30,2025-01-05,poly_plus,PP-{serial},2025-01-10,2028-01-09,{SITE},R{n},"
        for n, serial in enumerate(serials)
    ]
    log = SnapshotLog()
    async with whole_product(
        tmp_path,
        [make_device(serial, model="studio_x30") for serial in serials],
        rows,
        smtp_peer,
        webhook_peer,
        snapshots=log,
        unreachable_min_duration_s=1,
    ) as (lab, desk):
        await wait_until(lambda: all(log.of(serial) for serial in serials))
        for serial in serials:
            await lab.devices[serial].power_off()
        await wait_until(lambda: len(smtp_peer.received) >= 1 and bool(webhook_peer.received))
        (ticket,) = desk.get().tickets()
        assert ticket.kind.value == "site" and ticket.fault == "site_unreachable"
        assert ticket.affected_serials == sorted(serials)
        assert all(
            ProblemCode.UNREACHABLE.value in _codes(log.of(serial)[-1]) for serial in serials
        )
        mail = smtp_peer.received[0].message
        assert "most of the site's devices unreachable" in mail["Subject"]
        # Power back: the site ticket notes the recovery; still the one ticket.
        for serial in serials:
            await lab.devices[serial].power_on()
        await wait_until(lambda: any(n.key == "recovered" for n in desk.get().get(ticket.id).notes))
        assert len(desk.get().tickets()) == 1
