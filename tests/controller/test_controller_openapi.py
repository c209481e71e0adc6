"""The OpenAPI document against the real server: every answer checked against its schema."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp import web
from openapi_spec_validator import validate as validate_spec
from pydantic import BaseModel
from testkit.reports import batch, bearer, report, snapshot

from polyfleet.controller.api.openapi import build_openapi
from polyfleet.controller.app import create_app
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.http.spec import ADMINS, Param, endpoint, spec_of
from polyfleet.controller.keys import CORE
from polyfleet.controller.services.access import Role
from polyfleet.controller.store.transfer import read_backup
from polyfleet.controller.testing import RunningController, running_controller

NOW = datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
REGISTRY = """\
serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,host_serial
X50-1,studio_x50,2025-01-10,hezo_plus,HZ-1,2025-01-10,2027-01-09,krk,Wawel,
X30-1,studio_x30,2024-01-01,partner_poly_plus,PP-1,2024-01-01,2026-12-31,krk,Wawel,
G7-1,g7500,2025-03-01,hezo_plus,HZ-2,2025-03-01,2027-02-28,krk,Kazimierz,
UNSEEN,studio_x70,2026-10-01,,,,,waw,Praga,
"""
# One row of each kind the import refuses: unknown model, impossible date, P5 term.
BAD_REGISTRY = """\
serial,model,purchase_date,plan,contract_number,contract_start,contract_end,site,room,host_serial
A1,studio_x99,2025-01-10,,,,,krk,,
A2,studio_x50,2025-02-30,,,,,krk,,
A3,studio_x50,2025-01-10,partner_poly_plus,PP-9,2025-01-10,2027-01-09,krk,,
"""


@dataclass
class Conformance:
    """Checks each answer (and each request it sends) against the served document."""

    controller: RunningController
    http: aiohttp.ClientSession
    document: dict[str, Any]
    seen: set[tuple[str, str, str]] = field(default_factory=set)

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for template, operations in self.document["paths"].items():
            pattern = "^" + re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)) + "$"
            if re.match(pattern, path) and method in operations:
                return template, operations[method]
        raise AssertionError(f"{method.upper()} {path} is not in the document")

    def errors(self, schema: dict[str, Any], value: Any) -> list[jsonschema.ValidationError]:
        root = {**schema, "components": self.document["components"]}
        validator = jsonschema.Draft202012Validator(
            root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )
        return sorted(validator.iter_errors(value), key=str)

    def validate(self, schema: dict[str, Any], value: Any, where: str) -> None:
        errors = self.errors(schema, value)
        assert not errors, f"{where}: {errors[0].message} at {list(errors[0].absolute_path)}"

    def check_request(
        self,
        operation: dict[str, Any],
        where: str,
        query: dict[str, str],
        body: Any,
        media: str,
        expect: int,
    ) -> None:
        declared = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}
        for name, text in query.items():
            assert name in declared, f"{where}: query parameter {name!r} is not documented"
            schema = declared[name]["schema"]
            value: Any = int(text) if schema.get("type") == "integer" and text.isdigit() else text
            if expect < 400:
                self.validate(schema, value, f"{where} ?{name}")
        if body is None:
            assert "requestBody" not in operation or not operation["requestBody"]["required"]
            return
        content = operation["requestBody"]["content"]
        assert media in content, f"{where}: request media {media} not documented"
        if media == "application/json" and isinstance(body, dict):
            schema = content[media]["schema"]
            if expect == 422:
                # The document must predict the refusal: the body breaks its schema.
                assert self.errors(schema, body), f"{where}: the refused body fits the schema"
            elif expect < 400:
                self.validate(schema, body, f"{where} request")

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = "admin",
        query: dict[str, str] | None = None,
        json_body: Any = None,
        data: bytes | None = None,
        media: str = "application/json",
        expect: int = 200,
    ) -> Any:
        """Send a request, check it and its answer against the document, return the answer."""
        template, operation = self.operation(method, path)
        where = f"{method.upper()} {path} -> {expect}"
        query = query or {}
        body: Any = json_body if json_body is not None else data
        self.check_request(operation, where, query, body, media, expect)
        headers = {} if token is None else bearer(self.token(token))
        if data is not None:
            headers["Content-Type"] = media
        async with self.http.request(
            method,
            self.controller.url + path,
            params=query,
            json=json_body,
            data=data,
            headers=headers,
        ) as response:
            raw = await response.read()
            status, content_type = response.status, response.content_type
        assert status == expect, f"{where}: got {status}: {raw[:300]!r}"
        responses = operation["responses"]
        assert str(status) in responses or (status >= 400 and "default" in responses), (
            f"{where}: status {status} is not documented"
        )
        answer = responses.get(str(status)) or responses["default"]
        self.seen.add((template, method, str(status)))
        content = answer.get("content")
        if not raw:
            return None
        assert content is not None, f"{where}: a body is sent but none is documented"
        assert content_type in content, f"{where}: {content_type} not in {list(content)}"
        if content_type != "application/json":
            return raw
        parsed = json.loads(raw)
        self.validate(content[content_type]["schema"], parsed, where)
        return parsed

    def token(self, who: str) -> str:
        return self.controller.admin_token if who == "admin" else who


@pytest.fixture
async def conformance(tmp_path: Path) -> AsyncIterator[Conformance]:
    sections = {
        "tickets": {
            "min_reports": 1,
            "min_duration_s": 0,
            "check_interval_s": 3600,
            "diagnostics_timeout_s": 0,
        }
    }
    async with (
        running_controller(
            tmp_path / "data", clock=lambda: NOW, sections=sections, liveness_check_s=3600
        ) as controller,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(controller.url + "/api/v1/openapi.json") as response:
            document = await response.json()
        yield Conformance(controller, http, document)


async def test_openapi_document_validates_and_lists_every_route(
    conformance: Conformance,
) -> None:
    """The served document passes openapi-spec-validator and names every API route and parameter."""
    document = conformance.document
    validate_spec(document)
    app = conformance.controller.app
    assert document == build_openapi(app)
    served = {
        (re.sub(r"\{(\w+)(?::[^}]*)?\}", r"{\1}", route.resource.canonical), route.method.lower())
        for route in app.router.routes()
        if route.resource is not None
        and route.method not in ("HEAD", "*")
        and not spec_of(route.handler, route.method).hidden
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert served == documented
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert names == set(re.findall(r"\{(\w+)\}", path)), (path, method)
            assert "default" in operation["responses"], (path, method)
            if operation["security"]:
                assert {"401", "403"} <= set(operation["responses"]), (path, method)


async def test_answers_of_the_admin_entitlement_and_ticket_routes_match_the_document(
    conformance: Conformance,
) -> None:
    """Success and error answers of many routes validate against the document's schemas."""
    c = conformance
    app = c.controller.app
    viewer, _ = await app[CORE].access.create_token(Role.VIEWER, "viewer")
    agent = await c.controller.enroll("krk")
    await c.controller.ensure_site("waw")

    # Agent protocol: a batch with a fault (it becomes a ticket) and a malformed one.
    snaps = [
        snapshot("X50-1", collected_at=NOW),
        snapshot("X30-1", model="studio_x30", collected_at=NOW, version="4.1.3"),
        snapshot(
            "GHOST",
            model="studio_x70",
            collected_at=NOW,
            problems=[{"code": "camera_down", "detail": "no video"}],
        ),
    ]
    body = batch(*(report(s) for s in snaps))
    await c.call("post", "/api/v1/agent/reports", token=agent.token, json_body=body)
    await app[CORE].bus.drain()
    await c.call(
        "post",
        "/api/v1/agent/reports",
        token=agent.token,
        data=b"{not json",
        media="application/json",
        expect=400,
    )
    await c.call("get", "/api/v1/agent/jobs", token=agent.token)
    await c.call("get", "/api/v1/devices", token=agent.token, expect=403)

    # Core admin routes.
    await c.call("get", "/api/v1/sites")
    await c.call("post", "/api/v1/sites", json_body={"id": "gdn", "name": "Gdańsk"}, expect=201)
    await c.call("post", "/api/v1/sites", json_body={"id": ""}, expect=422)
    await c.call("post", "/api/v1/sites", token=viewer, json_body={"id": "x"}, expect=403)
    await c.call("get", "/api/v1/devices", query={"site": "krk", "model": "studio_x50"})
    await c.call("get", "/api/v1/devices", query={"health": "sparkling"}, expect=400)
    await c.call("get", "/api/v1/devices/X50-1")
    await c.call("get", "/api/v1/devices/NOPE", expect=404)
    await c.call("get", "/api/v1/events", query={"since": "0", "limit": "5"})
    await c.call("get", "/api/v1/events", token=None, expect=401)
    page = await c.call("get", "/api/v1/events", query={"after": "0", "limit": "5"})
    assert page["next"] >= 0
    stream = await c.call("get", "/api/v1/events/stream", query={"after": "0", "once": "1"})
    assert stream.startswith(b"id: ")
    await c.call("get", "/api/v1/events/stream", query={"once": "maybe"}, expect=400)
    await c.call("get", "/api/v1/tokens")

    # Entitlement: import (dry run, real, refused with every problem), verdicts, forecast.
    csv = "text/csv"
    dry = await c.call(
        "post", "/api/v1/assets/import", query={"dry_run": "1"}, data=REGISTRY.encode(), media=csv
    )
    assert dry["dry_run"] is True and len(dry["added"]) == 4
    await c.call("post", "/api/v1/assets/import", data=REGISTRY.encode(), media=csv)
    refused = await c.call(
        "post", "/api/v1/assets/import", data=BAD_REGISTRY.encode(), media=csv, expect=422
    )
    assert [(p["line"], p["column"]) for p in refused["problems"]] == [
        (2, "model"),
        (3, "purchase_date"),
        (4, "contract_end"),
    ]
    await c.call(
        "post", "/api/v1/assets/import", data=b"\xff\xfe", media=csv, token=None, expect=401
    )
    await c.call(
        "post", "/api/v1/assets/import", data=b"\xff\xfe", media=csv, token=viewer, expect=403
    )
    # Neither UTF-8 nor Windows-1250 (a bare b"\xff\xfe" is now an empty UTF-16 file).
    await c.call("post", "/api/v1/assets/import", data=b"\x81\x98", media=csv, expect=400)
    await c.call("get", "/api/v1/assets", query={"site": "krk"})
    verdict = await c.call("get", "/api/v1/devices/X50-1/entitlement")
    assert verdict["plan"] == "hezo_plus" and verdict["firmware"]["installed"] == "4.1.0.180034"
    await c.call("get", "/api/v1/devices/UNSEEN/entitlement", query={"at": "2027-01-01"})
    ghost = await c.call("get", "/api/v1/devices/GHOST/entitlement", token=viewer)
    assert "unknown_asset" in ghost["flags"]
    await c.call("get", "/api/v1/devices/NOPE/entitlement", expect=404)
    await c.call(
        "get", "/api/v1/devices/X50-1/entitlement", query={"at": "2026-12-01T10:00"}, expect=400
    )
    everything = await c.call("get", "/api/v1/entitlement", query={"site": "krk"})
    assert {v["serial"] for v in everything["assets"]} == {"X50-1", "X30-1", "G7-1", "GHOST"}
    forecast = await c.call("get", "/api/v1/entitlement/forecast", query={"days": "60"})
    assert {s["site"] for s in forecast["sites"]} == {"krk", "waw"}
    await c.call("get", "/api/v1/entitlement/forecast", query={"days": "x"}, expect=400)

    # Tickets: the fault above became one; list, show, fill, act, bundle, and their errors.
    listed = await c.call("get", "/api/v1/tickets")
    (ticket,) = [t for t in listed["tickets"] if t["serial"] == "GHOST"]
    path = f"/api/v1/tickets/{ticket['id']}"
    await c.call("get", "/api/v1/tickets", query={"status": "weird"}, expect=400)
    await c.call("get", path, token=viewer)
    await c.call("get", "/api/v1/tickets/NOPE", expect=404)
    await c.call("patch", path, json_body={"contract_number": "X" * 200}, expect=422)
    await c.call("patch", path, json_body={"serial": "GHOST\r\nBcc: x"}, expect=422)
    await c.call("get", "/api/v1/tickets/deliveries", query={"state": "failed"})
    await c.call("get", "/api/v1/tickets/deliveries", query={"state": "lost"}, expect=400)
    await c.call("patch", path, token=viewer, json_body={"serial": "GHOST"}, expect=403)
    await c.call("post", f"{path}/fly", expect=404)
    await c.call("post", f"{path}/returned", expect=409)
    await c.call("get", f"{path}/bundle", expect=404)
    opened = {"serial": "X50-1", "category": "fault", "summary": "cracked screen"}
    await c.call("post", "/api/v1/tickets", json_body=opened, expect=201)
    await c.call("post", "/api/v1/tickets", json_body={**opened, "category": "x"}, expect=422)
    await c.call("post", "/api/v1/tickets", json_body={**opened, "serial": "NOPE"}, expect=404)
    await c.call("post", "/api/v1/tickets", token=viewer, json_body=opened, expect=403)

    # Maintenance: add, overlap and open-ended refused, list, end, end again.
    hour = {"from": "2026-11-25T13:00:00+01:00", "until": "2026-11-25T14:00:00+01:00"}
    window = await c.call(
        "post", "/api/v1/maintenance", json_body={"site": "krk", "reason": "x", **hour}, expect=201
    )
    await c.call(
        "post", "/api/v1/maintenance", json_body={"site": "krk", "reason": "y", **hour}, expect=409
    )
    await c.call(
        "post",
        "/api/v1/maintenance",
        json_body={"serial": "X50-1", "reason": "z", "from": hour["from"]},
        expect=422,
    )
    await c.call("get", "/api/v1/maintenance", token=viewer)
    await c.call("delete", f"/api/v1/maintenance/{window['id']}")
    await c.call("delete", f"/api/v1/maintenance/{window['id']}", expect=409)
    await c.call("delete", "/api/v1/maintenance/MW-NONE", expect=404)

    # Meta: the document itself and the metrics text.
    await c.call("get", "/api/v1/openapi.json", token=None)
    metrics = await c.call("get", "/metrics")
    assert b"polyfleet_devices" in metrics

    exercised = {(template, method) for template, method, _ in c.seen}
    for template in (
        "/api/v1/assets/import",
        "/api/v1/assets",
        "/api/v1/devices/{serial}/entitlement",
        "/api/v1/entitlement",
        "/api/v1/entitlement/forecast",
        "/api/v1/tickets",
        "/api/v1/tickets/{ticket_id}",
        "/api/v1/tickets/{ticket_id}/{action}",
        "/api/v1/tickets/{ticket_id}/bundle",
        "/api/v1/tickets/deliveries",
    ):
        assert any(t == template for t, _ in exercised), template
    assert ("/api/v1/assets/import", "post", "422") in c.seen


