"""Tickets in a running controller: HTTP report batches, the jobs protocol, SMTP and webhook."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.clocks import SettableClock
from testkit.processes import in_process, polyfleet
from testkit.reports import typed_snapshot
from testkit.waiting import wait_until

from polyfleet.controller.app import serve
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.services.ticket_service import FAULT_STATE, TicketService
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.shared.schema import (
    PROTOCOL_VERSION,
    Model,
    ProblemCode,
    Report,
    ReportBatch,
    Snapshot,
)
from tickets.conftest import SMTP_USER, SmtpPeer, WebhookPeer, ticket_sections

# Monday 24 November 2025, 10:00 in Warsaw.
T0 = datetime(2025, 11, 24, 9, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
BUNDLE = b"\x1f\x8b\x08\x00" + b"status end\n" * 500

REGISTRY = """\
serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,host_serial
X1,studio_x50,2025-01-05,hezo_plus,HZ-2025-0001,2025-01-10,2027-01-09,krk,Sala Wawel,
E1,studio_e70,2025-01-05,hezo_plus,HZ-2025-0002,2025-01-10,2027-01-09,krk,Sala Wawel,X1
X2,studio_x30,2025-01-05,poly_plus,PP-0002,2025-01-10,2026-01-09,krk,Sala Kopiec,
X3,studio_x70,2025-01-05,,,,,krk,Sala Sukiennice,
X4,studio_x30,2025-01-05,partner_poly_plus,PPP-0004,2025-01-10,2026-01-09,krk,Sala Smocza,
"""


def snapshot(
    serial: str, at: datetime, *codes: ProblemCode, model: Model = Model.STUDIO_X50
) -> Snapshot:
    """What the site's agent reports of ``serial``: the E70 in the registry hangs off X1."""
    host = "X1" if model is Model.STUDIO_E70 else None
    return typed_snapshot(
        serial, *codes, at=at, model=model, build="180034", detailed=True, host_serial=host
    )


@dataclass
class Lab:
    controller: RunningController
    clock: SettableClock
    agent_token: str
    http: aiohttp.ClientSession

    @property
    def service(self) -> TicketService:
        return self.controller.core.tickets.get()

    async def post(self, *snapshots: Snapshot) -> None:
        batch = ReportBatch(
            protocol_version=PROTOCOL_VERSION,
            reports=[
                Report(id=f"r-{s.serial}-{s.collected_at.timestamp():.0f}", snapshot=s)
                for s in snapshots
            ],
        )
        async with self.http.post(
            f"{self.controller.url}/api/v1/agent/reports",
            data=batch.model_dump_json(),
            headers={
                "Authorization": f"Bearer {self.agent_token}",
                "Content-Type": "application/json",
            },
        ) as response:
            assert response.status == 200, await response.text()
        await self.controller.core.bus.drain()

    async def report_minutes(
        self, serials: tuple[str, ...], minutes: range, *codes: ProblemCode
    ) -> None:
        for minute in minutes:
            self.clock.now = T0 + minute * MINUTE
            await self.post(*(snapshot(s, self.clock.now, *codes) for s in serials))

    async def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.http.request(
            method,
            self.controller.url + path,
            headers=self.controller.admin_headers,
            **kwargs,
        ) as response:
            body = await response.json()
            assert response.status < 400, body
            return body

    async def agent_does_jobs(self, content: bytes = BUNDLE) -> list[str]:
        """Act as the site's agent: fetch jobs, upload the bundle, post the result."""
        auth = {"Authorization": f"Bearer {self.agent_token}"}
        url = self.controller.url
        async with self.http.get(f"{url}/api/v1/agent/jobs", headers=auth) as response:
            jobs = (await response.json())["jobs"]
        for job in jobs:
            async with self.http.put(
                f"{url}/api/v1/agent/jobs/{job['id']}/artifact",
                data=content,
                headers={**auth, "Content-Type": "application/octet-stream"},
            ) as response:
                assert response.status == 200, await response.text()
            result = {"status": "done", "artifact_sha256": hashlib.sha256(content).hexdigest()}
            async with self.http.post(
                f"{url}/api/v1/agent/jobs/{job['id']}/result", json=result, headers=auth
            ) as response:
                assert response.status == 200, await response.text()
        return [job["serial"] for job in jobs]


