"""Self-inflicted lockout: agent credentials apart, the last admin token kept, the CLI asks."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from access_testkit import (
    admin_at_controller,
    enroll_agent,
    post_report,
    run_cli_on_terminal,
)
from testkit.clients import call_with_token
from testkit.reports import bearer, snapshot


async def test_the_last_admin_token_cannot_be_revoked(tmp_path: Path) -> None:
    """Revoking the only admin token answers 409 and it keeps working; with two, one may go."""
    async with admin_at_controller(tmp_path / "data") as (_controller, http, api, ops):
        status, tokens = await call_with_token(http, "GET", f"{api}/tokens", ops)
        (ops_id,) = [t["id"] for t in tokens["tokens"]]
        viewer_status, viewer = await call_with_token(
            http, "POST", f"{api}/tokens", ops, {"role": "viewer"}
        )
        assert viewer_status == 201

        status, answer = await call_with_token(http, "DELETE", f"{api}/tokens/{ops_id}", ops)
        assert status == 409, answer
        assert answer["error"]["code"] == "last_admin_token"
        assert "create another admin token first" in answer["error"]["message"]
        assert (await call_with_token(http, "GET", f"{api}/devices", ops))[0] == 200

        status, second = await call_with_token(
            http, "POST", f"{api}/tokens", ops, {"role": "admin", "name": "second"}
        )
        assert status == 201
        # The token in use may go now that another admin token exists.
        assert (await call_with_token(http, "DELETE", f"{api}/tokens/{ops_id}", ops))[0] == 200
        assert (await call_with_token(http, "GET", f"{api}/devices", ops))[0] == 401
        status, answer = await call_with_token(
            http, "DELETE", f"{api}/tokens/{second['id']}", second["token"]
        )
        assert status == 409 and answer["error"]["code"] == "last_admin_token"
        # Viewer tokens never count: the viewer goes, the admin stays.
        assert (
            await call_with_token(http, "DELETE", f"{api}/tokens/{viewer['id']}", second["token"])
        )[0] == 200
        status, tokens = await call_with_token(http, "GET", f"{api}/tokens", second["token"])
        assert [t["id"] for t in tokens["tokens"]] == [second["id"]]


async def test_agent_credentials_are_listed_and_revoked_as_agents_not_tokens(
    tmp_path: Path,
) -> None:
    """Tokens list no agent; an agent's credential id is refused by token revoke, naming it."""
    async with admin_at_controller(tmp_path / "data") as (controller, http, api, ops):
        for site in ("krk", "waw"):
            await call_with_token(http, "POST", f"{api}/sites", ops, {"id": site})
        agents = {}
        for site in ("krk", "waw"):
            _, invite = await call_with_token(http, "POST", f"{api}/invites", ops, {"site": site})
            agents[site] = await enroll_agent(http, controller.url, invite["code"], f"{site}-agent")
        now = datetime.now(UTC).isoformat()
        await post_report(
            http,
            controller.url,
            agents["krk"]["token"],
            snapshot("X1", collected_at=now),
            "report-0001",
        )

        _, tokens = await call_with_token(http, "GET", f"{api}/tokens", ops)
        assert {t["role"] for t in tokens["tokens"]} == {"admin"}
        _, listed = await call_with_token(http, "GET", f"{api}/agents", ops)
        assert [(a["id"], a["site_id"], a["name"]) for a in listed["agents"]] == [
            (agents["krk"]["agent_id"], "krk", "krk-agent"),
            (agents["waw"]["agent_id"], "waw", "waw-agent"),
        ]
        assert all(a["last_seen"] for a in listed["agents"])
        assert agents["krk"]["token"] not in str(listed)
        async with http.get(f"{api}/agents", params={"site": "krk"}, headers=bearer(ops)) as r:
            at_krk = await r.json()
        (krk,) = at_krk["agents"]

        status, answer = await call_with_token(
            http, "DELETE", f"{api}/tokens/{krk['token_id']}", ops
        )
        assert status == 404
        assert krk["id"] in answer["error"]["message"]
        assert "revoke the agent" in answer["error"]["message"]
        # Still enrolled: its reports are taken.
        await post_report(
            http,
            controller.url,
            agents["krk"]["token"],
            snapshot("X1", collected_at=now),
            "report-0002",
        )

        assert (await call_with_token(http, "DELETE", f"{api}/agents/{krk['id']}", ops))[0] == 200
        body = {"protocol_version": 1, "reports": []}
        status, _ = await call_with_token(
            http, "POST", f"{controller.url}/api/v1/agent/reports", agents["krk"]["token"], body
        )
        assert status == 401
        status, _ = await call_with_token(
            http, "GET", f"{controller.url}/api/v1/agent/jobs", agents["waw"]["token"]
        )
        assert status == 200
        assert (await call_with_token(http, "DELETE", f"{api}/agents/{krk['id']}", ops))[0] == 404
        _, listed = await call_with_token(http, "GET", f"{api}/agents", ops)
        assert [a["site_id"] for a in listed["agents"]] == ["waw"]
        _, log = await call_with_token(http, "GET", f"{api}/audit", ops)
        revoked = [e for e in log["entries"] if e["action"] == "agent.revoke"]
        assert [(e["target"], e["site"]) for e in revoked] == [(f"agent:{krk['id']}", "krk")]