async def test_every_documented_operation_answers_as_documented(
    conformance: Conformance, tmp_path: Path
) -> None:
    """Together with the test above, one answer of every operation is checked; here the rest."""
    c = conformance
    agent = await c.controller.enroll("krk")
    await c.controller.ensure_site("waw")
    body = batch(report(snapshot("X50-1", collected_at=NOW)))
    await c.call("post", "/api/v1/agent/reports", token=agent.token, json_body=body)
    meeting = {"start": "2026-11-25T12:00:00Z", "end": "2026-11-25T13:00:00Z"}
    calendar = {
        "serial": "X50-1",
        "state": "read",
        "read_at": NOW.isoformat(),
        "start": NOW.isoformat(),
        "end": "2026-11-26T11:00:00Z",
        "meetings": [meeting],
    }
    await c.call(
        "post",
        "/api/v1/agent/calendars",
        token=agent.token,
        json_body={"protocol_version": 1, "calendars": [calendar]},
    )
    await c.call(
        "post",
        "/api/v1/agent/calendars",
        token=agent.token,
        json_body={"protocol_version": 1, "calendars": [{**calendar, "state": "maybe"}]},
        expect=422,
    )
    code = await c.call("post", "/api/v1/invites", json_body={"site": "krk"}, expect=201)
    enrolled = await c.call(
        "post",
        "/api/v1/agent/enroll",
        token=None,
        json_body={"protocol_version": 1, "code": code["code"], "agent_name": "second"},
    )
    await c.call(
        "post",
        "/api/v1/agent/enroll",
        token=None,
        json_body={"protocol_version": 99, "code": "x", "agent_name": "old"},
        expect=400,
    )
    await c.call("post", "/api/v1/invites", json_body={"site": "nowhere"}, expect=404)
    created = await c.call(
        "post", "/api/v1/tokens", json_body={"role": "viewer", "name": "wall"}, expect=201
    )
    await c.call("delete", f"/api/v1/tokens/{created['id']}")
    await c.call("delete", "/api/v1/tokens/none", expect=404)
    only_admin = (await c.call("get", "/api/v1/tokens"))["tokens"][0]["id"]
    await c.call("delete", f"/api/v1/tokens/{only_admin}", expect=409)
    await c.call("post", "/api/v1/sites", json_body={"id": "krk"}, expect=409)
    await c.call("patch", "/api/v1/sites/krk", json_body={"name": "Kraków"})
    await c.call("patch", "/api/v1/sites/krk", json_body={"name": "a\nb"}, expect=422)
    await c.call("patch", "/api/v1/sites/nowhere", json_body={"name": "x"}, expect=404)
    agents = await c.call("get", "/api/v1/agents", query={"site": "krk"})
    assert enrolled["agent_id"] in {a["id"] for a in agents["agents"]}
    await c.call("patch", "/api/v1/devices/X50-1", json_body={"room": "Wawel"})
    await c.call("post", "/api/v1/devices/X50-1/move", json_body={"site": "waw"})
    await c.call("post", "/api/v1/devices/X50-1/move", json_body={"site": "krk"})
    await c.call("post", "/api/v1/devices/NOPE/move", json_body={"site": "krk"}, expect=404)
    await c.call("get", "/api/v1/devices/X50-1/reports")
    await c.call("get", "/api/v1/devices/X50-1/sessions")
    await c.call("get", "/api/v1/devices/NOPE/sessions", expect=404)
    job = await c.call(
        "post",
        "/api/v1/devices/X50-1/jobs",
        json_body={"kind": "collect_diagnostics"},
        expect=201,
    )
    await c.call("get", "/api/v1/devices/X50-1/jobs")
    await c.call(
        "post", "/api/v1/devices/X50-1/jobs", json_body={"kind": "collect_diagnostics"}, expect=409
    )
    reboot = await c.call(
        "post", "/api/v1/devices/X50-1/jobs", json_body={"kind": "reboot"}, expect=201
    )
    cancelled = await c.call("post", f"/api/v1/jobs/{reboot['id']}/cancel")
    assert cancelled["status"] == "cancelled"
    await c.call("post", f"/api/v1/jobs/{reboot['id']}/cancel", expect=409)
    await c.call("post", "/api/v1/jobs/job_none/cancel", expect=404)
    await c.call("get", f"/api/v1/jobs/{job['id']}")
    await c.call("get", f"/api/v1/jobs/{job['id']}/artifact", expect=404)
    jobs = await c.call("get", "/api/v1/agent/jobs", token=enrolled["token"])
    assert [j["id"] for j in jobs["jobs"]] == [job["id"]]
    blob = b"diagnostics" * 100
    await c.call(
        "put",
        f"/api/v1/agent/jobs/{job['id']}/artifact",
        token=enrolled["token"],
        data=blob,
        media="application/octet-stream",
    )
    digest = hashlib.sha256(blob).hexdigest()
    await c.call(
        "post",
        f"/api/v1/agent/jobs/{job['id']}/result",
        token=enrolled["token"],
        json_body={"status": "done", "artifact_sha256": digest},
    )
    artifact = await c.call("get", f"/api/v1/jobs/{job['id']}/artifact")
    assert artifact == blob
    # Rollouts and firmware packages.
    plan = await c.call("post", "/api/v1/rollouts", json_body={"target": "4.2.2"}, expect=201)
    await c.call("post", "/api/v1/rollouts", json_body={"target": 5}, expect=422)
    await c.call("get", "/api/v1/rollouts", query={"status": "planned"})
    await c.call("get", f"/api/v1/rollouts/{plan['id']}")
    await c.call("get", "/api/v1/rollouts/r_none", expect=404)
    await c.call("get", f"/api/v1/rollouts/{plan['id']}/status")
    firmware = b"firmware" * 1000
    await c.call(
        "put",
        "/api/v1/releases/4.2.2-408037/package",
        data=firmware,
        media="application/octet-stream",
        expect=201,
    )
    await c.call("post", f"/api/v1/rollouts/{plan['id']}/start")
    await c.call("post", f"/api/v1/rollouts/{plan['id']}/start", expect=409)
    await c.call("get", "/api/v1/rollouts/penalty-box")
    planned = await c.call("get", "/api/v1/devices/X50-1/rollouts")
    assert [r["id"] for r in planned["rollouts"]] == [plan["id"]]
    await c.call("get", "/api/v1/devices/NOPE/rollouts", expect=404)
    await c.call("delete", "/api/v1/rollouts/penalty-box/X50-1", expect=404)
    await c.call(
        "post",
        "/api/v1/agent/jobs/job_none/progress",
        token=enrolled["token"],
        json_body={"status": "downloading"},
        expect=404,
    )
    await c.call(
        "put",
        "/api/v1/releases/9.9.9/package",
        data=firmware,
        media="application/octet-stream",
        expect=422,
    )
    await c.call("get", "/api/v1/releases/packages")
    assert await c.call("get", "/api/v1/releases/4.2.2/package") == firmware
    await c.call("get", "/api/v1/releases/4.0.0/package", expect=404)
    overview = await c.call("get", "/api/v1/overview")
    assert overview["devices"] == 1
    tokens = await c.call("get", "/api/v1/tokens")
    await c.call(
        "post",
        "/api/v1/signin-links",
        json_body={"token_id": tokens["tokens"][0]["id"]},
        expect=201,
    )
    await c.call("post", "/api/v1/signin-links", json_body={"token_id": "none"}, expect=404)
    filtered = await c.call(
        "get",
        "/api/v1/devices",
        query={"q": "x50", "sort": "-last_seen", "limit": "1", "offset": "0"},
    )
    assert filtered["total"] == 1
    audit = await c.call(
        "get", "/api/v1/audit", query={"action": "device", "limit": "1", "after": "0"}
    )
    assert [e["action"] for e in audit["entries"]] == ["device.room"] and audit["more"]
    await c.call("get", "/api/v1/audit", query={"from": "2026-01-01T00:00:00Z"})
    await c.call("get", "/api/v1/audit", query={"from": "yesterday"}, expect=400)
    await c.call("delete", f"/api/v1/agents/{enrolled['agent_id']}")
    await c.call("delete", f"/api/v1/agents/{enrolled['agent_id']}", expect=404)
    health = await c.call("get", "/healthz", token=None)
    assert health["role"] == "active" and health["store"] == "embedded"
    await c.call("get", "/healthz/active", token=None)
    backup = tmp_path / "backup.jsonl.gz"
    backup.write_bytes(await c.call("get", "/api/v1/backup"))
    header, collections = read_backup(backup)
    assert header["collections"]["devices"] == 1 and len(collections["devices"]) == 1
    await c.call("get", "/api/v1/backup", token=agent.token, expect=403)
    exercised = {(template, method) for template, method, _ in c.seen}
    documented = {(path, method) for path, ops in c.document["paths"].items() for method in ops}
    earlier = {
        ("/api/v1/assets/import", "post"),
        ("/api/v1/assets", "get"),
        ("/api/v1/devices/{serial}/entitlement", "get"),
        ("/api/v1/entitlement", "get"),
        ("/api/v1/entitlement/forecast", "get"),
        ("/api/v1/tickets", "get"),
        ("/api/v1/tickets", "post"),
        ("/api/v1/maintenance", "get"),
        ("/api/v1/maintenance", "post"),
        ("/api/v1/maintenance/{window_id}", "delete"),
        ("/api/v1/tickets/{ticket_id}", "get"),
        ("/api/v1/tickets/{ticket_id}", "patch"),
        ("/api/v1/tickets/{ticket_id}/{action}", "post"),
        ("/api/v1/tickets/{ticket_id}/bundle", "get"),
        ("/api/v1/tickets/deliveries", "get"),
        ("/api/v1/sites", "get"),
        ("/api/v1/sites", "post"),
        ("/api/v1/devices", "get"),
        ("/api/v1/devices/{serial}", "get"),
        ("/api/v1/events", "get"),
        ("/api/v1/events/stream", "get"),
        ("/api/v1/tokens", "get"),
        ("/api/v1/openapi.json", "get"),
        ("/metrics", "get"),
    }
    assert documented - exercised - earlier == set()


