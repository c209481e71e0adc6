"""Each admin text of the API (read from its OpenAPI document) and CLI refuses bad characters."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from testkit.reports import batch, bearer, report, snapshot

from polyfleet.cli import build_parser, main
from polyfleet.controller.testing import RunningController

#: What must never get through, by what it is.
BAD = {
    "line break": "Sala\r\nBcc: x@example.com",
    "control": "Sala\x1b[31m",
    "bidirectional": "Sala\u202egnp.exe",
}

#: API operations with an admin JSON body: (method, path template) -> (path to call, a body
#: the field under test is added to, error field names that differ from the property's).
API_BODIES: dict[tuple[str, str], tuple[str, dict[str, Any], dict[str, str]]] = {
    ("POST", "/api/v1/sites"): (
        "/api/v1/sites",
        {"id": "wro", "name": "Wrocław"},
        {"id": "site_id"},
    ),
    ("PATCH", "/api/v1/sites/{site_id}"): ("/api/v1/sites/krk", {}, {}),
    ("PATCH", "/api/v1/devices/{serial}"): ("/api/v1/devices/X1", {}, {}),
    ("POST", "/api/v1/devices/{serial}/move"): ("/api/v1/devices/X1/move", {}, {}),
    ("POST", "/api/v1/devices/{serial}/jobs"): ("/api/v1/devices/X1/jobs", {}, {}),
    ("POST", "/api/v1/invites"): ("/api/v1/invites", {}, {}),
    ("POST", "/api/v1/tokens"): ("/api/v1/tokens", {"role": "viewer"}, {}),
    ("POST", "/api/v1/signin-links"): ("/api/v1/signin-links", {}, {}),
    ("POST", "/api/v1/rollouts"): ("/api/v1/rollouts?dry_run=1", {"target": "4.2.2-408037"}, {}),
    ("PATCH", "/api/v1/tickets/{ticket_id}"): ("/api/v1/tickets/PF-X1-camera_down", {}, {}),
    ("POST", "/api/v1/tickets/{ticket_id}/{action}"): (
        "/api/v1/tickets/PF-X1-camera_down/acknowledge",
        {},
        {},
    ),
    ("POST", "/api/v1/tickets"): (
        "/api/v1/tickets",
        {"serial": "X1", "category": "support", "summary": "Help with the layout"},
        {},
    ),
    ("POST", "/api/v1/maintenance"): (
        "/api/v1/maintenance",
        {
            "serial": "X1",
            "from": "2030-01-07T08:00:00+01:00",
            "until": "2030-01-07T16:00:00+01:00",
            "reason": "Room refurbished",
        },
        {},
    ),
}
#: Texts written in lines on purpose (a ticket's description): line breaks are theirs, the
#: other kinds are refused as everywhere.
MULTILINE = {("POST", "/api/v1/tickets"): {"description"}}
#: Fields of which a body names exactly one (the unit, its room or its site): the one tried
#: stands alone.
ONE_OF = {"serial", "site", "room"}
#: Request bodies that are not an admin's JSON, and why they are not tried here.
API_OTHER_BODIES = {
    "/api/v1/agent/": "an agent's protocol: the wire schema (shared/schema.py) checks it",
    "/api/v1/assets/import": "a registry CSV: the importer checks each cell (tests/entitlement)",
    "/api/v1/releases/{version}/package": "a firmware file: bytes, never shown as text",
}


def _string_properties(
    schema: dict[str, Any], document: dict[str, Any]
) -> Iterator[tuple[str, bool]]:
    """(name, whether it is a list) of the top-level properties of a request schema that take
    a text or a list of texts."""
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    for name, prop in schema.get("properties", {}).items():
        options = [prop, *prop.get("anyOf", []), *prop.get("oneOf", [])]
        if "$ref" in prop:
            options.append(document["components"]["schemas"][prop["$ref"].rsplit("/", 1)[-1]])
        if any(option.get("type") == "string" for option in options):
            yield name, False
        elif any(
            option.get("type") == "array" and option.get("items", {}).get("type") == "string"
            for option in options
        ):
            yield name, True


def _named(field: str, listed: bool) -> set[str]:
    """What an error may call the field: itself, or for a list, its first item."""
    return {field, f"{field}[0]"} if listed else {field}


async def test_every_admin_text_of_the_api_is_refused_with_its_field_named(
    controller: RunningController, http: aiohttp.ClientSession
) -> None:
    """Each text property of each admin request body refuses a line break, a control and a
    bidirectional character (400, 404 or 422) naming the field, and stores nothing."""
    agent = await controller.enroll("krk")
    url = controller.url
    reports = batch(report(snapshot("X1")))
    async with http.post(f"{url}/api/v1/agent/reports", json=reports, headers=bearer(agent.token)):
        pass
    async with http.get(f"{url}/api/v1/openapi.json") as response:
        document = await response.json()
    fields: dict[tuple[str, str], list[tuple[str, bool]]] = {}
    for template, operations in document["paths"].items():
        for method, operation in operations.items():
            content = (operation.get("requestBody") or {}).get("content", {})
            if not content or any(template.startswith(other) for other in API_OTHER_BODIES):
                continue
            assert list(content) == ["application/json"], (method, template, list(content))
            schema = content["application/json"].get("schema", {})
            fields[(method.upper(), template)] = sorted(_string_properties(schema, document))
    assert set(fields) == set(API_BODIES), "a new admin request body: add it to API_BODIES"
    refused: list[str] = []
    tried = 0
    for (method, template), names in sorted(fields.items()):
        path, base, renamed = API_BODIES[(method, template)]
        for name, listed in names:
            for kind, text in BAD.items():
                if kind == "line break" and name in MULTILINE.get((method, template), ()):
                    continue
                alone = {k: v for k, v in base.items() if not {k, name} <= ONE_OF}
                body = {**alone, name: [text] if listed else text}
                async with http.request(
                    method, url + path, json=body, headers=controller.admin_headers
                ) as response:
                    status, answer = response.status, await response.json()
                tried += 1
                error = answer.get("error", {})
                if (
                    status not in (400, 404, 422)
                    or error.get("field") not in _named(renamed.get(name, name), listed)
                    or any(char in error.get("message", "") for char in "\r\n\x1b\u202e")
                ):
                    refused.append(f"{method} {template} {name} ({kind}): {status} {answer}")
    assert refused == [], "\n".join(refused)
    assert tried >= 3 * 20, "the document lists fewer admin texts than it does today"
    async with http.get(f"{url}/api/v1/sites", headers=controller.admin_headers) as response:
        assert [site["id"] for site in (await response.json())["sites"]] == ["krk"]
    async with http.get(f"{url}/api/v1/tokens", headers=controller.admin_headers) as response:
        assert [token["name"] for token in (await response.json())["tokens"]] == ["test admin"]
    async with http.get(f"{url}/api/v1/devices/X1", headers=controller.admin_headers) as response:
        assert (await response.json())["room"] is None


#: CLI options taking admin text: (command, option) -> the rest of a command line it is
#: added to, and the field its error names.
CLI_TEXT: dict[tuple[str, str], tuple[list[str], str]] = {
    ("site add", "--name"): (["site", "add", "wro", "--timezone", "Europe/Warsaw"], "name"),
    ("site rename", "--name"): (["site", "rename", "krk"], "name"),
    ("token create", "--name"): (["token", "create", "--role", "viewer"], "name"),
    ("rollout plan", "--name"): (["rollout", "plan", "--target", "4.2.2-408037"], "name"),
    ("rollout plan", "--target"): (["rollout", "plan"], "target"),
    ("rollout plan", "--site"): (["rollout", "plan", "--target", "4.2.2-408037"], "sites"),
    ("rollout plan", "--model"): (["rollout", "plan", "--target", "4.2.2-408037"], "models"),
    ("rollout plan", "--exclude"): (["rollout", "plan", "--target", "4.2.2-408037"], "exclude"),
    ("tickets open", "--summary"): (
        ["tickets", "open", "--serial", "X1", "--category", "support"],
        "summary",
    ),
    ("tickets open", "--description"): (
        ["tickets", "open", "--serial", "X1", "--category", "support", "--summary", "Help"],
        "description",
    ),
    ("tickets open", "--contact"): (
        ["tickets", "open", "--serial", "X1", "--category", "support", "--summary", "Help"],
        "contact",
    ),
    ("maintenance add", "--reason"): (
        [
            "maintenance",
            "add",
            "--serial",
            "X1",
            "--from",
            "2030-01-07T08:00:00+01:00",
            "--until",
            "2030-01-07T16:00:00+01:00",
        ],
        "reason",
    ),
}
#: A held ticket's fields (checked by the command itself: the error names the option).
CLI_TEXT.update(
    (("tickets fill", option), (["tickets", "fill", "PF-X1-camera_down"], option))
    for option in (
        "--serial",
        "--contract-number",
        *(f"--contact-{name}" for name in ("name", "phone", "email")),
        *(f"--address-{name}" for name in ("street", "postal-code", "city", "country")),
    )
)
#: A site's reporter and delivery address (the error names the API's field).
CLI_TEXT.update(
    (
        ("site contact", f"--{name.replace('_', '-')}"),
        (["site", "contact", "krk"], f"{part}.{name}"),
    )
    for part, names in (
        ("contact", ("name", "phone", "email")),
        ("delivery_address", ("street", "postal_code", "city", "country")),
    )
    for name in names
)
#: Options written in lines on purpose: line breaks are theirs, the other kinds are refused.
CLI_MULTILINE = {("tickets open", "--description")}
_FILTER = "a filter or a lookup: matched against what is stored, never stored itself"
_WHERE = "where to find the controller or a file: a path, an address or a store URL"
_FORMAT = "a moment, a version, a checksum or a schedule: parsed strictly, refused unless valid"
#: Every other option of the controller's commands that takes a text, and why it is none.
CLI_OTHER = {
    "--accepted": _FORMAT,
    "--at": _FORMAT,
    "--date": _FORMAT,
    "--expires": _FORMAT,
    "--hop-length": _FORMAT,
    "--needs": _FORMAT,
    "--received": _FORMAT,
    "--sha256": _FORMAT,
    "--start": _FORMAT,
    "--submitted": _FORMAT,
    "--timezone": "an IANA zone name, refused unless the zone exists",
    "--version": _FORMAT,
    "--wave-gap": _FORMAT,
    "--waves": _FORMAT,
    "--window": _FORMAT,
    "--until": _FORMAT,
    "NETWORKS": "networks in CIDR form (192.0.2.0/24), checked as admin text and parsed",
    "--action": _FILTER,
    "--actor": _FILTER,
    "--firmware": _FILTER,
    "--health": _FILTER,
    "--monitoring": _FILTER,
    "--model": _FILTER,
    "--plan": _FILTER,
    "--room": _FILTER,
    "--serial": _FILTER,
    "WINDOW_ID": _FILTER,
    "--provider": _FILTER,
    "--site": _FILTER,
    "--status": _FILTER,
    "--target": _FILTER,
    "--ticket": _FILTER,
    "AGENT_IDS": _FILTER,
    "ID": _FILTER,
    "SERIAL": _FILTER,
    "TICKET_ID": _FILTER,
    "TOKEN_ID": _FILTER,
    "VERSION": _FILTER,
    "SITE_ID": "a site id: lowercase letters, digits, '.', '_' and '-' only",
    "--ca-file": _WHERE,
    "--config": _WHERE,
    "--data-dir": _WHERE,
    "--from": _WHERE,
    "--listen": _WHERE,
    "--store-url": _WHERE,
    "--to": _WHERE,
    "--url": _WHERE,
    "--token": "a credential: checked by the controller, never stored as given",
}


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...]
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, (*path, name))


def _text_options() -> set[tuple[str, str]]:
    """(command, option) for every option of ``polyfleet controller`` that takes a text."""
    (groups,) = [
        action
        for action in build_parser(["controller"])._actions
        if isinstance(action, argparse._SubParsersAction)
    ]
    found: set[tuple[str, str]] = set()
    for command, parser in _commands(groups.choices["controller"], ()):
        for action in parser._actions:
            if (
                isinstance(action, argparse._SubParsersAction | argparse._HelpAction)
                or action.nargs == 0
                or action.choices is not None
                or action.type not in (None, str)
            ):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest.upper()
            found.add((command, name))
    return found


def test_every_cli_option_is_admin_text_or_says_why_not() -> None:
    """Each text option of the controller's commands is tried below, or named as a filter, a
    place or a format (a new option has to be put in one of them)."""
    options = _text_options()
    assert set(CLI_TEXT) <= options
    unplaced = sorted(f"{c} {o}" for c, o in options - set(CLI_TEXT) if o not in CLI_OTHER)
    assert unplaced == []


@pytest.mark.parametrize("kind", sorted(BAD))
def test_every_cli_admin_text_option_is_refused_with_its_field_named(
    kind: str, tmp_path: Path
) -> None:
    """A line break, a control or a bidirectional character in an admin text option ends the
    command with one line on stderr naming the field, and stores nothing."""
    data = str(tmp_path / "data")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["controller", "site", "add", "krk", "--name", "Kraków", "--timezone",
                     "Europe/Warsaw", "--data-dir", data]) == 0  # fmt: skip
    refused: list[str] = []
    for (command, option), (line, field) in sorted(CLI_TEXT.items()):
        if kind == "line break" and (command, option) in CLI_MULTILINE:
            continue
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(["controller", *line, option, BAD[kind], "--data-dir", data])
        last = err.getvalue().splitlines()[-1] if err.getvalue() else ""
        if status == 0 or not last.startswith(f"error: {field}: ") or "\x1b" in last:
            refused.append(f"{command} {option}: exit {status}, {err.getvalue()!r}")
    assert refused == []
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["controller", "site", "list", "--json", "--data-dir", data]) == 0
    assert [site["id"] for site in json.loads(out.getvalue())["sites"]] == ["krk"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["controller", "token", "list", "--json", "--data-dir", data]) == 0
    assert json.loads(out.getvalue())["tokens"] == []
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(["controller", "rollout", "list", "--json", "--data-dir", data]) == 0
    assert json.loads(out.getvalue())["rollouts"] == []
