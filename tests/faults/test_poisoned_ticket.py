"""One poisoned ticket never stops delivery: a real controller process, real SMTP and webhook."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
from faultkit import ControllerProcess, enroll, post_batch
from testkit.processes import controller_cli
from testkit.reports import batch, report, snapshot
from testkit.waiting import wait_until
from tickets.conftest import (  # noqa: F401  (fixtures: real SMTP and webhook peers)
    SmtpPeer,
    WebhookPeer,
    smtp_peer,
    ticket_sections,
    tls_files,
    webhook_peer,
)

from polyfleet.controller.services.ticket_service import TICKETS
from polyfleet.controller.store.tinydb import TinyDBStore

POISON = "X3\r\nBcc: someone@example.com"


def registry(today: date) -> str:
    """The asset registry with contracts running today (the controller runs on real time)."""
    bought = today - timedelta(days=100)
    start = bought + timedelta(days=5)
    hezo_end = start.replace(year=start.year + 2) - timedelta(days=1)
    poly_end = start.replace(year=start.year + 3) - timedelta(days=1)
    return (
        "serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,"
        "host_serial\n"
        f"X1,studio_x50,{bought},hezo_plus,HZ-0001,{start},{hezo_end},krk,Sala Wawel,\n"
        f"X3,studio_x70,{bought},,,,,krk,Sala Sukiennice,\n"
        f"X4,studio_x30,{bought},poly_plus,PP-0004,{start},{poly_end},krk,Sala Smocza,\n"
    )


def config_text(sections: dict[str, dict[str, Any]]) -> str:
    """controller.toml as an admin writes it (flat tables of strings, numbers and lists)."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            return repr(item)
        if isinstance(item, list):
            return "[" + ", ".join(value(i) for i in item) + "]"
        return json.dumps(str(item))

    lines = ["[server]", "metrics_require_token = false"]
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {value(item)}" for key, item in table.items()]
    return "\n".join(lines) + "\n"


class Desk:
    """The admin's and the agent's side of one controller process, over HTTP."""

    def __init__(self, controller: ControllerProcess, http: aiohttp.ClientSession) -> None:
        self.controller = controller
        self.http = http
        self.agent_token = ""

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.controller.admin_token}"}

    async def set_up(self) -> None:
        """An enrolled agent of krk and the asset registry."""
        url = self.controller.url
        self.agent_token = (await enroll(self.http, url, self.controller.codes["krk"][0]))["token"]
        async with self.http.post(
            f"{url}/api/v1/assets/import",
            data=registry(datetime.now(UTC).date()).encode(),
            headers={**self.admin, "Content-Type": "text/csv"},
        ) as response:
            assert response.status == 200, await response.text()

    async def fault(self, serial: str) -> str:
        """Three reports of a camera fault over two minutes (held long enough for a ticket)."""
        now = datetime.now(UTC).replace(microsecond=0)
        problems = [{"code": "camera_down", "detail": "no video"}]
        reports = [
            report(snapshot(serial, problems=problems, collected_at=now - timedelta(seconds=s)))
            for s in (150, 90, 30)
        ]
        answer = await post_batch(self.http, self.controller.url, self.agent_token, batch(*reports))
        assert answer.status == 200, answer.body
        listed = (await self.get("/api/v1/tickets"))["tickets"]
        (key,) = [t["id"] for t in listed if (t["serial"], t["fault"]) == (serial, "camera_down")]
        return str(key)

    async def get(self, path: str) -> Any:
        async with self.http.get(self.controller.url + path, headers=self.admin) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    async def metrics(self) -> str:
        async with self.http.get(self.controller.url + "/metrics") as response:
            assert response.status == 200
            return await response.text()


def mailed(peer: SmtpPeer, key: str) -> bool:
    return any(m.message["X-Polyfleet-Ticket"] == key for m in peer.received)


def hooked(peer: WebhookPeer, key: str) -> bool:
    return any(p["ticket"]["id"] == key for p in peer.received)


