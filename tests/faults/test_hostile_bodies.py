"""Hostile request bodies against a real controller process: deep JSON nesting."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
from faultkit import ControllerProcess, post_batch
from testkit.reports import batch, report, snapshot

#: A body nested this deep made recursive parsers fail with RecursionError (an internal 500).
DEEP = 1000


def deep_body(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def json_operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, path) of every operation of the OpenAPI document that takes a JSON body."""
    found = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            content = (operation.get("requestBody") or {}).get("content", {})
            if "application/json" in content:
                # Path parameters get a plain value; the body is refused before any lookup.
                found.append((method.upper(), re.sub(r"\{[^}]+\}", "x1", path)))
    return found


async def test_deep_json_is_refused_with_400_on_every_endpoint(
    controller: ControllerProcess, http: aiohttp.ClientSession, agent_token: str
) -> None:
    """JSON nested 1,000 deep gets 400 json_too_deep on every JSON endpoint, never a 500."""
    async with http.get(f"{controller.url}/api/v1/openapi.json") as response:
        operations = json_operations(await response.json())
    assert ("POST", "/api/v1/agent/enroll") in operations
    assert ("POST", "/api/v1/agent/reports") in operations
    answers: dict[tuple[str, str], tuple[int, Any]] = {}
    for method, path in operations:
        for token in (controller.admin_token, agent_token):
            async with http.request(
                method,
                controller.url + path,
                data=deep_body(DEEP),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
            ) as response:
                answers[(method, path)] = (response.status, await response.json())
            if response.status != 403:
                break
    wrong = {
        operation: answer
        for operation, answer in answers.items()
        if answer[0] != 400 or answer[1]["error"]["code"] != "json_too_deep"
    }
    assert wrong == {}
    assert "RecursionError" not in controller.log()
    assert "unexpected error" not in controller.log()


async def test_deep_json_on_unauthenticated_enrollment_is_400(
    controller: ControllerProcess, http: aiohttp.ClientSession
) -> None:
    """The public enrollment endpoint refuses deep nesting by name, without a credential."""
    async with http.post(
        f"{controller.url}/api/v1/agent/enroll",
        data=b"[" * DEEP + b"]" * DEEP,
        headers={"Content-Type": "application/json"},
    ) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert error["code"] == "json_too_deep"
    assert "32 levels" in error["message"]
    assert "RecursionError" not in controller.log()


async def test_nesting_at_the_limit_is_parsed_and_one_deeper_is_refused(
    controller: ControllerProcess, http: aiohttp.ClientSession, agent_token: str
) -> None:
    """32 levels reach the schema (422 naming the field); 33 levels are refused as too deep."""
    for depth, status, code in ((32, 422, "invalid"), (33, 400, "json_too_deep")):
        # The batch object, its reports array and a report object are three levels.
        nested = "[" * (depth - 3) + "1" + "]" * (depth - 3)
        raw = '{"protocol_version": 1, "reports": [{"id": "depth-report-1", "snapshot": %s}]}'
        answer = await post_batch(http, controller.url, agent_token, (raw % nested).encode())
        assert (answer.status, answer.body["error"]["code"]) == (status, code), (depth, answer)
    # A well-formed batch still goes through afterwards.
    good = batch(report(snapshot("DEPTH-1")))
    assert (await post_batch(http, controller.url, agent_token, good)).status == 200
