"""Every missed deadline escalates once: delivery and return too, under any plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from testkit.clocks import SettableClock
from testkit.waiting import wait_until

from polyfleet.shared.schema import ProblemCode
from tickets.conftest import SmtpPeer, WebhookPeer
from tickets.test_live import T0, Lab, start_lab

ESCALATION = "eskalacja@fleet.example.pl"


def escalations(smtp_peer: SmtpPeer) -> list[str]:
    """The subjects of the mails sent to the escalation address, in order."""
    return [m.message["Subject"] for m in smtp_peer.received if m.recipients == [ESCALATION]]


async def step(lab: Lab, at: datetime) -> None:
    """The controller's periodic check at ``at``, and its deliveries."""
    lab.clock.now = at
    await lab.service.tick(at)
    await lab.service.worker.run_once(at)


async def test_missed_delivery_and_return_each_escalate_once_saying_by_how_much(
    tmp_path: Path, smtp_peer: SmtpPeer, escalation_peer: WebhookPeer
) -> None:
    """A POLY+ unit (no reaction time promised): the NBD delivery missed by 2 h 5 min and the
    7-day return missed by a day each send one escalation by mail and webhook naming the
    deadline, when it was due, the plan's promise and the delay; later checks send none."""
    async with start_lab(
        tmp_path / "controller",
        SettableClock(T0),
        smtp_peer,
        None,
        escalation_email=ESCALATION,
        escalation_webhook=escalation_peer,
    ) as lab:
        await lab.report_minutes(("X2",), range(0, 8), ProblemCode.CAMERA_DOWN)
        key = lab.service.ticket_key("X2", "camera_down")
        await wait_until(lambda: bool(lab.controller.core.jobs.find(serial="X2")), timeout=60)
        await lab.agent_does_jobs()
        await wait_until(lambda: lab.service.get(key).status.value == "sent", timeout=60)
        for action in ("ack", "accept", "shipped"):
            await lab.admin("POST", f"/api/v1/tickets/{key}/{action}")
        # Accepted Monday 10:07 in Warsaw: the unit is due by 17:00 on Tuesday (E9).
        due = datetime(2025, 11, 25, 16, 0, tzinfo=UTC)
        shown = await lab.admin("GET", f"/api/v1/tickets/{key}")
        assert datetime.fromisoformat(shown["sla"]["delivery_due"]) == due
        await step(lab, due - timedelta(minutes=1))
        assert escalations(smtp_peer) == []
        await step(lab, due + timedelta(hours=2, minutes=5))
        await step(lab, due + timedelta(hours=5))
        await wait_until(lambda: len(escalations(smtp_peer)) == 1, timeout=60)
        assert escalations(smtp_peer)[0].startswith(
            f"Escalation (delivery deadline missed): [{key}] Service ticket: Poly Studio X50 X2"
        )
        mail = next(m.message for m in smtp_peer.received if m.recipients == [ESCALATION])
        body = mail.get_body(("plain",))
        assert body is not None
        lines = body.get_content().splitlines()
        assert lines[0] == (
            "The delivery deadline has passed and the replacement has not been delivered."
        )
        assert "Delivery due: 2025-11-25T17:00:00+01:00" in lines
        assert any(line.startswith("Promised by the plan: ") for line in lines)
        assert "Missed by (when escalated): 2 h 5 min" in lines
        await wait_until(lambda: len(escalation_peer.received) == 1, timeout=60)
        hook = escalation_peer.received[0]
        assert hook["event"] == "escalation" and hook["deadline"] == "delivery"
        assert hook["late_s"] == 2 * 3600 + 5 * 60
        # The replacement arrives; the failed unit is due back in 7 days (W6, E10).
        await lab.admin("POST", f"/api/v1/tickets/{key}/received")
        received = lab.clock.now
        await step(lab, received + timedelta(days=7, minutes=-1))
        assert len(escalations(smtp_peer)) == 1
        await step(lab, received + timedelta(days=8))
        await step(lab, received + timedelta(days=9))
        await wait_until(lambda: len(escalations(smtp_peer)) == 2, timeout=60)
        assert escalations(smtp_peer)[1].startswith("Escalation (return deadline missed):")
        shown = await lab.admin("GET", f"/api/v1/tickets/{key}")
        assert [(e["deadline"], e["to"]) for e in shown["escalations"]] == [
            ("delivery", [f"email:{ESCALATION}", f"webhook:{escalation_peer.url}"]),
            ("return", [f"email:{ESCALATION}", f"webhook:{escalation_peer.url}"]),
        ]
        assert shown["escalated_at"] is None  # the reaction was never missed
        notes = [note["text"] for note in shown["notes"]]
        assert any(text.startswith("return deadline missed by 1 d; escalated") for text in notes)
    assert len(escalations(smtp_peer)) == 2
