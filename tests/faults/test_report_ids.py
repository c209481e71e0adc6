"""Report ids against a real controller process: unique per agent, remembered past history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
from faultkit import Controllers, enroll, get_json, post_batch
from testkit.reports import batch, report, snapshot

from polyfleet.controller.store.base import REPORTS
from polyfleet.controller.store.tinydb import TinyDBStore

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def at(minutes: int) -> datetime:
    return START + timedelta(minutes=minutes)


async def test_same_report_id_from_agents_of_two_sites_is_stored_for_both(
    controllers: Controllers, http: aiohttp.ClientSession
) -> None:
    """Two sites' agents sending the same report id: both reports are accepted and stored."""
    controller = await controllers.start(sites=("krk", "waw"))
    krk = (await enroll(http, controller.url, controller.codes["krk"][0]))["token"]
    waw = (await enroll(http, controller.url, controller.codes["waw"][0]))["token"]
    for token, serial in ((krk, "KRK-1"), (waw, "WAW-1")):
        answer = await post_batch(
            http, controller.url, token, batch(report(snapshot(serial), "outbox-0001-1"))
        )
        assert answer.body == {"accepted": 1, "duplicates": 0}, serial
    for serial in ("KRK-1", "WAW-1"):
        detail = await get_json(
            http, controller.url, f"/api/v1/devices/{serial}", controller.admin_token
        )
        assert detail.status == 200, detail
        assert detail.body["reports"] == ["outbox-0001-1"]
    # Each agent's resend is still its own duplicate.
    again = await post_batch(
        http, controller.url, waw, batch(report(snapshot("WAW-1"), "outbox-0001-1"))
    )
    assert again.body == {"accepted": 0, "duplicates": 1}


async def test_resend_of_reports_that_left_the_history_is_a_duplicate_across_kill_9(
    controllers: Controllers, http: aiohttp.ClientSession
) -> None:
    """A backlog batch resent after its reports left the history is all duplicates, even
    after kill -9 and a restart; the accepted count does not grow."""
    controller = await controllers.start("[store]\nreport_history = 2\n")
    token = (await enroll(http, controller.url, controller.codes["krk"][0]))["token"]
    backlog = batch(
        *(report(snapshot("BACKLOG-1", collected_at=at(n)), f"backlog-{n:04d}") for n in range(6))
    )
    first = await post_batch(http, controller.url, token, backlog)
    assert first.body == {"accepted": 6, "duplicates": 0}
    resent = await post_batch(http, controller.url, token, backlog)
    assert resent.body == {"accepted": 0, "duplicates": 6}
    await controller.kill()
    await controller.start()
    after_crash = await post_batch(http, controller.url, token, backlog)
    assert after_crash.body == {"accepted": 0, "duplicates": 6}
    detail = await get_json(
        http, controller.url, "/api/v1/devices/BACKLOG-1", controller.admin_token
    )
    assert detail.body["reports"] == ["backlog-0004", "backlog-0005"]


async def test_report_too_old_to_keep_is_not_counted_as_accepted(
    controllers: Controllers, http: aiohttp.ClientSession
) -> None:
    """A first-time report older than a full history is neither accepted nor stored."""
    controller = await controllers.start("[store]\nreport_history = 2\n")
    token = (await enroll(http, controller.url, controller.codes["krk"][0]))["token"]
    newer = batch(
        report(snapshot("OLD-1", collected_at=at(10)), "old-test-10"),
        report(snapshot("OLD-1", collected_at=at(11)), "old-test-11"),
    )
    assert (await post_batch(http, controller.url, token, newer)).body == {
        "accepted": 2,
        "duplicates": 0,
    }
    late = batch(report(snapshot("OLD-1", collected_at=at(1)), "old-test-01"))
    assert (await post_batch(http, controller.url, token, late)).body == {
        "accepted": 0,
        "duplicates": 0,
    }
    detail = await get_json(http, controller.url, "/api/v1/devices/OLD-1", controller.admin_token)
    assert detail.body["reports"] == ["old-test-10", "old-test-11"]
    counted = {
        result: await controller.metric(
            http,
            controller.admin_token,
            f'polyfleet_reports_ingested_total{{result="{result}"}}',
        )
        for result in ("accepted", "duplicate", "superseded")
    }
    assert counted == {"accepted": 2, "duplicate": 0, "superseded": 1}


async def test_reports_stored_by_id_alone_are_rekeyed_and_still_recognised(
    controllers: Controllers, http: aiohttp.ClientSession
) -> None:
    """Reports an earlier version keyed by id alone are found after an upgrade: a resend of
    one is a duplicate and the device lists it."""
    controller = await controllers.start()
    enrolled = await enroll(http, controller.url, controller.codes["krk"][0])
    assert await controller.stop() == 0
    store = TinyDBStore(controller.data_dir / "store")
    await store.open()
    legacy = report(snapshot("LEGACY-1", collected_at=at(0)), "legacy-0001")
    await store.put_many(
        REPORTS,
        {
            "legacy-0001": {
                **legacy,
                "serial": "LEGACY-1",
                "site_id": "krk",
                "agent_id": enrolled["agent_id"],
                "received_at": at(0).isoformat(),
            }
        },
    )
    await store.close()
    await controller.start()
    resent = await post_batch(http, controller.url, enrolled["token"], batch(legacy))
    assert resent.body == {"accepted": 0, "duplicates": 1}
    newer = report(snapshot("LEGACY-1", collected_at=at(1)), "legacy-0002")
    assert (await post_batch(http, controller.url, enrolled["token"], batch(newer))).body == {
        "accepted": 1,
        "duplicates": 0,
    }
    reports = await get_json(
        http, controller.url, "/api/v1/devices/LEGACY-1/reports", controller.admin_token
    )
    assert [r["id"] for r in reports.body["reports"]] == ["legacy-0001", "legacy-0002"]
