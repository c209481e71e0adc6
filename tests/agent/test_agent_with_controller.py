"""The agent against the real controller: enroll from config, report, and run jobs."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import aiohttp
from agent_testkit import SwitchableLink
from testkit.site_agents import agent_config, device_config, lab_agent_config, start_enrolled_agent
from testkit.waiting import wait_until

from polyfleet.agent.config import Secret
from polyfleet.agent.service import AgentService
from polyfleet.controller.testing import running_controller
from polyfleet.simulator.testing import make_device


async def test_agent_reports_and_runs_jobs(
    lab_factory: Any, password_file: Path, tmp_path: Path
) -> None:
    """Enrolled from its config, the agent's devices (E70 too) appear; jobs run and report back."""
    lab = await lab_factory(
        [make_device("CTLG75", model="g7500"), make_device("CTLX30", model="studio_x30")]
    )
    g75, x30 = lab.devices["CTLG75"], lab.devices["CTLX30"]
    e70 = next(p.serial for p in g75.peripherals if p.kind == "e70")
    await x30.start_call()
    async with running_controller(tmp_path / "ctl") as controller:
        code_file = tmp_path / "code"
        code_file.write_text(await controller.enrollment_code("krk"))
        os.chmod(code_file, 0o600)
        config = agent_config(
            tmp_path,
            [device_config(d, password_file) for d in (g75, x30)],
            controller_url=controller.url,
            enrollment_code=Secret(file=code_file, origin="test"),
            poll_interval_s=0.3,
            send_interval_s=0.05,
            jobs_interval_s=0.1,
        )
        service = AgentService(config)
        await service.start()
        try:
            async with aiohttp.ClientSession(headers=controller.admin_headers) as http:

                async def devices() -> dict[str, Any]:
                    async with http.get(controller.url + "/api/v1/devices") as resp:
                        return {d["serial"]: d for d in (await resp.json())["devices"]}

                seen: dict[str, Any] = {}

                async def refresh() -> bool:
                    seen.update(await devices())
                    return {"CTLG75", "CTLX30", e70} <= set(seen)

                await wait_until(refresh, what="devices in the controller")
                assert seen[e70]["model"] == "studio_e70" and seen[e70]["host_serial"] == "CTLG75"
                assert seen["CTLG75"]["firmware"]["version"] == "4.2.2"
                assert (config.credential_path.stat().st_mode & 0o777) == 0o600

                async def order(serial: str, kind: str) -> str:
                    async with http.post(
                        f"{controller.url}/api/v1/devices/{serial}/jobs", json={"kind": kind}
                    ) as resp:
                        assert resp.status == 201, await resp.text()
                        return str((await resp.json())["id"])

                async def finished(job_id: str) -> dict[str, Any]:
                    async def done() -> dict[str, Any] | None:
                        async with http.get(f"{controller.url}/api/v1/jobs/{job_id}") as resp:
                            job = await resp.json()
                        return dict(job) if job["finished_at"] else None

                    result: dict[str, Any] = await wait_until(done, what=f"job {job_id}")
                    return result

                refused = await finished(await order("CTLX30", "reboot"))
                assert refused["result"]["status"] == "refused"
                assert "call" in refused["result"]["detail"]
                assert x30.power == "on"

                diag = await finished(await order("CTLG75", "collect_diagnostics"))
                assert diag["result"]["status"] == "done", diag
                async with http.get(f"{controller.url}/api/v1/jobs/{diag['id']}/artifact") as resp:
                    bundle = await resp.read()
                with tarfile.open(fileobj=io.BytesIO(bundle), mode="r:gz") as archive:
                    names = set(archive.getnames())
                assert {
                    "diagnostics/system-logs.tar",
                    "diagnostics/ssh-status.txt",
                    "diagnostics/ssh-whoami.txt",
                    "diagnostics/last-snapshots.json",
                } <= names
        finally:
            await service.stop()


async def test_uplink_outage_then_every_report_stored_once(
    lab_factory: Any, password_file: Path, tmp_path: Path
) -> None:
    """Reports taken while the line to the real controller is cut are all stored, each once."""
    lab = await lab_factory([make_device("LINK1"), make_device("LINK2", model="g7500")])
    async with running_controller(tmp_path / "ctl", report_history=10_000) as controller:
        host, port = controller.url.removeprefix("http://").split(":")
        link = SwitchableLink(host, int(port))
        await link.start()
        url = f"http://127.0.0.1:{link.port}"
        config = lab_agent_config(tmp_path, lab, password_file, url)
        service = await start_enrolled_agent(controller, "waw", config)
        try:
            await wait_until(
                lambda: len(service.outbox) >= 15, what="reports spooled during the outage"
            )
            taken = [e for e in service.outbox.peek(500) if e.kind == "report"]
            link.up = True
            await wait_until(
                lambda: len(service.outbox) == 0 or service.outbox.peek(1)[0].seq > taken[-1].seq,
                what="backlog sent",
            )
        finally:
            await service.stop()
            await link.stop()
        async with aiohttp.ClientSession(headers=controller.admin_headers) as http:
            stored: list[str] = []
            for serial in {e.serial for e in taken}:
                async with http.get(f"{controller.url}/api/v1/devices/{serial}/reports") as resp:
                    stored += [r["id"] for r in (await resp.json())["reports"]]
        assert len(stored) == len(set(stored)), "a report stored twice"
        assert {e.report_id for e in taken} <= set(stored)