async def test_poisoned_ticket_is_refused_and_never_blocks_later_deliveries(
    controllers: Any,
    http: aiohttp.ClientSession,
    smtp_peer: SmtpPeer,  # noqa: F811  (the fixture imported above)
    webhook_peer: WebhookPeer,  # noqa: F811
) -> None:
    """A line break in a ticket's serial is refused at the API and the CLI; one already stored
    fails alone, named to the admin (API, CLI, metric), and later tickets still go out by
    e-mail and webhook, across restarts."""
    sections = ticket_sections(
        smtp_peer,
        webhook_peer,
        min_duration_s=60,
        diagnostics_timeout_s=0,
        check_interval_s=0.2,
        retry_base_s=0.2,
        language="en",
    )
    controller: ControllerProcess = await controllers.start(config=config_text(sections))
    data_dir = str(controller.data_dir)
    desk = Desk(controller, http)
    await desk.set_up()
    held = await desk.fault("X3")
    shown = await desk.get(f"/api/v1/tickets/{held}")
    assert shown["status"] == "needs_data" and shown["missing"] == ["contract_number"]
    # The original poison: a serial with a line break, through PATCH, is refused.
    async with http.patch(
        f"{controller.url}/api/v1/tickets/{held}",
        json={"serial": POISON, "contract_number": "INV-1"},
        headers=desk.admin,
    ) as response:
        assert response.status == 422
        error = (await response.json())["error"]
    assert error["field"] == "serial" and "line break" in error["message"]
    # ...and through the CLI, before anything is sent to the server.
    fill = await controller_cli(
        "tickets", "fill", held, "--serial", POISON,
        "--contract-number", "INV-1", "--data-dir", data_dir, "--json", expect=None,
    )  # fmt: skip
    assert fill.status == 2 and "--serial" in fill.err and "line break" in fill.err
    assert (await desk.get(f"/api/v1/tickets/{held}"))["serial"] == "X3"
    assert await controller.stop() == 0

    # A store written before these checks existed may still hold such a ticket.
    store = TinyDBStore(controller.data_dir / "store")
    await store.open()
    doc = store.get(TICKETS, held)
    assert doc is not None
    doc.update(serial=POISON, contract_number="INV-1", status="open")
    await store.wait_durable(store.apply({TICKETS: {held: doc}}))
    await store.close()

    await controller.start()
    # The poisoned e-mail cannot be built: given up at once, with the reason. The webhook's
    # JSON carries the serial as it is, so the desk still hears of the ticket.
    await wait_until(
        lambda: hooked(webhook_peer, held), what="the poisoned ticket's webhook", timeout=90
    )
    failed = await desk.get("/api/v1/tickets/deliveries?state=failed")
    (entry,) = failed["deliveries"]
    assert entry["ticket_id"] == held and entry["channel"] == "email"
    assert "linefeed" in entry["last_error"]
    # A later ticket goes out by both channels all the same.
    later = await desk.fault("X1")
    await wait_until(
        lambda: mailed(smtp_peer, later) and hooked(webhook_peer, later),
        what="the later ticket by e-mail and webhook",
        timeout=90,
    )
    assert not mailed(smtp_peer, held)
    # Admins see the failure: ticket list, deliveries (API and CLI), the log and /metrics.
    by_id = {t["id"]: t for t in (await desk.get("/api/v1/tickets"))["tickets"]}
    assert by_id[held]["delivery"] == "failed" and by_id[held]["delivery_error"]
    assert by_id[later]["delivery"] == "sent"
    run = await controller_cli(
        "tickets", "deliveries", "--state", "failed", "--data-dir", data_dir, expect=None
    )
    assert run.status == 0, run.err
    header, line = run.out.splitlines()
    assert header.startswith("TICKET") and "LAST ERROR" in header
    assert line.startswith(f"{held}  email") and "failed" in line and "linefeed" in line
    run = await controller_cli("tickets", "list", "--data-dir", data_dir, expect=None)
    (held_line,) = [row for row in run.out.splitlines() if row.startswith(held)]
    assert "X3\\r\\nBcc" in held_line and "delivery failed:" in held_line
    await controller.wait_log(f"ticket {held} via email given up", timeout=90)
    metrics = await desk.metrics()
    assert 'polyfleet_ticket_deliveries{channel="email",state="failed"} 1.0' in metrics
    assert (
        'polyfleet_ticket_delivery_attempts_total{channel="email",result="failed"} 1.0' in metrics
    )

    # Restarted: the failure stays recorded and still blocks nothing.
    assert await controller.stop() == 0
    await controller.start()
    third = await desk.fault("X4")
    await wait_until(
        lambda: mailed(smtp_peer, third) and hooked(webhook_peer, third),
        what="a ticket after the restart by e-mail and webhook",
        timeout=90,
    )
    failed = await desk.get("/api/v1/tickets/deliveries?state=failed")
    assert [d["ticket_id"] for d in failed["deliveries"]] == [held]
    assert smtp_peer.logins_refused == 0 and webhook_peer.bad_signatures == 0