async def test_cli_token_revoke_asks_first_and_keeps_the_last_admin_token(
    tmp_path: Path,
) -> None:
    """token revoke asks on a terminal, refuses without one unless --yes, keeps the last admin."""
    async with admin_at_controller(tmp_path / "data") as (controller, http, api, ops):
        _, backup = await call_with_token(
            http, "POST", f"{api}/tokens", ops, {"role": "admin", "name": "backup"}
        )
        listed = await controller.cli("token", "list", "--json")
        assert listed.status == 0, listed.err
        ids = {t["name"]: t["id"] for t in listed.json()["tokens"]}
        assert set(ids) == {"ops", "backup"}

        # A script that forgot --yes fails and changes nothing.
        refused = await controller.cli("token", "revoke", ids["ops"], "--json")
        assert refused.status == 2
        assert refused.json()["error"]["code"] == "confirmation_needed"
        assert (await call_with_token(http, "GET", f"{api}/devices", ops))[0] == 200
        # On a terminal, anything but yes keeps it.
        declined = await run_cli_on_terminal(
            "token", "revoke", ids["ops"], "--data-dir", str(controller.data_dir), answer="n"
        )
        assert declined.status == 1, declined
        assert f"Revoke admin token {ids['ops']} (ops)?" in declined.err
        assert (await call_with_token(http, "GET", f"{api}/devices", ops))[0] == 200
        accepted = await run_cli_on_terminal(
            "token", "revoke", ids["ops"], "--data-dir", str(controller.data_dir), answer="y"
        )
        assert accepted.status == 0, accepted
        assert (await call_with_token(http, "GET", f"{api}/devices", ops))[0] == 401
        last = await controller.cli("token", "revoke", ids["backup"], "--yes", "--json")
        assert last.status == 1
        assert last.json()["error"]["code"] == "last_admin_token"
        assert (await call_with_token(http, "GET", f"{api}/devices", backup["token"]))[0] == 200


async def test_cli_lists_agents_by_site_and_revokes_them_after_asking(tmp_path: Path) -> None:
    """agent list/revoke work by site; token revoke of an agent's credential names the agent."""
    async with admin_at_controller(tmp_path / "data") as (controller, http, api, ops):
        for site in ("krk", "waw"):
            await call_with_token(http, "POST", f"{api}/sites", ops, {"id": site})
            _, invite = await call_with_token(http, "POST", f"{api}/invites", ops, {"site": site})
            await enroll_agent(http, controller.url, invite["code"], f"{site}-agent")
        at_krk = await controller.cli("agent", "list", "--site", "krk", "--json")
        assert [a["name"] for a in at_krk.json()["agents"]] == ["krk-agent"]
        unknown = await controller.cli("agent", "revoke", "agt_nope", "--yes", "--json")
        assert unknown.status == 1 and unknown.json()["error"]["code"] == "not_found"
        revoke = await run_cli_on_terminal(
            "agent", "revoke", "--site", "krk", "--data-dir", str(controller.data_dir), answer="yes"
        )
        assert revoke.status == 0, revoke
        assert "Revoke 1 agent(s)" in revoke.err
        _, left = await call_with_token(http, "GET", f"{api}/agents", ops)
        assert [a["site_id"] for a in left["agents"]] == ["waw"]
        waw = left["agents"][0]
        wrong = await controller.cli("token", "revoke", waw["token_id"], "--yes")
        assert wrong.status == 1 and waw["id"] in wrong.err
