"""One address floods the controller with wrong tokens: only its failures are limited."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from testkit.clients import client_from
from testkit.reports import batch, bearer, report, snapshot

from polyfleet.controller.keys import CORE
from polyfleet.controller.services.access import Role
from polyfleet.controller.testing import running_controller
from polyfleet.controller.web.security import SIGNIN_COOKIE
from polyfleet.shared.schema import PROTOCOL_VERSION

#: The address everyone below shares, as the agents and admins behind one site's NAT do.
NAT = "127.0.0.2"


async def test_a_flood_of_wrong_tokens_never_refuses_a_valid_credential(tmp_path: Path) -> None:
    """While one address sends wrong tokens far past its limit (401, then 429), an agent at the
    same address keeps reporting and polling jobs, an admin signs in to the dashboard and
    reads the API, and a viewer reads: every one of them at once, never a 429."""
    async with (
        running_controller(tmp_path / "data", auth_failures_per_minute=4) as controller,
        client_from(NAT) as http,
    ):
        agent = await controller.enroll("krk")
        url = controller.url
        flood_statuses: list[int] = []

        async def flood() -> None:
            for i in range(60):
                async with http.get(f"{url}/api/v1/devices", headers=bearer(f"pft_{i}")) as r:
                    flood_statuses.append(r.status)

        async def agent_reports() -> list[int]:
            statuses = []
            for i in range(10):
                body = batch(report(snapshot("NAT-1"), f"nat-report-{i:04d}"))
                async with http.post(
                    f"{url}/api/v1/agent/reports", json=body, headers=bearer(agent.token)
                ) as response:
                    statuses.append(response.status)
                async with http.get(f"{url}/api/v1/agent/jobs", headers=bearer(agent.token)) as r:
                    statuses.append(r.status)
            return statuses

        async def admin_signs_in() -> list[int]:
            statuses = []
            for _ in range(5):
                async with http.get(f"{url}/signin") as page:
                    form = await page.text()
                    nonce = page.cookies[SIGNIN_COOKIE].value
                found = re.search(r'name="nonce" value="([^"]+)"', form)
                assert found is not None and found.group(1) == nonce
                async with http.post(
                    f"{url}/signin",
                    data={"nonce": nonce, "token": controller.admin_token, "next": "/"},
                    # Sent by hand: a client jar keeps no Secure cookie over plain HTTP.
                    headers={"Cookie": f"{SIGNIN_COOKIE}={nonce}"},
                    allow_redirects=False,
                ) as response:
                    statuses.append(response.status)
                async with http.get(
                    f"{url}/api/v1/devices", headers=controller.admin_headers
                ) as response:
                    statuses.append(response.status)
            return statuses

        viewer, _ = await controller.app[CORE].access.create_token(Role.VIEWER, "wall")

        async def viewer_reads() -> list[int]:
            statuses = []
            for _ in range(10):
                async with http.get(f"{url}/api/v1/overview", headers=bearer(viewer)) as r:
                    statuses.append(r.status)
            return statuses

        _, reports, signins, reads = await asyncio.gather(
            flood(), agent_reports(), admin_signs_in(), viewer_reads()
        )
        assert flood_statuses[:4] == [401] * 4
        assert set(flood_statuses[4:]) == {429}
        assert reports == [200] * 20
        assert signins == [303, 200] * 5
        assert reads == [200] * 10
        # Enrollment codes stay limited apart: a good code from the same address enrolls.
        code = await controller.enrollment_code("krk")
        body = {"protocol_version": PROTOCOL_VERSION, "code": code, "agent_name": "second"}
        async with http.post(f"{url}/api/v1/agent/enroll", json=body) as response:
            assert response.status == 200
