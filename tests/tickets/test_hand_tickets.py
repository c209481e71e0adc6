"""Tickets opened by hand: the plan decides, the desk receives them as automatic ones."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from testkit.clocks import SettableClock
from testkit.processes import environment
from testkit.waiting import wait_until

from polyfleet.cli import main
from polyfleet.controller.services.access import Role
from tickets.conftest import SmtpPeer
from tickets.test_live import T0, Lab, start_lab


@pytest.fixture
async def lab(tmp_path: Path, smtp_peer: SmtpPeer) -> AsyncIterator[Lab]:
    """A controller mailing the desk, the registry of test_live (X1 HEZO+, X2 POLY+)."""
    async with start_lab(tmp_path / "controller", SettableClock(T0), smtp_peer, None) as lab:
        yield lab


async def tickets_cli(lab: Lab, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    """``polyfleet controller tickets ARGV`` against the server: (exit status, out, err)."""
    args = ["controller", "tickets", *argv, "--url", lab.controller.url]
    env = {**os.environ, "POLYFLEET_TOKEN": lab.controller.admin_token}
    stdout, stderr = io.StringIO(), io.StringIO()

    def run() -> int:
        saved = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            with (
                contextlib.redirect_stdout(stdout),
                contextlib.redirect_stderr(stderr),
                environment(env),
            ):
                return main(args)
        finally:
            sys.stdin = saved

    code = await asyncio.to_thread(run)
    return code, stdout.getvalue(), stderr.getvalue()


async def post(lab: Lab, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
    """``POST /api/v1/tickets`` with ``body``: (status, JSON answer)."""
    headers = {"Authorization": f"Bearer {token or lab.controller.admin_token}"}
    async with lab.http.post(
        f"{lab.controller.url}/api/v1/tickets", json=body, headers=headers
    ) as response:
        return response.status, await response.json()


async def test_support_request_goes_to_the_desk_saying_which_service_of_which_plan(
    lab: Lab, smtp_peer: SmtpPeer
) -> None:
    """``tickets open --category support`` for a HEZO+ unit: the desk's e-mail, in the plan's
    language, names the service and plan, the description read from stdin and the reaction
    deadline; no diagnostics are collected for it; the opening is audited."""
    code, out, err = await tickets_cli(
        lab, "open", "--serial", "X1", "--category", "support", "--summary",
        "Teams Rooms sign-in loops", "--description", "-", "--contact", "Jan Kowalski",
        stdin="Since Monday the unit asks\nfor the Teams account every hour.\n",
    )  # fmt: skip
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith("PF-") and " open " in first and "support_request" in first
    ticket_id = first.split()[0]
    await wait_until(lambda: len(smtp_peer.received) == 1, timeout=60)
    mail = smtp_peer.received[0].message
    assert mail["Subject"] == (
        f"[{ticket_id}] Zgłoszenie serwisowe: Poly Studio X50 X1 - prośba o wsparcie techniczne"
    )
    body = mail.get_body(("plain",))
    assert body is not None
    lines = body.get_content().splitlines()
    for line in (
        "Numer seryjny: X1",
        "Numer umowy serwisowej: HZ-2025-0001",
        "Usterka: prośba o wsparcie techniczne (Teams Rooms sign-in loops)",
        "Zamawiana usługa: wsparcie techniczne (HEZO+)",
        "Opis:",
        "  Since Monday the unit asks",
        "  for the Teams account every hour.",
        "Zgłoszenie utworzone przez administratora w polyfleet.",
    ):
        assert line in lines, line
    assert any(line.startswith("Zgłaszający (osoba upoważniona): Jan Kowalski") for line in lines)
    assert not list(mail.iter_attachments())
    await wait_until(lambda: lab.service.get(ticket_id).status.value == "sent", timeout=60)
    shown = await lab.admin("GET", f"/api/v1/tickets/{ticket_id}")
    assert shown["category"] == "support" and shown["status"] == "sent"
    assert shown["sla"]["reaction_due"] is not None and shown["bundle"] is None
    audit = await lab.admin("GET", "/api/v1/audit", params={"action": "ticket.open"})
    assert [entry["target"] for entry in audit["entries"]] == [f"ticket:{ticket_id}"]


async def test_a_service_the_plan_lacks_is_refused_naming_the_plan_and_what_would_give_it(
    lab: Lab, smtp_peer: SmtpPeer
) -> None:
    """Configuration help for a POLY+ unit is refused (422 not_in_plan) naming POLY+ and
    HEZO+; the CLI says the same on stderr; nothing is filed and nothing is sent."""
    status, answer = await post(
        lab, {"serial": "X2", "category": "configuration", "summary": "Zoom layout"}
    )
    assert status == 422, answer
    assert answer["error"]["code"] == "not_in_plan" and answer["error"]["field"] == "category"
    message = answer["error"]["message"]
    assert "unit X2 is covered by POLY+ (poly_plus)" in message
    assert "help with configuration comes with HEZO+ (hezo_plus)" in message
    code, _, err = await tickets_cli(
        lab, "open", "--serial", "X3", "--category", "support", "--summary", "help"
    )
    assert code == 1
    assert "unit X3 is covered by standard manufacturer warranty (standard)" in err
    assert "technical support comes with HEZO+ (hezo_plus), Partner POLY+" in err
    assert (await lab.admin("GET", "/api/v1/tickets"))["tickets"] == []
    assert smtp_peer.received == []


async def test_open_is_checked_and_viewers_cannot(lab: Lab) -> None:
    """A viewer is refused (403); an unknown unit is 404; a summary with a line break and a
    request without serial or site are 422 naming the field; a site-wide fault is filed."""
    viewer, _ = await lab.controller.core.access.create_token(Role.VIEWER, "viewer")
    body = {"serial": "X1", "category": "fault", "summary": "cracked screen"}
    assert (await post(lab, body, viewer))[0] == 403
    status, answer = await post(lab, {**body, "serial": "NOPE1"})
    assert status == 404 and "neither enrolled nor in the asset registry" in str(answer)
    status, answer = await post(lab, {**body, "summary": "two\nlines"})
    assert status == 422 and answer["error"]["field"] == "summary"
    status, answer = await post(lab, {"category": "fault", "summary": "x"})
    assert status == 422 and answer["error"]["field"] == "serial"
    status, answer = await post(
        lab, {"site": "krk", "category": "fault", "summary": "the whole floor lost power"}
    )
    assert status == 201, answer
    assert answer["kind"] == "site" and answer["fault"] == "reported_fault"
    assert answer["status"] == "open" and answer["missing"] == []


#: A Trio conference phone and a Sync speakerphone: Poly products the agents do not poll.
AUDIO_REGISTRY = """\
serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,host_serial
TRIO1,Poly Trio C60,2025-01-05,partner_poly_plus,PPP-T1,2025-01-10,2026-01-09,krk,Sala Wawel,
SYNC1,poly  sync 40,2025-01-05,hezo_plus,HZ-S1,2025-01-10,2027-01-09,krk,Sala Wawel,
X1,studio_x50,2025-01-05,hezo_plus,HZ-2025-0001,2025-01-10,2027-01-09,krk,Sala Wawel,
"""


async def test_a_poly_product_that_is_not_polled_is_registered_entitled_and_ticketed(
    tmp_path: Path, smtp_peer: SmtpPeer
) -> None:
    """A Trio C60 under Partner POLY+ is imported as printed, listed not_monitored, has its
    entitlement, is answered by GET /api/v1/devices/TRIO1 with both, and gets a hand-opened
    support ticket that reaches the desk; a Sync 40 under HEZO+ (single video systems only)
    is flagged; an unknown brand is refused."""
    async with start_lab(
        tmp_path / "controller", SettableClock(T0), smtp_peer, None, registry=AUDIO_REGISTRY
    ) as lab:
        assets = {a["serial"]: a for a in (await lab.admin("GET", "/api/v1/assets"))["assets"]}
        assert assets["TRIO1"]["model"] == "Poly Trio C60"
        assert assets["SYNC1"]["model"] == "poly sync 40"
        assert assets["TRIO1"]["monitoring"] == "not_monitored"
        assert assets["X1"]["monitoring"] == "not_seen"
        verdict = await lab.admin("GET", "/api/v1/devices/TRIO1/entitlement")
        assert verdict["plan"] == "partner_poly_plus"
        flagged = await lab.admin("GET", "/api/v1/devices/SYNC1/entitlement")
        assert flagged["flags"] and "unknown_asset" not in flagged["flags"]
        device = await lab.admin("GET", "/api/v1/devices/TRIO1")
        assert device["monitoring"] == "not_monitored", device
        assert device["health"]["state"] == "not_monitored" and device["reports"] == []
        assert device["model"] == "Poly Trio C60" and device["room"] == "Sala Wawel"
        assert device["entitlement"]["plan"] == "partner_poly_plus"
        assert device["registry"]["contracts"][0]["contract_number"] == "PPP-T1"
        async with lab.http.get(
            f"{lab.controller.url}/api/v1/devices/X1", headers=lab.controller.admin_headers
        ) as response:
            assert response.status == 404, "a polled model no agent reported is not a device"
        status, ticket = await post(
            lab, {"serial": "TRIO1", "category": "support", "summary": "echo on calls"}
        )
        assert status == 201, ticket
        assert ticket["model"] == "Poly Trio C60" and ticket["contract_number"] == "PPP-T1"
        await wait_until(lambda: len(smtp_peer.received) == 1, timeout=60)
        assert (
            smtp_peer.received[0]
            .message["Subject"]
            .endswith("Poly Trio C60 TRIO1 - prośba o wsparcie techniczne")
        )
        bad = AUDIO_REGISTRY.replace("Poly Trio C60", "Cisco Room Kit")
        async with lab.http.post(
            f"{lab.controller.url}/api/v1/assets/import",
            data=bad.encode(),
            headers={**lab.controller.admin_headers, "Content-Type": "text/csv"},
        ) as response:
            refused = await response.json()
        assert response.status == 422
        assert "another Poly product as printed on the contract" in str(refused)
