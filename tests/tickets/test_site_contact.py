"""A site's authorised reporter and RMA delivery address: set by CLI and API, carried by tickets."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dashboard.dashboard_testkit import http_sign_in
from testkit.clocks import SettableClock
from testkit.waiting import wait_until

from polyfleet.cli import main
from polyfleet.controller.testing import SITE_ADDRESS, SITE_CONTACT
from polyfleet.controller.web.security import SESSION_COOKIE
from polyfleet.shared.schema import ProblemCode
from tickets.conftest import SmtpPeer
from tickets.test_live import T0, Lab, start_lab

KRAKOW = ("--name", "Kraków", "--timezone", "Europe/Warsaw")
CLEARED = {
    "contact": {key: "" for key in SITE_CONTACT},
    "delivery_address": {key: "" for key in SITE_ADDRESS},
}


@pytest.fixture
async def lab(tmp_path: Path, smtp_peer: SmtpPeer) -> AsyncIterator[Lab]:
    """A controller mailing the desk, its site krk stripped of reporter and address."""
    async with start_lab(
        tmp_path / "controller", SettableClock(T0), smtp_peer, None, language="en"
    ) as lab:
        await lab.admin("PATCH", "/api/v1/sites/krk", json=CLEARED)
        yield lab


def polyfleet(data_dir: Path, *argv: str) -> tuple[int, str, str]:
    """``polyfleet controller ARGV --data-dir DATA_DIR`` with no server running: (exit
    status, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["controller", *argv, "--data-dir", str(data_dir)])
    return code, stdout.getvalue(), stderr.getvalue()


async def test_ticket_of_a_site_without_reporter_is_held_and_goes_out_once_the_site_has_one(
    lab: Lab, smtp_peer: SmtpPeer
) -> None:
    """A fault at a site without reporter and address is held naming each missing field;
    set on the site, the ticket goes out and the desk's e-mail (in the plan's language)
    names both."""
    await lab.report_minutes(("X1",), range(0, 8), ProblemCode.CAMERA_DOWN)
    (ticket,) = (await lab.admin("GET", "/api/v1/tickets"))["tickets"]
    assert ticket["status"] == "needs_data"
    assert ticket["missing"] == [
        "contact_name",
        "contact_phone",
        "contact_email",
        "address_street",
        "address_postal_code",
        "address_city",
        "address_country",
    ]
    site = await lab.admin(
        "PATCH",
        "/api/v1/sites/krk",
        json={"contact": SITE_CONTACT, "delivery_address": SITE_ADDRESS},
    )
    assert site["ticket_fields_missing"] == []
    await wait_until(lambda: lab.service.get(ticket["id"]).status.value == "open", timeout=60)
    await lab.agent_does_jobs()
    await wait_until(lambda: len(smtp_peer.received) == 1, timeout=60)
    body = smtp_peer.received[0].message.get_body(("plain",))
    assert body is not None
    lines = body.get_content().splitlines()
    assert (
        "Zgłaszający (osoba upoważniona): Anna Nowak, tel. +48 12 345 67 89, "
        "adres e-mail anna@example.pl" in lines
    )
    assert (
        "Adres dostawy sprzętu zastępczego (RMA): ul. Florianska 1, 31-019 Krakow, Polska" in lines
    )
    audit = await lab.admin("GET", "/api/v1/audit", params={"action": "site.contact"})
    assert [entry["target"] for entry in audit["entries"]][:1] == ["site:krk"]


async def test_site_contact_is_checked_and_a_bad_field_changes_nothing(lab: Lab) -> None:
    """An e-mail without a domain or a phone without digits is refused (422, the field
    named) and the site keeps what it had; the API answers the site with its contact."""
    async with lab.http.patch(
        f"{lab.controller.url}/api/v1/sites/krk",
        json={"contact": {"name": "Jan", "email": "jan@"}},
        headers=lab.controller.admin_headers,
    ) as response:
        refused = await response.json()
    assert response.status == 422, refused
    assert refused["error"]["field"] == "contact.email"
    answer = await lab.admin(
        "PATCH", "/api/v1/sites/krk", json={"delivery_address": {"city": "Kraków"}}
    )
    assert answer["contact"] is None
    assert answer["delivery_address"] == {
        "street": "",
        "postal_code": "",
        "city": "Kraków",
        "country": "",
    }
    assert "address_city" not in answer["ticket_fields_missing"]
    assert "contact_name" in answer["ticket_fields_missing"]


def test_site_contact_command_sets_shows_and_checks_the_fields(tmp_path: Path) -> None:
    """``site contact`` prints the reporter, the address and what tickets would be held for;
    a phone without digits is refused naming the field, and nothing changes."""
    data_dir = tmp_path / "d"
    assert polyfleet(data_dir, "site", "add", "krk", *KRAKOW)[0] == 0
    code, out, err = polyfleet(data_dir, "site", "contact", "krk")
    assert code == 0, err
    assert out.splitlines()[:3] == ["site krk (Kraków)", "  reporter: -", "  delivery address: -"]
    assert "  tickets are held until it has: contact_name, contact_phone" in out
    code, out, err = polyfleet(
        data_dir, "site", "contact", "krk", "--name", "Anna Nowak", "--phone",
        "+48 12 345 67 89", "--email", "anna@example.pl", "--street", "ul. Floriańska 1",
        "--postal-code", "31-019", "--city", "Kraków", "--country", "Polska",
    )  # fmt: skip
    assert code == 0, err
    assert out.splitlines()[1:3] == [
        "  reporter: Anna Nowak, +48 12 345 67 89, anna@example.pl",
        "  delivery address: ul. Floriańska 1, 31-019 Kraków, Polska",
    ]
    assert "held" not in out
    code, _, err = polyfleet(data_dir, "site", "contact", "krk", "--phone", "call me")
    assert code == 1 and "contact.phone" in err and "not a telephone number" in err
    code, out, _ = polyfleet(data_dir, "site", "contact", "krk")
    assert "  reporter: Anna Nowak, +48 12 345 67 89, anna@example.pl" in out.splitlines()


async def test_agents_and_sites_page_shows_the_reporter_and_what_tickets_wait_for(
    lab: Lab,
) -> None:
    """The Agents and sites page lists each site's reporter and delivery address, and says
    which fields its tickets are held for while they are missing."""
    url = lab.controller.url
    session = await http_sign_in(lab.http, url, lab.controller.admin_token)
    async with lab.http.get(url + "/agents", cookies={SESSION_COOKIE: session}) as response:
        before = await response.text()
    assert response.status == 200
    assert "tickets held until set: contact_name, contact_phone" in before
    await lab.admin("PATCH", "/api/v1/sites/krk", json={"contact": SITE_CONTACT})
    async with lab.http.get(url + "/agents", cookies={SESSION_COOKIE: session}) as response:
        after = await response.text()
    assert "Anna Nowak, +48 12 345 67 89, anna@example.pl" in after
    assert "tickets held until set: address_street" in after
