"""The admin API: roles, filters, jobs with artifacts, OpenAPI conformance, Prometheus metrics."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import subprocess
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
from polyfleet.controller.events import Event, JobFinished
from polyfleet.controller.http.spec import READERS, endpoint, spec_of
from polyfleet.controller.services.access import Role
from polyfleet.controller.testing import RunningController, running_controller
from polyfleet.shared.schema import JobKind


async def _seed(controller: RunningController, http: aiohttp.ClientSession) -> str:
    agent = await controller.enroll("krk")
    await controller.ensure_site("waw")
    reports = [
        report(snapshot("X50-1")),
        report(snapshot("X30-1", model="studio_x30", version="3.12.0")),
        report(
            snapshot("X70-1", model="studio_x70", problems=[{"code": "camera_down", "detail": "x"}])
        ),
    ]
    async with http.post(
        f"{controller.url}/api/v1/agent/reports", json=batch(*reports), headers=bearer(agent.token)
    ) as response:
        assert response.status == 200
    return agent.token


async def _get(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, Any]:
    async with http.get(url, headers=bearer(token)) as response:
        return response.status, await response.json()


async def test_device_filters(controller: RunningController, http: aiohttp.ClientSession) -> None:
    """Devices filter by site, model, provider, health and firmware; a bad value names the field."""
    await _seed(controller, http)
    base = f"{controller.url}/api/v1/devices"
    token = controller.admin_token

    async def serials(query: str) -> list[str]:
        status, body = await _get(http, f"{base}?{query}", token)
        assert status == 200
        return [device["serial"] for device in body["devices"]]

    assert await serials("site=krk") == ["X30-1", "X50-1", "X70-1"]
    assert await serials("site=waw") == []
    assert await serials("model=studio_x30") == ["X30-1"]
    assert await serials("health=fault") == ["X70-1"]
    assert await serials("firmware=3.12.0") == ["X30-1"]
    assert await serials("provider=zoom") == []
    status, body = await _get(http, f"{base}?health=broken", token)
    assert status == 400 and body["error"]["field"] == "health"


async def test_viewer_reads_but_cannot_change(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """A viewer token lists devices but every change is refused with 403."""
    await _seed(controller, http)
    viewer, _ = await controller.core.access.create_token(Role.VIEWER, "wall screen")
    status, _ = await _get(http, f"{controller.url}/api/v1/devices", viewer)
    assert status == 200
    changes = [
        ("POST", "/api/v1/sites", {"id": "gda", "name": "Gdańsk", "timezone": "Europe/Warsaw"}),
        ("POST", "/api/v1/devices/X50-1/move", {"site": "waw"}),
        ("POST", "/api/v1/devices/X50-1/jobs", {"kind": "reboot"}),
        ("POST", "/api/v1/tokens", {"role": "admin"}),
        ("POST", "/api/v1/invites", {"site": "krk"}),
        ("PATCH", "/api/v1/devices/X50-1", {"room": "Aula"}),
    ]
    for method, path, body in changes:
        async with http.request(
            method, controller.url + path, json=body, headers=bearer(viewer)
        ) as response:
            assert response.status == 403, path
    status, body = await _get(http, f"{controller.url}/api/v1/devices/X50-1", viewer)
    assert body["site"] == "krk" and body["room"] is None


async def test_job_round_trip_with_artifact(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Admin queues a job; the agent pulls it, uploads a bundle and a result; waiters see it."""
    agent_token = await _seed(controller, http)
    finished: list[Event] = []
    controller.core.bus.subscribe(finished.append, kinds={JobFinished})
    async with http.post(
        f"{controller.url}/api/v1/devices/X70-1/jobs",
        json={"kind": "collect_diagnostics", "params": {"logs": True}},
        headers=controller.admin_headers,
    ) as response:
        assert response.status == 201
        job = await response.json()
    waiter = asyncio.create_task(controller.core.jobs.wait(job["id"], timeout=30))
    status, pulled = await _get(http, f"{controller.url}/api/v1/agent/jobs", agent_token)
    assert status == 200
    assert [(j["id"], j["kind"], j["serial"]) for j in pulled["jobs"]] == [
        (job["id"], "collect_diagnostics", "X70-1")
    ]
    # Handed out once: a second poll within the lease does not repeat it.
    assert (await _get(http, f"{controller.url}/api/v1/agent/jobs", agent_token))[1]["jobs"] == []
    bundle = b"\x1f\x8b diagnostics " * 1000
    async with http.put(
        f"{controller.url}/api/v1/agent/jobs/{job['id']}/artifact",
        data=bundle,
        headers=bearer(agent_token),
    ) as response:
        assert response.status == 200
        artifact = await response.json()
    assert artifact["sha256"] == hashlib.sha256(bundle).hexdigest()
    async with http.post(
        f"{controller.url}/api/v1/agent/jobs/{job['id']}/result",
        json={"status": "done", "detail": "ok", "artifact_sha256": "0" * 64},
        headers=bearer(agent_token),
    ) as response:
        assert response.status == 409
    async with http.post(
        f"{controller.url}/api/v1/agent/jobs/{job['id']}/result",
        json={"status": "done", "detail": "ok", "artifact_sha256": artifact["sha256"]},
        headers=bearer(agent_token),
    ) as response:
        assert response.status == 200
    done = await waiter
    assert done["status"] == "done"
    path = controller.core.jobs.artifact_path(job["id"])
    assert path is not None and path.read_bytes() == bundle
    async with http.get(
        f"{controller.url}/api/v1/jobs/{job['id']}/artifact", headers=controller.admin_headers
    ) as response:
        assert await response.read() == bundle
    await controller.core.bus.drain()
    assert [e.serial for e in finished] == ["X70-1"]


