"""The API as its OpenAPI document says: a bounded schemathesis run against a live controller."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import aiohttp
import pytest

from polyfleet.controller.testing import running_controller

#: Bounds of the run: enough to try every operation with valid, invalid and missing
#: values in each phase (examples, coverage, fuzzing, stateful), in well under a minute.
MAX_EXAMPLES = 2
SEED = 1
#: A well-formed request may still break a rule no schema states (an expiry in the past,
#: a CSV file whose rows are wrong, a firmware file that is none): 422 says so, in words.
#: Every other answer to valid data must be a success or what the document lists.
SCHEMATHESIS_TOML = """\
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422"]
"""


@pytest.mark.expected_seconds(60)
# Some thousands of requests: on a loaded machine more than the suite's default timeout.
@pytest.mark.timeout(400)
async def test_every_operation_answers_as_the_document_says(tmp_path: Path) -> None:
    """schemathesis runs all its checks over every operation of the served document: no
    5xx, no schema-valid request refused, no invalid one accepted, answers and their
    status codes, content types, headers and Allow as documented."""
    # The run sends thousands of requests, some without a credential, from one address:
    # the failed-credential limits are the subject of their own tests. The event stream ends
    # after a moment (as it does after an hour in service) so each request to it returns.
    async with running_controller(
        tmp_path / "data",
        auth_failures_per_minute=10**6,
        enroll_attempts_per_minute=10**6,
        events_stream_max_s=0.1,
    ) as controller:
        await controller.ensure_site("krk")
        config = tmp_path / "schemathesis.toml"
        config.write_text(SCHEMATHESIS_TOML)
        run = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(config),
            "--no-color",
            "run",
            f"{controller.url}/api/v1/openapi.json",
            "--header",
            f"Authorization: Bearer {controller.admin_token}",
            "--checks",
            "all",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--report-dir",
            str(tmp_path / "reports"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
        )
        out, _ = await run.communicate()
    text = out.decode(errors="replace")
    assert run.returncode == 0, text[-12000:]
    # Every operation of the document was tried, none left out.
    selected = re.search(r"Selected: (\d+)/(\d+)", text)
    tested = re.search(r"Tested: (\d+)", text)
    assert selected and tested, text[-2000:]
    assert selected.group(1) == selected.group(2) == tested.group(1), text[-2000:]


async def test_a_method_not_allowed_names_the_allowed_ones(tmp_path: Path) -> None:
    """A 405 from the API or a dashboard path carries Allow with exactly the methods of that
    path, not those of a neighbouring route's pattern."""
    async with (
        running_controller(tmp_path / "data") as controller,
        aiohttp.ClientSession(headers=controller.admin_headers) as http,
    ):
        for method, path, allowed in (
            ("PATCH", "/api/v1/tickets/deliveries", {"GET", "HEAD"}),
            ("POST", "/api/v1/rollouts/r_1/status", {"GET"}),
            ("POST", "/api/v1/rollouts/penalty-box/K1", {"DELETE"}),
            ("POST", "/api/v1/tickets/T-1/bundle", {"GET", "HEAD"}),
            ("DELETE", "/api/v1/devices", {"GET"}),
        ):
            async with http.request(method, controller.url + path) as response:
                assert response.status == 405, (method, path)
                assert set(response.headers["Allow"].split(",")) == allowed, (method, path)
                assert (await response.json())["error"]["code"] == "method_not_allowed"
        async with http.delete(controller.url + "/devices") as response:
            assert response.status == 405
            assert "GET" in response.headers["Allow"].split(",")
