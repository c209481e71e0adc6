"""What the service desk receives states the service terms: deadlines, flags, contacts, means."""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from testkit.clocks import SettableClock
from testkit.waiting import wait_until

from polyfleet.cli import main
from polyfleet.controller.services.entitlement import DEFAULT_PLANS_PATH
from polyfleet.shared.schema import Model, ProblemCode
from tickets.conftest import SmtpPeer, WebhookPeer
from tickets.test_live import MINUTE, T0, Lab, cli, snapshot, start_lab

#: Monday 24 November 2025; every contract below is in force then.
REGISTRY = """\
serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,host_serial
X1,studio_x50,2025-01-05,hezo_plus,HZ-2025-0001,2025-01-10,2027-01-09,krk,Sala Wawel,
X2,studio_x30,2025-01-05,poly_plus,PP-0002,2025-01-10,2026-01-09,krk,Sala Kopiec,
X3,studio_x70,2025-01-05,,,,,krk,Sala Sukiennice,
X4,studio_x30,2025-01-05,partner_poly_plus,PPP-0004,2025-01-10,2026-01-09,krk,Sala Smocza,
G1,g7500,2025-01-05,hezo_plus,HZ-2025-0009,2025-03-10,2027-03-09,krk,Sala Duża,
X5,studio_x50,2020-01-05,partner_poly_plus,PPP-0005,2020-01-10,2023-01-09,krk,Sala Mała,
X5,studio_x50,2020-01-05,partner_poly_plus,PPP-0006,2023-01-10,2026-01-09,krk,Sala Mała,
X6,studio_x50,2024-11-05,partner_poly_plus,PPP-0007,2024-11-10,2025-11-09,krk,Sala Nowa,
"""
CAMERA = ProblemCode.CAMERA_DOWN


def start_desk_lab(
    tmp_path: Path,
    clock: SettableClock,
    smtp_peer: SmtpPeer | None,
    webhook_peer: WebhookPeer,
    **options: Any,
) -> AbstractAsyncContextManager[Lab]:
    """A controller with the registry above and the desk's webhook (e-mail unless None);
    no bundle wait."""
    return start_lab(
        tmp_path / "controller",
        clock,
        smtp_peer,
        webhook_peer,
        registry=REGISTRY,
        diagnostics_timeout_s=0,
        **options,
    )