async def test_artifact_over_limit_is_refused(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    """An artifact larger than max_artifact_bytes gets 413 and leaves no file behind."""
    async with running_controller(tmp_path, max_artifact_bytes=1000) as controller:
        token = await _seed(controller, http)
        job = await controller.core.jobs.enqueue("X50-1", JobKind.COLLECT_DIAGNOSTICS)

        async def chunks():  # no Content-Length: the limit must hold while streaming
            for _ in range(10):
                yield b"x" * 500

        async with http.put(
            f"{controller.url}/api/v1/agent/jobs/{job['id']}/artifact",
            data=chunks(),
            headers=bearer(token),
        ) as response:
            assert response.status == 413
        assert list((tmp_path / "artifacts").iterdir()) == []
        assert controller.core.jobs.artifact_path(job["id"]) is None


async def test_openapi_document_is_valid_and_complete(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """The OpenAPI document validates, lists every API route, and answers match its schemas."""
    await _seed(controller, http)
    async with http.get(f"{controller.url}/api/v1/openapi.json") as response:
        assert response.status == 200
        document = await response.json()
    validate_spec(document)
    served = {
        (route.resource.canonical, route.method.lower())
        for route in controller.app.router.routes()
        if route.resource is not None
        and route.method not in ("HEAD", "*")
        and not spec_of(route.handler, route.method).hidden
    }
    documented = {(path, method) for path, ops in document["paths"].items() for method in ops}
    assert served == documented
    schemas = document["components"]["schemas"]

    def check(path: str, body: Any, method: str = "get", status: str = "200") -> None:
        ref = document["paths"][path][method]["responses"][status]["content"]["application/json"][
            "schema"
        ]["$ref"]
        root = {"$ref": ref, "components": {"schemas": schemas}}
        jsonschema.Draft202012Validator(root).validate(body)

    for path in ("/api/v1/devices", "/api/v1/sites", "/api/v1/events", "/api/v1/devices/{serial}"):
        concrete = path.replace("{serial}", "X70-1")
        status, body = await _get(http, controller.url + concrete, controller.admin_token)
        assert status == 200
        check(path, body)
    status, body = await _get(http, f"{controller.url}/api/v1/devices/NOPE", controller.admin_token)
    assert status == 404
    check("/api/v1/devices/{serial}", body, status="404")


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed"
)
async def test_metrics_pass_promtool(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """/metrics is valid Prometheus text with devices by labels, ingestion and store timings."""
    await _seed(controller, http)
    async with http.get(f"{controller.url}/metrics") as response:
        assert response.status == 401
    async with http.get(f"{controller.url}/metrics", headers=controller.admin_headers) as response:
        assert response.status == 200
        text = await response.text()
    result = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    labels = 'firmware="3.12.0",health="ok",model="studio_x30",provider="teams",site="krk"'
    assert f"polyfleet_devices{{{labels}}} 1.0" in text
    assert 'polyfleet_reports_ingested_total{result="accepted"} 3.0' in text
    assert "polyfleet_ingest_seconds_count 1.0" in text
    assert 'polyfleet_store_flush_seconds_count{kind="journal"}' in text


def test_openapi_keeps_clashing_model_names_apart(tmp_path: Path) -> None:
    """A feature route whose model reuses a core model's name gets its own, resolvable schema."""

    class DeviceOut(BaseModel):  # same name as controller.api.models.DeviceOut
        feature_only: int

    @endpoint(summary="A feature's route", roles=READERS, response=DeviceOut)
    async def feature(request: web.Request) -> web.Response:
        return web.json_response({"feature_only": 1})

    app = create_app(ControllerConfig(data_dir=tmp_path))
    app.router.add_get("/api/v1/feature", feature, allow_head=False)
    document = build_openapi(app)
    validate_spec(document)
    schemas = document["components"]["schemas"]
    ref = document["paths"]["/api/v1/feature"]["get"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]["$ref"]
    feature_schema = schemas[ref.rsplit("/", 1)[-1]]
    assert "feature_only" in feature_schema["properties"]
    core_ref = document["paths"]["/api/v1/devices/{serial}/move"]["post"]["responses"]["200"][
        "content"
    ]["application/json"]["schema"]["$ref"]
    assert "serial" in schemas[core_ref.rsplit("/", 1)[-1]]["properties"]
