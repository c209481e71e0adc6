"""Reports read back from the request body are exactly what serialising their models gives."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from testkit.reports import batch, bearer, report, snapshot

from polyfleet.controller.testing import RunningController
from polyfleet.shared.schema import ReportBatch, _in_json_form, reports_json

AGENT_FORM = json.loads(
    ReportBatch.model_validate(
        batch(
            report(snapshot("X50-1", collected_at=datetime(2026, 3, 2, 9, 1, tzinfo=UTC))),
            report(
                snapshot(
                    "E70-1",
                    model="studio_e70",
                    host_serial="X50-1",
                    problems=[{"code": "camera_down", "detail": "no vid\u00e9o \U0001f4f7"}],
                    collected_at=datetime(2026, 3, 2, 9, 1, 2, 345678, tzinfo=UTC),
                    peripherals=[{"kind": "camera", "serial": "C1", "state": "connected"}],
                )
            ),
        )
    ).model_dump_json()
)


def _variant(**changes: Any) -> dict[str, Any]:
    """The agent's form of the first report, with these snapshot fields set (None: left out)."""
    body: dict[str, Any] = json.loads(json.dumps(AGENT_FORM))
    snap = body["reports"][0]["snapshot"]
    for name, value in changes.items():
        if value is None:
            del snap[name]
        else:
            snap[name] = value
    return body


def _typed(value: Any) -> str:
    """A form that tells 1 from 1.0 and True from 1, key order aside."""
    return json.dumps(value, sort_keys=True)


WRITTEN = {
    "agent form": json.dumps(AGENT_FORM, separators=(",", ":")),
    "agent form, spaced": json.dumps(AGENT_FORM, indent=2),
    "keys in another order": json.dumps(
        {**AGENT_FORM, "reports": [dict(reversed(r.items())) for r in AGENT_FORM["reports"]]}
    ),
    "offset +00:00": json.dumps(_variant(collected_at="2026-03-02T09:01:00+00:00")),
    "offset +01:00": json.dumps(_variant(collected_at="2026-03-02T10:01:00+01:00")),
    "lower-case z": json.dumps(_variant(collected_at="2026-03-02T09:01:00z")),
    "space for T": json.dumps(_variant(collected_at="2026-03-02 09:01:00Z")),
    "zero fraction": json.dumps(_variant(collected_at="2026-03-02T09:01:00.000000Z")),
    "short fraction": json.dumps(_variant(collected_at="2026-03-02T09:01:00.5Z")),
    "seven digits": json.dumps(_variant(collected_at="2026-03-02T09:01:00.1234567Z")),
    "unix seconds": json.dumps(_variant(collected_at=1772442060)),
    "unix seconds with fraction": json.dumps(_variant(collected_at=1772442060.25)),
    "integer uptime": json.dumps(_variant(uptime_s=3600)),
    "uptime as text": json.dumps(_variant(uptime_s="12.5")),
    "in_call as text": json.dumps(_variant(in_call="yes")),
    "in_call as number": json.dumps(_variant(in_call=1)),
    "defaults left out": json.dumps(
        _variant(
            model_raw=None,
            system_name=None,
            in_call=None,
            uptime_s=None,
            peripherals=None,
            host_serial=None,
        )
    ),
    "firmware and health defaults": json.dumps(
        _variant(firmware={"version": "4.1.0"}, health={"state": "ok"})
    ),
    "problem detail left out": json.dumps(
        _variant(health={"state": "fault", "problems": [{"code": "lan_down"}]})
    ),
    "peripheral fields left out": json.dumps(_variant(peripherals=[{"kind": "remote"}])),
    "escapes": json.dumps(_variant(system_name='Sala \u0142\u00f3d\u017a \U0001f600 "A"\\')),
    "duplicate key, last wins": json.dumps(AGENT_FORM).replace(
        '"in_call": false', '"in_call": "yes", "in_call": false', 1
    ),
    "with a notice": json.dumps(
        {
            **AGENT_FORM,
            "notices": [{"kind": "agent_started", "at": "2026-03-02T09:00:00+00:00"}],
        }
    ),
    "no reports": json.dumps({"protocol_version": 1, "reports": []}),
}


@pytest.mark.parametrize("name", sorted(WRITTEN))
def test_reports_read_from_the_body_equal_the_dumped_models(name: str) -> None:
    raw = WRITTEN[name].encode()
    validated = ReportBatch.model_validate_json(raw)
    assert _typed(reports_json(raw, validated)) == _typed(
        validated.model_dump(mode="json")["reports"]
    )


def test_the_agent_form_is_read_from_the_body_and_others_are_not() -> None:
    """What the agent sends takes the quick way; a form validation converts does not."""
    agent = [r for r in AGENT_FORM["reports"]]
    assert all(_in_json_form(r) for r in agent)
    for name in ("offset +00:00", "integer uptime", "in_call as text", "defaults left out"):
        assert not _in_json_form(json.loads(WRITTEN[name])["reports"][0]), name


def test_a_body_other_than_the_batch_falls_back_to_the_models() -> None:
    """Given a body that is not the batch's, the models decide (never a half-read body)."""
    validated = ReportBatch.model_validate_json(WRITTEN["agent form"])
    expected = _typed(validated.model_dump(mode="json")["reports"])
    for other in (b"{not json", b"[1, 2]", b'{"reports": 5}', WRITTEN["no reports"].encode()):
        assert _typed(reports_json(other, validated)) == expected


async def test_a_report_in_another_form_is_stored_as_its_model_says(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Stored reports read the same whatever form the agent wrote them in."""
    agent = await controller.enroll("krk")
    body = json.loads(WRITTEN["defaults left out"])
    body["reports"][0]["snapshot"]["collected_at"] = "2026-03-02T09:01:00+00:00"
    body["reports"][0]["snapshot"]["uptime_s"] = 7
    async with http.post(
        f"{controller.url}/api/v1/agent/reports", json=body, headers=bearer(agent.token)
    ) as response:
        assert response.status == 200, await response.text()
    async with http.get(
        f"{controller.url}/api/v1/devices/X50-1/reports", headers=controller.admin_headers
    ) as response:
        stored = {
            r["snapshot"]["serial"]: r["snapshot"] for r in (await response.json())["reports"]
        }
    snap = stored["X50-1"]
    assert snap["collected_at"] == "2026-03-02T09:01:00Z"
    assert _typed(snap["uptime_s"]) == "7.0"
    assert (snap["host_serial"], snap["in_call"], snap["peripherals"]) == (None, False, [])
    assert (snap["model_raw"], snap["system_name"]) == ("", "")