@pytest.fixture
async def desk_lab(
    tmp_path: Path, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> AsyncIterator[Lab]:
    """A controller with the registry above, e-mail and the desk's webhook; no bundle wait."""
    async with start_desk_lab(tmp_path, SettableClock(T0), smtp_peer, webhook_peer) as lab:
        yield lab


async def fault(lab: Lab, serial: str, model: Model = Model.STUDIO_X50, *, start: int = 0) -> str:
    """Eight minutes of a camera fault on ``serial`` from minute ``start``: a ticket."""
    for minute in range(start, start + 8):
        lab.clock.now = T0 + minute * MINUTE
        await lab.post(snapshot(serial, lab.clock.now, CAMERA, model=model))
    return lab.service.ticket_key(serial, "camera_down")


def mail_of(peer: SmtpPeer, key: str) -> EmailMessage:
    (mail,) = [m.message for m in peer.received if m.message["X-Polyfleet-Ticket"] == key]
    return mail


def body_lines(mail: EmailMessage) -> list[str]:
    body = mail.get_body(("plain",))
    assert body is not None
    return str(body.get_content()).splitlines()


def hook_of(peer: WebhookPeer, key: str, event: str = "ticket") -> dict[str, Any]:
    (payload,) = [p for p in peer.received if p["ticket"]["id"] == key and p["event"] == event]
    return payload


async def delivered(lab: Lab, smtp: SmtpPeer, hook: WebhookPeer, *keys: str) -> None:
    await wait_until(
        lambda: all(
            any(m.message["X-Polyfleet-Ticket"] == key for m in smtp.received)
            and any(p["ticket"]["id"] == key for p in hook.received)
            for key in keys
        )
    )
    await wait_until(lambda: all(lab.service.get(key).status.value == "sent" for key in keys))


# -- the reaction deadline this send starts (W2, E8) -------------------------------------------


async def test_desk_never_saw_the_reaction_deadline(
    desk_lab: Lab, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """The e-mail and the webhook state the reaction deadline their sending starts, and the
    plan's window, reaction, delivery and return terms; the stored ticket agrees to the
    second."""
    key = await fault(desk_lab, "X1")
    await delivered(desk_lab, smtp_peer, webhook_peer, key)
    stored = await desk_lab.admin("GET", f"/api/v1/tickets/{key}")
    sent_at = T0 + 7 * MINUTE
    assert stored["sent_at"] == sent_at.isoformat().replace("+00:00", "Z")
    assert stored["sla"]["reaction_due"] == "2025-11-24T11:07:00+01:00"
    hook = hook_of(webhook_peer, key)["ticket"]
    assert hook["status"] == "sent"
    assert hook["sent_at"] == stored["sent_at"]
    assert hook["sla"] == stored["sla"]
    assert (hook["window"], hook["reaction_hours"], hook["return_days"]) == ("8x5", 1, 7)
    assert hook["delivery_kind"] == "next_business_day" and hook["shipping_paid"] is True
    lines = body_lines(mail_of(smtp_peer, key))
    for line in (
        "Okno przyjmowania zgłoszeń: 8x5 (poniedziałek-piątek 9:00-17:00 czasu polskiego, bez "
        "świąt i dni ustawowo wolnych)",
        "Czas reakcji: 1 godz. (liczony w oknie przyjmowania zgłoszeń)",
        "Termin reakcji: 2025-11-24T11:07:00+01:00",
        "Czas dostawy: następny dzień roboczy (do 17:00) po akceptacji zgłoszenia jako "
        "zasadnego; w tym terminie sprzęt dociera na miejsce (kurierem)",
        "Termin dostawy: liczony od akceptacji zgłoszenia jako zasadnego",
        "Zwrot uszkodzonego sprzętu: w ciągu 7 dni od otrzymania sprzętu zastępczego, na "
        "opłacony list przewozowy",
        "Koszty wysyłki w razie awarii pokrywa serwis",
    ):
        assert line in lines, line


# -- delivery means: arrival or dispatch (W3, P3) ---------------------------------------------


async def test_delivery_means_said_nothing_of_dispatch_or_arrival(
    desk_lab: Lab, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """Partner POLY+ promises the dispatch, POLY+ the arrival: both say so in JSON and text,
    and delivery_due is kept."""
    partner, poly = await fault(desk_lab, "X4"), await fault(desk_lab, "X2", start=10)
    await delivered(desk_lab, smtp_peer, webhook_peer, partner, poly)
    hooked = hook_of(webhook_peer, partner)["ticket"]
    assert hooked["delivery_means"] == "dispatch" and hooked["sla"]["delivery_means"] == "dispatch"
    assert "delivery_due" in hooked["sla"]
    partner_text = body_lines(mail_of(smtp_peer, partner))
    assert (
        "Czas dostawy: następny dzień roboczy (do 17:00) po akceptacji zgłoszenia jako "
        "zasadnego; w tym terminie producent wysyła część lub urządzenie, po potwierdzeniu "
        "awarii w diagnostyce"
    ) in partner_text
    assert "Zwrot uszkodzonego sprzętu: w ciągu 5 dni od otrzymania sprzętu zastępczego, na " \
        "opłacony list przewozowy" in partner_text  # fmt: skip
    english = body_lines(mail_of(smtp_peer, poly))
    assert (
        "Delivery time: the next business day (by 17:00) after the ticket is accepted as "
        "valid; the hardware arrives on site by then (by courier)"
    ) in english
    assert hook_of(webhook_peer, poly)["ticket"]["sla"]["delivery_means"] == "arrival"
    # Accepted: the deadline is the dispatch's, the next business day by 17:00.
    accepted = await desk_lab.admin("POST", f"/api/v1/tickets/{partner}/accept")
    assert accepted["sla"]["delivery_due"] == "2025-11-25T17:00:00+01:00"
    assert accepted["sla"]["delivery_means"] == "dispatch"


def test_sla_cli_names_the_delivery_means(capsys: pytest.CaptureFixture[str]) -> None:
    """`controller sla` says whether delivery_due is a dispatch or an arrival."""
    argv = ["controller", "sla", "--plan", "partner_poly_plus", "--submitted", "2025-11-24T10:00Z"]
    assert main([*argv, "--accepted", "2025-11-24T12:00Z", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["delivery_means"] == "dispatch"
    assert out["delivery_due"] == "2025-11-25T17:00:00+01:00"
    assert main(argv) == 0
    assert "delivery_means: dispatch" in capsys.readouterr().out


# -- flagged contracts (H1, H5, P5) -----------------------------------------------------------


async def test_ineligible_contract_went_out_as_an_ordinary_ticket(
    desk_lab: Lab, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """A HEZO+ contract on a G7500 bought late is flagged in the payload and the text, with
    its rules, what they mean, and that the contract is honoured as configured."""
    key = await fault(desk_lab, "G1", Model.G7500)
    await delivered(desk_lab, smtp_peer, webhook_peer, key)
    eligibility = hook_of(webhook_peer, key)["ticket"]["eligibility"]
    assert eligibility["contract_number"] == "HZ-2025-0009"
    assert eligibility["plan"] == "hezo_plus" and eligibility["grants"] is True
    assert sorted((f["rule"], f["code"]) for f in eligibility["flags"]) == [
        ("H1", "model"),
        ("H5", "late_purchase"),
    ]
    lines = body_lines(mail_of(smtp_peer, key))
    for line in (
        "UWAGA: umowa serwisowa HZ-2025-0009 (HEZO+) jest oznaczona: nie spełnia warunków, na "
        "jakich usługa jest sprzedawana:",
        "  - HEZO+ obejmuje wyłącznie pojedyncze systemy: Poly Studio E70, Poly Studio X30, "
        "Poly Studio X50, Poly Studio X70; to urządzenie to Poly G7500",
        "  - HEZO+ kupuje się razem z urządzeniem lub najpóźniej 30 dni po jego zakupie; zakup "
        "2025-01-05, początek umowy 2025-03-10 (64 dni później)",
        "Zgodnie z ustawieniami administratora takie umowy są honorowane do decyzji "
        "dystrybutora: zgłoszenie złożono na warunkach HEZO+.",
        "Czas reakcji: 1 godz. (liczony w oknie przyjmowania zgłoszeń)",
    ):
        assert line in lines, line
    assert not any("H1" in line or "H5" in line for line in lines)


async def test_flagged_contract_that_grants_nothing_says_which_terms_apply(
    tmp_path: Path, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """With ineligible_contracts_grant = false the ticket says the flagged contract grants
    nothing and goes out under the manufacturer warranty, with no reaction promise."""
    document = DEFAULT_PLANS_PATH.read_text(encoding="utf-8").replace(
        "ineligible_contracts_grant = true", "ineligible_contracts_grant = false"
    )
    assert tomllib.loads(document)["ineligible_contracts_grant"] is False
    plans = tmp_path / "plans.toml"
    plans.write_text(document, encoding="utf-8")
    async with start_desk_lab(
        tmp_path,
        SettableClock(T0),
        smtp_peer,
        webhook_peer,
        extra_sections={"entitlement": {"plans": str(plans)}},
    ) as lab:
        key = await fault(lab, "G1", Model.G7500)
        await delivered(lab, smtp_peer, webhook_peer, key)
        ticket = hook_of(webhook_peer, key)["ticket"]
        assert ticket["eligibility"]["grants"] is False
        assert ticket["plan"] == "standard" and ticket["reaction_hours"] is None
        assert ticket["contract_number"] == "HZ-2025-0009"
        lines = body_lines(mail_of(smtp_peer, key))
        # The plan in force is the manufacturer warranty: no language of its own, so English.
        assert (
            "As the admin configured, such contracts grant nothing: this request is filed "
            "under: standard manufacturer warranty."
        ) in lines
        assert (
            "Reaction time: none promised; the ticket is never escalated for lack of a reaction"
        ) in lines


async def test_renewal_chain_beyond_the_plans_maximum_is_flagged_on_the_ticket(
    desk_lab: Lab, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """Partner POLY+ renewed to six years in a row: imported, and the ticket names the flag."""
    key = await fault(desk_lab, "X5")
    await delivered(desk_lab, smtp_peer, webhook_peer, key)
    eligibility = hook_of(webhook_peer, key)["ticket"]["eligibility"]
    assert [(f["rule"], f["code"]) for f in eligibility["flags"]] == [("P5", "chain_length")]
    assert (
        "  - Partner POLY+ z odnowieniami obowiązuje łącznie najwyżej: 5 lat; kolejne umowy "
        "trwają od 2020-01-10 do 2026-01-09"
    ) in body_lines(mail_of(smtp_peer, key))
    verdict = await desk_lab.admin("GET", "/api/v1/devices/X5/entitlement")
    assert verdict["ineligible_rules"] == ["P5"] and "ineligible_contract" in verdict["flags"]


# -- where to follow up and how to escalate (W7) ----------------------------------------------


async def test_ticket_text_named_no_channels_nor_escalation_contacts(
    desk_lab: Lab, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """Each ticket names the desk's phone, portal and e-mail and the escalation contacts, in
    the plan's language; the webhook carries them too."""
    polish, english = await fault(desk_lab, "X1"), await fault(desk_lab, "X2", start=10)
    await delivered(desk_lab, smtp_peer, webhook_peer, polish, english)
    assert (
        "Kontakt w sprawie zgłoszenia: myHEZO: tel. +48 12 25 25 600, portal myHEZO.pl, "
        "e-mail pomoc@myhezo.pl"
    ) in body_lines(mail_of(smtp_peer, polish))
    assert "Eskalacja zgłoszenia: e-mail escalation@myhezo.pl, tel. +48 12 25 25 502" in (
        body_lines(mail_of(smtp_peer, polish))
    )
    lines = body_lines(mail_of(smtp_peer, english))
    assert (
        "Follow-up: myHEZO: phone +48 12 25 25 600, portal myHEZO.pl, e-mail pomoc@myhezo.pl"
    ) in lines
    assert "Escalation contact: e-mail escalation@myhezo.pl, phone +48 12 25 25 502" in lines
    contacts = hook_of(webhook_peer, polish)["ticket"]["contacts"]
    assert contacts["escalation_phone"] == "+48 12 25 25 502"


async def test_escalation_went_back_to_the_desks_own_webhook(
    tmp_path: Path,
    smtp_peer: SmtpPeer,
    webhook_peer: WebhookPeer,
    escalation_peer: WebhookPeer,
) -> None:
    """A missed reaction escalates to the escalation webhook and address, never to the
    desk's webhook."""
    clock = SettableClock(T0)
    async with start_desk_lab(
        tmp_path, clock, smtp_peer, webhook_peer, escalation_webhook=escalation_peer
    ) as lab:
        key = await fault(lab, "X1")
        await delivered(lab, smtp_peer, webhook_peer, key)
        due = lab.service.get(key).sla().reaction_due  # type: ignore[union-attr]
        assert due is not None
        clock.now = due
        await lab.service.tick(due)
        await wait_until(
            lambda: len(escalation_peer.received) == 1 and len(smtp_peer.received) == 2
        )
        await lab.service.worker.run_once(due + timedelta(hours=2))
        (escalation,) = escalation_peer.received
        assert escalation["event"] == "escalation" and escalation["ticket"]["id"] == key
        assert escalation_peer.bad_signatures == 0
        assert [p["event"] for p in webhook_peer.received] == ["ticket"]
        assert [m.recipients for m in smtp_peer.received][1] == ["escalation@myhezo.pl"]
        shown = await lab.admin("GET", f"/api/v1/tickets/{key}")
        assert shown["escalated_to"] == [
            "email:escalation@myhezo.pl",
            f"webhook:{escalation_peer.url}",
        ]


async def test_escalation_with_nowhere_to_go_tells_the_admin_once(
    tmp_path: Path, webhook_peer: WebhookPeer, caplog: pytest.LogCaptureFixture
) -> None:
    """Only the desk's webhook configured: a missed reaction is noted on the ticket with the
    contacts to call, the admin is told once in the log, and the desk's webhook gets nothing."""
    clock = SettableClock(T0)
    caplog.set_level(logging.WARNING, logger="polyfleet.controller.services.ticket_service")
    async with start_desk_lab(tmp_path, clock, None, webhook_peer) as lab:
        keys = [await fault(lab, "X1"), await fault(lab, "X4", start=10)]
        await wait_until(lambda: all(lab.service.get(k).status.value == "sent" for k in keys))
        for hours in (1, 2, 30):
            clock.now = T0 + timedelta(hours=hours)
            await lab.service.tick(clock.now)
            await lab.service.worker.run_once(clock.now)
        for key in keys:
            ticket = await lab.admin("GET", f"/api/v1/tickets/{key}")
            assert ticket["escalated_to"] == []
            assert any(
                "no escalation channel is configured: escalate by phone +48 12 25 25 502"
                in note["text"]
                for note in ticket["notes"]
            )
        assert [p["event"] for p in webhook_peer.received] == ["ticket", "ticket"]
    told = [
        r.getMessage() for r in caplog.records if "escalations cannot be sent" in r.getMessage()
    ]
    assert len(told) == 1, told
    assert "[escalation_webhook]" in told[0] and "+48 12 25 25 502" in told[0]


def test_sla_cli_showed_nothing_for_a_plan_that_never_escalates(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`controller sla` says a plan without a reaction promise never escalates on time."""
    argv = ["controller", "sla", "--plan", "poly_plus", "--submitted", "2025-11-24T10:00Z"]
    assert main(argv) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    assert "reaction_due: none promised" in lines
    assert (
        "escalation: never on time: POLY+ promises no reaction time, so its tickets are not "
        "escalated when nobody reacts"
    ) in lines
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["escalates"] is False and out["reaction_hours"] is None
    assert (
        main(["controller", "sla", "--plan", "hezo_plus", "--submitted", "2025-11-24T10:00Z"]) == 0
    )
    assert "escalation: at reaction_due if the ticket is not acknowledged by then to " \
        "escalation@myhezo.pl (+48 12 25 25 502)" in capsys.readouterr().out  # fmt: skip


# -- impossible orders (E8-E10) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "later", "earlier"),
    [
        (["--accepted", "2025-11-24T09:00:00+01:00"], "--accepted 2025-11-24T09:00:00+01:00",
         "--submitted 2025-11-24T10:00:00+01:00"),
        (["--accepted", "2025-11-24T12:00:00+01:00", "--received", "2025-11-24T11:00:00+01:00"],
         "--received 2025-11-24T11:00:00+01:00", "--accepted 2025-11-24T12:00:00+01:00"),
        (["--received", "2025-11-23T11:00:00+01:00"], "--received 2025-11-23T11:00:00+01:00",
         "--submitted 2025-11-24T10:00:00+01:00"),
    ],
)  # fmt: skip
def test_sla_cli_took_moments_in_an_impossible_order(
    extra: list[str], later: str, earlier: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Accepted before submitted, or received before accepted, is refused naming both."""
    argv = ["controller", "sla", "--plan", "hezo_plus", "--submitted", "2025-11-24T10:00+01:00"]
    assert main([*argv, *extra, "--json"]) == 2
    captured = capsys.readouterr()
    message = json.loads(captured.out)["error"]["message"]
    assert later in message and earlier in message
    assert later in captured.err and earlier in captured.err


async def test_ticket_actions_took_moments_in_an_impossible_order(
    desk_lab: Lab, smtp_peer: SmtpPeer, webhook_peer: WebhookPeer
) -> None:
    """`tickets accept --at` before the ticket was sent, or `received --at` before it was
    accepted, or a moment ahead of now, is refused naming both moments; a possible one dates
    the step and its deadline."""
    key = await fault(desk_lab, "X1")
    await delivered(desk_lab, smtp_peer, webhook_peer, key)
    refused = await cli(desk_lab, "accept", key, "--at", "2025-11-24T09:00:00+01:00", expect=1)
    message = refused["error"]["message"]
    assert "accepted at 2025-11-24T09:00:00+01:00" in message
    assert "sent at 2025-11-24T10:07:00+01:00" in message
    ahead = await cli(desk_lab, "accept", key, "--at", "2025-11-25T09:00:00+01:00", expect=1)
    assert "in the future" in ahead["error"]["message"]
    desk_lab.clock.now = T0 + timedelta(hours=3)
    accepted = await cli(desk_lab, "accept", key, "--at", "2025-11-24T10:30:00+01:00")
    assert datetime.fromisoformat(accepted["accepted_at"]) == T0 + timedelta(minutes=30)
    assert accepted["sla"]["delivery_due"] == "2025-11-25T17:00:00+01:00"
    early = await cli(desk_lab, "received", key, "--at", "2025-11-24T10:20:00+01:00", expect=1)
    assert "received at 2025-11-24T10:20:00+01:00" in early["error"]["message"]
    assert "accepted at 2025-11-24T10:30:00+01:00" in early["error"]["message"]
    assert (await desk_lab.admin("GET", f"/api/v1/tickets/{key}"))["status"] == "accepted"