@asynccontextmanager
async def start_lab(
    data_dir: Path,
    clock: SettableClock,
    smtp_peer: SmtpPeer | None,
    webhook_peer: WebhookPeer | None,
    *,
    agent_token: str | None = None,
    registry: str = REGISTRY,
    escalation_webhook: WebhookPeer | None = None,
    extra_sections: dict[str, dict[str, Any]] | None = None,
    **tickets: Any,
) -> AsyncIterator[Lab]:
    """A controller with ticket delivery configured, an enrolled agent and the registry."""
    settings: dict[str, Any] = {
        "min_duration_s": 300,
        "check_interval_s": 3600,
        "diagnostics_timeout_s": 60,
        "language": "en",
        **tickets,
    }
    sections = ticket_sections(
        smtp_peer, webhook_peer, escalation_webhook=escalation_webhook, **settings
    )
    sections.update(extra_sections or {})
    async with (
        running_controller(data_dir, clock=clock, sections=sections, liveness_check_s=3600) as (
            controller
        ),
        aiohttp.ClientSession() as http,
    ):
        if agent_token is None:
            agent_token = (await controller.enroll("krk")).token
            async with http.post(
                f"{controller.url}/api/v1/assets/import",
                data=registry.encode(),
                headers={**controller.admin_headers, "Content-Type": "text/csv"},
            ) as response:
                assert response.status == 200, await response.text()
        yield Lab(controller=controller, clock=clock, agent_token=agent_token, http=http)


@pytest.fixture
async def lab(tmp_path: Path, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer) -> AsyncIterator[Lab]:
    async with start_lab(
        tmp_path / "controller", SettableClock(T0), smtp_peer, webhook_peer
    ) as lab:
        yield lab


