"""One registry import behind the API, the dashboard and the CLI: a bad file is refused alike."""

from __future__ import annotations

import asyncio
import csv
import html
import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dashboard.dashboard_testkit import SESSION_COOKIE, form_field, http_sign_in

from polyfleet.cli import main
from polyfleet.controller.app import serve
from polyfleet.controller.config import ControllerConfig
from polyfleet.controller.domain.assets import COLUMNS

from .conftest import BASELINE, REJECTED, row


def _quoted_csv(*rows: dict[str, str]) -> str:
    """Registry CSV with cells quoted where they need it (a line break inside a room)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


#: Bad files and what each must be refused for: (the column named, words in its message).
BAD_FILES: dict[str, tuple[str, tuple[str, str]]] = {
    "unknown_plan": (REJECTED["unknown_plan"][0], ("plan", "unknown plan")),
    "room_with_a_line_break": (
        _quoted_csv(row("KEEP1", room="moved"), row("NEWDEV", room="Sala Wawel\nBcc: x@y")),
        ("room", "line break"),
    ),
}


@dataclass
class Server:
    url: str
    data_dir: Path
    admin_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def get(self, path: str, **params: str) -> Any:
        async with (
            aiohttp.ClientSession(headers=self.headers) as http,
            http.get(self.url + path, params=params) as response,
        ):
            assert response.status == 200, await response.text()
            return await response.json()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``polyfleet ARGV`` by the real entry point in this process: status, stdout, stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
async def server(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Server]:
    """``serve`` on a fresh data directory (commands reach it through its control socket),
    an admin token made by the CLI, and the baseline registry imported."""
    data = tmp_path / "data"
    config = ControllerConfig(data_dir=data, listen_host="127.0.0.1", listen_port=0)
    urls: list[str] = []
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        serve(config, on_ready=lambda url: (urls.append(url), ready.set()), stop=stop)
    )
    try:
        await asyncio.wait_for(ready.wait(), timeout=30)
        argv = ["controller", "token", "create", "--role", "admin", "--data-dir", str(data)]
        code, out, err = await asyncio.to_thread(_cli, capsys, *argv, "--json")
        assert code == 0, err
        running = Server(url=urls[0], data_dir=data, admin_token=json.loads(out)["token"])
        async with (
            aiohttp.ClientSession(headers=running.headers) as http,
            http.post(
                running.url + "/api/v1/assets/import",
                data=BASELINE.encode(),
                headers={"Content-Type": "text/csv"},
            ) as response,
        ):
            assert response.status == 200, await response.text()
        yield running
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)


async def _through_api(server: Server, text: str) -> list[tuple[int, str, str]]:
    async with (
        aiohttp.ClientSession(headers=server.headers) as http,
        http.post(
            server.url + "/api/v1/assets/import",
            data=text.encode(),
            headers={"Content-Type": "text/csv"},
        ) as response,
    ):
        body = await response.json()
    assert response.status == 422 and body["error"]["code"] == "invalid_registry", body
    return [(p["line"], p["column"], p["message"]) for p in body["problems"]]


async def _through_dashboard(server: Server, text: str) -> str:
    """The page the import form answers with, as text (its status checked)."""
    async with aiohttp.ClientSession() as http:
        cookies = {SESSION_COOKIE: await http_sign_in(http, server.url, server.admin_token)}
        async with http.get(server.url + "/entitlement", cookies=cookies) as response:
            csrf = form_field(await response.text(), "csrf")
        form = aiohttp.FormData()
        form.add_field("csrf", csrf)
        form.add_field("registry", text.encode(), filename="registry.csv", content_type="text/csv")
        async with http.post(
            server.url + "/entitlement/import",
            data=form,
            cookies=cookies,
            headers={"Origin": server.url},
        ) as response:
            page = await response.text()
    assert response.status == 422, page
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


@pytest.mark.parametrize("case", sorted(BAD_FILES))
async def test_a_bad_registry_file_changes_nothing_through_api_dashboard_and_cli(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    """The API, the dashboard and the CLI each refuse the file naming the same cell, and
    none of them changes the registry or writes an audit record."""
    text, (column, words) = BAD_FILES[case]
    before = await server.get("/api/v1/assets")
    audited = await server.get("/api/v1/audit", action="assets.import")

    api = await _through_api(server, text)
    assert [(found_column, words in message) for _, found_column, message in api] == [
        (column, True)
    ]
    ((line, _, message),) = api

    page = await _through_dashboard(server, text)
    assert f"{column} : {message}" in re.sub(r"\s+", " ", page)

    path = tmp_path / f"{case}.csv"
    path.write_text(text, encoding="utf-8")
    argv = ["controller", "assets", "import", str(path), "--data-dir", str(server.data_dir)]
    code, out, err = await asyncio.to_thread(_cli, capsys, *argv, "--json")
    assert code == 1, err
    problems = json.loads(out)["problems"]
    assert [(p["line"], p["column"], p["message"]) for p in problems] == [(line, column, message)]
    assert f"line {line}, column {column}" in err

    assert await server.get("/api/v1/assets") == before
    assert await server.get("/api/v1/audit", action="assets.import") == audited