def test_import_refusal_is_documented_with_its_problem_list(tmp_path: Path) -> None:
    """The import's 422 names the model with `problems`, not the plain error shape."""
    document = build_openapi(create_app(ControllerConfig(data_dir=tmp_path)))
    operation = document["paths"]["/api/v1/assets/import"]["post"]
    ref = operation["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
    refused = document["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    assert set(refused["required"]) == {"error", "problems"}
    assert "text/csv" in operation["requestBody"]["content"]
    query = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert set(query) == {"dry_run", "at"}
    forecast = document["paths"]["/api/v1/entitlement/forecast"]["get"]
    days = next(p for p in forecast["parameters"] if p["name"] == "days")
    assert days["schema"]["type"] == "integer" and days["schema"]["maximum"] > 0


def test_spec_fields_reach_the_document(tmp_path: Path) -> None:
    """Param schemas, error models, raw bodies and extra keys are written as the spec says."""

    class Refusal(BaseModel):
        reasons: list[str]

    @endpoint(
        summary="A feature's upload",
        roles=ADMINS,
        request_media="text/plain",
        request_schema={"type": "string", "description": "one name a line"},
        response_schema={"type": "object"},
        path={"kind": Param("what to upload", {"type": "string", "enum": ["a", "b"]})},
        query={"n": Param("how many", {"type": "integer", "minimum": 1}, required=True)},
        errors=(404,),
        error_models={409: Refusal},
        extra={"deprecated": True},
    )
    async def upload(request: web.Request) -> web.Response:
        return web.json_response({})

    app = create_app(ControllerConfig(data_dir=tmp_path))
    app.router.add_post("/api/v1/feature/{kind}", upload)
    document = build_openapi(app)
    validate_spec(document)
    operation = document["paths"]["/api/v1/feature/{kind}"]["post"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert params["kind"]["schema"]["enum"] == ["a", "b"] and params["kind"]["required"]
    assert params["n"]["schema"]["type"] == "integer" and params["n"]["required"]
    assert operation["requestBody"]["content"]["text/plain"]["schema"]["description"]
    responses = operation["responses"]
    # Auth and body size come from the middlewares; 404 and 409 from the spec.
    assert set(responses) == {"200", "401", "403", "404", "409", "413", "429", "default"}
    ref = responses["409"]["content"]["application/json"]["schema"]["$ref"]
    assert "reasons" in document["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]
    assert operation["deprecated"] is True