async def test_W4_camera_fault_files_one_ticket_with_bundle_by_mail_and_webhook(
    lab: Lab, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """A camera fault held 5 minutes: one ticket, the agent's bundle attached, both channels."""
    await lab.report_minutes(("X1", "X2"), range(0, 1))
    await lab.report_minutes(("X1",), range(1, 8), ProblemCode.CAMERA_DOWN)
    listed = await lab.admin("GET", "/api/v1/tickets")
    assert [(t["serial"], t["fault"]) for t in listed["tickets"]] == [("X1", "camera_down")]
    # W4: the controller asked the site's agent for diagnostics before sending.
    await wait_until(lambda: _has_job(lab))
    assert await lab.agent_does_jobs() == ["X1"]
    await wait_until(lambda: len(smtp_peer.received) == 1 and len(webhook_peer.received) == 1)
    mail = smtp_peer.received[0].message
    assert mail["Subject"].startswith("[PF-") and "awaria kamery" in mail["Subject"]
    bundle, evidence = list(mail.iter_attachments())
    assert bundle.get_content() == BUNDLE
    # The snapshots that show the fault, whole, for the desk's engineer.
    assert evidence.get_content_type() == "application/json"
    assert str(evidence.get_filename()).startswith("evidence-PF-")
    snapshots = json.loads(evidence.get_content())
    assert len(snapshots) >= 2 and {s["serial"] for s in snapshots} == {"X1"}
    assert all([p["code"] for p in s["health"]["problems"]] == ["camera_down"] for s in snapshots)
    assert snapshots[0]["collected_at"] == "2025-11-24T09:01:00Z"
    body = mail.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    for line in (
        "Numer seryjny: X1",
        "Numer umowy serwisowej: HZ-2025-0001",
        "Usługa: HEZO+ (hezo_plus)",
        "Model: Poly Studio X50",
        "Lokalizacja: krk",
        "Sala: Sala Wawel",
        "Usterka: awaria kamery (camera_down seen)",
        "Pierwsze wystąpienie: 2025-11-24T10:01:00+01:00",
        "Załączono pakiet diagnostyczny z urządzenia (logi, status)",
        "Raporty potwierdzające usterkę:",
    ):
        assert line in text.splitlines(), line
    hook = webhook_peer.received[0]
    assert hook["bundle"]["sha256"] == hashlib.sha256(BUNDLE).hexdigest()
    assert [a["filename"] for a in hook["attachments"]] == [bundle.get_filename()]
    assert hook["ticket"]["evidence"] == snapshots
    assert hook["ticket"]["contract_number"] == "HZ-2025-0001"
    ticket = (await lab.admin("GET", "/api/v1/tickets"))["tickets"][0]
    await wait_until(lambda: lab.service.get(ticket["id"]).status.value == "sent")
    shown = await lab.admin("GET", f"/api/v1/tickets/{ticket['id']}")
    assert shown["status"] == "sent"
    assert shown["sla"]["reaction_due"] == "2025-11-24T11:07:00+01:00"
    assert {d["state"] for d in shown["deliveries"]} == {"sent"}
    async with lab.http.get(
        f"{lab.controller.url}/api/v1/tickets/{ticket['id']}/bundle",
        headers=lab.controller.admin_headers,
    ) as response:
        assert await response.read() == BUNDLE
    # The fault goes on: still one ticket, nothing resent.
    await lab.report_minutes(("X1",), range(8, 30), ProblemCode.CAMERA_DOWN)
    await lab.service.worker.run_once(lab.clock.now)
    assert len((await lab.admin("GET", "/api/v1/tickets"))["tickets"]) == 1
    assert len(smtp_peer.received) == 1


def _has_job(lab: Lab, serial: str = "X1") -> bool:
    return bool(lab.controller.core.jobs.find(serial=serial))


async def test_short_blip_opens_no_ticket(lab: Lab) -> None:
    """Two reports of a camera problem within a minute, then healthy: no ticket."""
    await lab.report_minutes(("X1",), range(0, 2), ProblemCode.CAMERA_DOWN)
    await lab.report_minutes(("X1",), range(2, 20))
    assert (await lab.admin("GET", "/api/v1/tickets"))["tickets"] == []


async def test_D1_e70_fault_is_the_cameras_ticket_linked_to_host(lab: Lab) -> None:
    """An E70 fault is filed with the E70's serial and contract and names its host."""
    for minute in range(0, 8):
        lab.clock.now = T0 + minute * MINUTE
        await lab.post(
            snapshot("X1", lab.clock.now),
            snapshot("E1", lab.clock.now, ProblemCode.CAMERA_DOWN, model=Model.STUDIO_E70),
        )
    (ticket,) = (await lab.admin("GET", "/api/v1/tickets"))["tickets"]
    assert ticket["serial"] == "E1" and ticket["host_serial"] == "X1"
    assert ticket["contract_number"] == "HZ-2025-0002"
    await wait_until(lambda: _has_job(lab))  # the host collects for its camera


async def test_site_outage_files_one_site_ticket(lab: Lab, smtp_peer: SmtpPeer) -> None:
    """The site's agent goes silent: one site ticket listing its devices, no device tickets."""
    await lab.report_minutes(("X1", "X2", "X3"), range(0, 2))
    lab.clock.now = T0 + 30 * MINUTE
    await lab.controller.core.inventory.check_liveness()
    await lab.controller.core.bus.drain()
    await lab.service.tick(T0 + 120 * MINUTE)
    await lab.service.wait_prepared()
    (ticket,) = (await lab.admin("GET", "/api/v1/tickets"))["tickets"]
    assert ticket["kind"] == "site" and ticket["fault"] == "agent_offline"
    assert ticket["affected_serials"] == ["X1", "X2", "X3"]
    await wait_until(lambda: len(smtp_peer.received) == 1)
    assert "krk" in smtp_peer.received[0].message["Subject"]


async def test_W5_held_ticket_filled_and_acted_on_through_the_cli(
    lab: Lab, smtp_peer: SmtpPeer
) -> None:
    """No contract: needs_data; the admin fills it and moves it along with the tickets CLI."""
    await lab.report_minutes(("X3",), range(0, 8), ProblemCode.MICROPHONE_DOWN)
    (ticket,) = (await lab.admin("GET", "/api/v1/tickets"))["tickets"]
    assert ticket["status"] == "needs_data" and ticket["missing"] == ["contract_number"]
    listed = await cli(lab, "list", "--status", "needs_data", process=True)
    assert [t["id"] for t in listed["tickets"]] == [ticket["id"]]
    filled = await cli(lab, "fill", ticket["id"], "--contract-number", "INV-77", "--force")
    assert filled["status"] == "open" and filled["contract_number"] == "INV-77"
    await wait_until(lambda: _has_job(lab, "X3"))
    await lab.agent_does_jobs()
    await wait_until(lambda: lab.service.get(ticket["id"]).status.value == "sent")
    for action, status in (("ack", "acknowledged"), ("accept", "accepted"), ("received",
        "replacement_received"), ("close", "closed")):  # fmt: skip
        assert (await cli(lab, action, ticket["id"]))["status"] == status
    shown = await cli(lab, "show", ticket["id"])
    assert shown["sla"]["return_due"] is not None
    refused = await cli(lab, "ack", ticket["id"], expect=1)
    assert "is closed" in refused["error"]["message"]
    assert len(smtp_peer.received) == 1


async def cli(lab: Lab, *argv: str, expect: int = 0, process: bool = False) -> Any:
    """Run ``polyfleet controller tickets ...`` against the server (as a process if asked)."""
    args = ["controller", "tickets", *argv, "--url", lab.controller.url, "--json"]
    env = {**os.environ, "POLYFLEET_TOKEN": lab.controller.admin_token}
    run = polyfleet if process else in_process
    code, out, err = await run(*args, env=env, expect=None)
    assert code == expect, err
    assert lab.controller.admin_token not in err + out
    return json.loads(out)


async def test_W2_W7_missed_reaction_escalates_once(
    lab: Lab, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """Sent and not acknowledged within the hour: one escalation to escalation@myhezo.pl."""
    await lab.report_minutes(("X1",), range(0, 8), ProblemCode.CAMERA_DOWN)
    await wait_until(lambda: _has_job(lab))
    await lab.agent_does_jobs()
    await wait_until(lambda: len(smtp_peer.received) == 1)
    (ticket,) = lab.service.tickets()
    await wait_until(lambda: lab.service.get(ticket.id).status.value == "sent")
    due = lab.service.get(ticket.id).sla().reaction_due  # type: ignore[union-attr]
    assert due is not None
    for minutes in (0, 1, 30, 120):
        lab.clock.now = due + minutes * MINUTE
        await lab.service.tick(lab.clock.now)
    await wait_until(lambda: len(smtp_peer.received) == 2)
    await lab.service.worker.run_once(lab.clock.now + timedelta(hours=1))
    escalations = [m for m in smtp_peer.received if m.recipients == ["escalation@myhezo.pl"]]
    assert len(escalations) == 1 and len(smtp_peer.received) == 2
    assert escalations[0].message["Subject"].startswith("Eskalacja")
    shown = await lab.admin("GET", f"/api/v1/tickets/{ticket.id}")
    assert shown["escalated_at"] is not None


async def test_flapping_camera_gives_one_flapping_ticket(lab: Lab, smtp_peer: SmtpPeer) -> None:
    """A camera failing for two minutes in every six, for an hour: one ticket marked flapping."""
    for start in range(0, 60, 6):
        await lab.report_minutes(("X1",), range(start, start + 2), ProblemCode.CAMERA_DOWN)
        await lab.report_minutes(("X1",), range(start + 2, start + 6))
        if _has_job(lab):
            await lab.agent_does_jobs()
    (ticket,) = (await lab.admin("GET", "/api/v1/tickets"))["tickets"]
    assert ticket["flapping"] is True
    await wait_until(lambda: len(smtp_peer.received) == 1)
    body = smtp_peer.received[0].message.get_body(("plain",))
    assert body is not None and "niestabilna" in body.get_content()


async def test_most_devices_unreachable_gives_one_site_ticket(lab: Lab) -> None:
    """The agent still calls in but most devices went silent together: one site ticket."""
    await lab.report_minutes(("X1", "X2", "X3"), range(0, 2))
    lab.clock.now = T0 + 6 * MINUTE
    await lab.agent_does_jobs()  # the agent's heartbeat
    events = await lab.controller.core.inventory.check_liveness()
    assert sorted(e.serial or "" for e in events if e.kind == "device_unreachable") == [
        "X1",
        "X2",
        "X3",
    ]
    await lab.controller.core.bus.drain()
    await lab.service.tick(T0 + 60 * MINUTE)
    await lab.service.wait_prepared()
    (ticket,) = (await lab.admin("GET", "/api/v1/tickets"))["tickets"]
    assert ticket["kind"] == "site" and ticket["fault"] == "site_unreachable"
    assert ticket["affected_serials"] == ["X1", "X2", "X3"]


async def test_smtp_down_then_up_across_restart_delivers_exactly_once(
    tmp_path: Path, smtp_peer: SmtpPeer
) -> None:
    """SMTP down while the ticket is filed, controller restarted, SMTP back: one e-mail."""
    await smtp_peer.stop()
    clock = SettableClock(T0)
    data_dir = tmp_path / "controller"
    async with start_lab(data_dir, clock, smtp_peer, None) as lab:
        await lab.report_minutes(("X1",), range(0, 8), ProblemCode.CAMERA_DOWN)
        await wait_until(lambda: _has_job(lab))
        await lab.agent_does_jobs()
        (ticket,) = lab.service.tickets()
        await wait_until(lambda: any(d["attempts"] for d in lab.service.deliveries(ticket.id)))
        assert lab.service.get(ticket.id).status.value == "open"
        token = lab.agent_token
    await smtp_peer.start()
    clock.now += timedelta(minutes=10)
    async with start_lab(data_dir, clock, smtp_peer, None, agent_token=token) as lab:
        await wait_until(lambda: lab.service.get(ticket.id).status.value == "sent")
        await lab.service.worker.run_once(clock.now + timedelta(hours=2))
        await lab.report_minutes(("X1",), range(20, 25), ProblemCode.CAMERA_DOWN)
        await lab.service.worker.run_once(clock.now + timedelta(hours=3))
    assert len(smtp_peer.received) == 1
    assert smtp_peer.received[0].message["Message-ID"].startswith(f"<{ticket.id}.ticket.email@")


async def test_tickets_cli_finds_a_local_server_through_its_data_dir(tmp_path: Path) -> None:
    """With only --data-dir, the CLI reaches the running server over its control socket."""
    data_dir = tmp_path / "d"
    data_dir.mkdir()
    config = ControllerConfig(data_dir=data_dir, listen_port=0, liveness_check_s=3600)
    ready = asyncio.Event()
    stop = asyncio.Event()
    server = asyncio.create_task(serve(config, on_ready=lambda _url: ready.set(), stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        env = {k: v for k, v in os.environ.items() if k != "POLYFLEET_TOKEN"}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",
            "-m",
            "polyfleet",
            "controller",
            "tickets",
            "list",
            "--data-dir",
            str(data_dir),
            "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert json.loads(out) == {"tickets": []}
    finally:
        stop.set()
        await server


async def test_restart_mid_fault_keeps_debounce_and_notes_the_recovery(tmp_path: Path) -> None:
    """Detector state survives restarts: the hold time goes on, a recovery is still noted."""
    clock = SettableClock(T0)
    data_dir = tmp_path / "controller"
    async with start_lab(data_dir, clock, None, None) as lab:
        await lab.report_minutes(("X1",), range(0, 3), ProblemCode.CAMERA_DOWN)
        assert lab.service.tickets() == []
        token = lab.agent_token
    # Restarted 3 minutes into the fault: it opens 5 minutes after it was first seen.
    async with start_lab(data_dir, clock, None, None, agent_token=token) as lab:
        await lab.report_minutes(("X1",), range(3, 5), ProblemCode.CAMERA_DOWN)
        assert lab.service.tickets() == []
        await lab.report_minutes(("X1",), range(5, 6), ProblemCode.CAMERA_DOWN)
        (ticket,) = lab.service.tickets()
        key = ticket.id
        assert key == lab.service.ticket_key("X1", "camera_down") and ticket.first_seen == T0
        assert ticket.opened_at == T0 + 5 * MINUTE
        # Saved on the transition only: more reports of the same fault write nothing.
        store = lab.controller.core.store
        saved_at = store.get(FAULT_STATE, "X1")["saved_at"]  # type: ignore[index]
        await lab.report_minutes(("X1",), range(6, 12), ProblemCode.CAMERA_DOWN)
        assert store.get(FAULT_STATE, "X1")["saved_at"] == saved_at  # type: ignore[index]
    # The camera recovers while the controller is down; it comes back to healthy reports.
    async with start_lab(data_dir, clock, None, None, agent_token=token) as lab:
        await lab.report_minutes(("X1",), range(30, 45))
        notes = [note.text for note in lab.service.get(key).notes]
        assert any(text.startswith("recovered") for text in notes), notes
        assert len(lab.service.tickets()) == 1


async def test_W2_W7_escalation_by_real_smtp_once_not_after_ack_nor_without_promise(
    tmp_path: Path, smtp_peer: SmtpPeer
) -> None:
    """Past the reaction time: one escalation mail to the configured contact, naming the
    ticket, serial and contract; none for an acknowledged ticket or a plan promising none."""
    clock = SettableClock(T0)
    contact = "eskalacja@fleet.example.pl"
    async with start_lab(
        tmp_path / "controller", clock, smtp_peer, None, escalation_email=contact
    ) as lab:
        await lab.report_minutes(("X1", "X2", "X4"), range(0, 8), ProblemCode.CAMERA_DOWN)
        await wait_until(lambda: all(_has_job(lab, s) for s in ("X1", "X2", "X4")))
        assert sorted(await lab.agent_does_jobs()) == ["X1", "X2", "X4"]
        keys = {
            serial: lab.service.ticket_key(serial, "camera_down") for serial in ("X1", "X2", "X4")
        }
        await wait_until(
            lambda: all(lab.service.get(k).status.value == "sent" for k in keys.values())
        )
        assert len(smtp_peer.received) == 3
        # H4, P2: Polish for HEZO+ and Partner POLY+; English for POLY+.
        subjects = {
            m.message["X-Polyfleet-Ticket"]: m.message["Subject"] for m in smtp_peer.received
        }
        assert subjects[keys["X1"]].endswith(
            "Zgłoszenie serwisowe: Poly Studio X50 X1 - awaria kamery"
        )
        assert subjects[keys["X4"]].endswith(
            "Zgłoszenie serwisowe: Poly Studio X50 X4 - awaria kamery"
        )
        assert subjects[keys["X2"]].endswith("Service ticket: Poly Studio X50 X2 - camera failure")
        # Partner POLY+ (X4): the desk called back in time; POLY+ (X2) promises no reaction.
        await lab.admin("POST", f"/api/v1/tickets/{keys['X4']}/ack")
        assert lab.service.get(keys["X2"]).sla().reaction_due is None  # type: ignore[union-attr]
        due = lab.service.get(keys["X1"]).sla().reaction_due  # type: ignore[union-attr]
        assert due == T0 + 7 * MINUTE + timedelta(hours=1)
        lab.clock.now = due - timedelta(seconds=1)
        await lab.service.tick(lab.clock.now)
        await lab.service.worker.run_once(lab.clock.now)
        assert len(smtp_peer.received) == 3
        for minutes in (0, 1, 30, 24 * 60, 7 * 24 * 60):
            lab.clock.now = due + minutes * MINUTE
            await lab.service.tick(lab.clock.now)
            await lab.service.worker.run_once(lab.clock.now)
        await wait_until(lambda: len(smtp_peer.received) == 4)
        escalation = smtp_peer.received[3]
        assert escalation.recipients == [contact]
        assert escalation.tls and escalation.login == SMTP_USER
        message = escalation.message
        assert message["X-Polyfleet-Ticket"] == keys["X1"]
        assert message["Subject"].startswith(f"Eskalacja: [{keys['X1']}]")
        body = message.get_body(("plain",))
        assert body is not None
        text = body.get_content()
        for needle in (keys["X1"], "X1", "HZ-2025-0001", "Czas reakcji minął"):
            assert needle in text, needle
        assert list(message.iter_attachments()) == []
        shown = await lab.admin("GET", f"/api/v1/tickets/{keys['X1']}")
        assert datetime.fromisoformat(shown["escalated_at"]) == due
        for serial in ("X2", "X4"):
            assert lab.service.get(keys[serial]).escalated_at is None
    assert sum(1 for m in smtp_peer.received if m.recipients == [contact]) == 1
    assert len(smtp_peer.received) == 4


async def test_tickets_show_prints_the_desk_facts_for_a_person(lab: Lab) -> None:
    """`tickets show` without --json prints the ticket's facts, SLA terms and notes as lines."""
    await lab.report_minutes(("X3",), range(0, 8), ProblemCode.MICROPHONE_DOWN)
    (ticket,) = lab.service.tickets()
    args = ["controller", "tickets", "show", ticket.id, "--url", lab.controller.url]
    shown = await in_process(
        *args, env={**os.environ, "POLYFLEET_TOKEN": lab.controller.admin_token}
    )
    lines = [line.strip() for line in shown.out.splitlines()]
    assert (
        lines[0].startswith(f"{ticket.id}  needs_data") and "missing: contract_number" in lines[0]
    )
    for wanted in (
        "serial: X3",
        "plan: standard",
        "plan_name: standard manufacturer warranty",
        "model: studio_x50",  # as the device reports itself
        "room: Sala Sukiennice",
    ):
        assert wanted in lines, wanted
    assert any(line.endswith("held: missing contract_number") for line in lines)
