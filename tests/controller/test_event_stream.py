"""The event cursor: ids that survive restarts, ``?after=`` pages and the SSE stream."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from store_backends import StoreBackend

from polyfleet.controller.active import LEADERSHIP
from polyfleet.controller.events import AgentNoticeReceived
from polyfleet.controller.services.access import Role
from polyfleet.controller.testing import RunningController, running_controller

AT = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


async def _publish(controller: RunningController, *details: str) -> None:
    """Record one agent notice per detail, as an agent's notices are recorded."""
    await controller.core.bus.publish(
        *(
            AgentNoticeReceived(at=AT, site_id="krk", agent_id="a-1", notice="n", detail=d)
            for d in details
        )
    )


class Stream:
    """A client reading a Server-Sent Events response message by message."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def next(self) -> dict[str, str]:
        """The next message's fields (a comment-only message gives ``{"comment": ...}``)."""
        fields: dict[str, str] = {}
        while True:
            line = (await asyncio.wait_for(self.response.content.readline(), 10)).decode()
            if line == "":
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line == "":
                if fields:
                    return fields
                continue
            name, _, value = line.partition(":")
            fields[name or "comment"] = value.removeprefix(" ")

    async def events(self, count: int) -> list[tuple[int, str, str]]:
        """The next ``count`` events as (id, kind, detail), keep-alives skipped."""
        found: list[tuple[int, str, str]] = []
        while len(found) < count:
            message = await self.next()
            if "event" in message:
                data: dict[str, Any] = json.loads(message["data"])
                assert data["id"] == int(message["id"])
                found.append((data["id"], message["event"], data["data"]["detail"]))
        return found


async def _page(
    http: aiohttp.ClientSession, controller: RunningController, after: int, limit: int
) -> dict[str, Any]:
    async with http.get(
        f"{controller.url}/api/v1/events",
        params={"after": str(after), "limit": str(limit)},
        headers=controller.admin_headers,
    ) as response:
        assert response.status == 200
        page: dict[str, Any] = await response.json()
        return page


async def test_ids_increase_and_survive_a_restart(tmp_path: Path) -> None:
    """Event ids go up by one, go on after a restart, and ?after= pages them with a cursor."""
    async with aiohttp.ClientSession() as http:
        async with running_controller(tmp_path / "data") as controller:
            await _publish(controller, "a", "b", "c")
            first = await _page(http, controller, 0, 1000)
        before = [event["id"] for event in first["events"]]
        assert before == list(range(before[0], before[0] + len(before)))
        async with running_controller(tmp_path / "data") as controller:
            await _publish(controller, "d")
            page = await _page(http, controller, before[-3], 2)
            assert [e["data"]["detail"] for e in page["events"]] == ["b", "c"]
            assert page["next"] == before[-1]
            rest = await _page(http, controller, page["next"], 2)
            assert [(e["id"], e["data"]["detail"]) for e in rest["events"]] == [
                (before[-1] + 1, "d")
            ]
            end = await _page(http, controller, rest["next"], 2)
            assert end == {"events": [], "next": rest["next"]}


async def test_a_reconnecting_client_gets_exactly_what_it_missed(backend: StoreBackend) -> None:
    """A client that reconnects with Last-Event-ID gets the events recorded while it was away,
    then live ones, each once and in id order, on either store."""
    async with (
        running_controller(backend.directory, **backend.overrides) as controller,
        aiohttp.ClientSession(headers=controller.admin_headers) as http,
    ):
        start = controller.core.bus.last_id
        await _publish(controller, "a", "b")
        url = f"{controller.url}/api/v1/events/stream"
        async with http.get(url, params={"after": str(start)}) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            stream = Stream(response)
            seen = await stream.events(2)
            await _publish(controller, "c")
            seen += await stream.events(1)
        await _publish(controller, "d", "e")
        async with http.get(
            url, params={"after": "0"}, headers={"Last-Event-ID": str(seen[-1][0])}
        ) as response:
            stream = Stream(response)
            seen += await stream.events(2)
            await _publish(controller, "f")
            seen += await stream.events(1)
    assert [detail for _, _, detail in seen] == list("abcdef")
    assert [event_id for event_id, _, _ in seen] == list(range(start + 1, start + 7))
    assert {kind for _, kind, _ in seen} == {"agent_notice"}


async def test_an_id_older_than_retention_gives_a_reset(tmp_path: Path) -> None:
    """Asking after an id whose successors are no longer kept answers event: reset first,
    then the oldest kept events; once=1 ends the stream when caught up."""
    async with (
        running_controller(tmp_path / "data", events_keep=3) as controller,
        aiohttp.ClientSession(headers=controller.admin_headers) as http,
    ):
        await _publish(controller, *"abcdef")
        last = controller.core.bus.last_id
        async with http.get(
            f"{controller.url}/api/v1/events/stream", params={"after": "1", "once": "1"}
        ) as response:
            stream = Stream(response)
            reset = await stream.next()
            assert reset["event"] == "reset"
            body = json.loads(reset["data"])
            assert body["reason"] == "expired"
            assert body["after"] == 1
            assert body["oldest"] == last - 2
            assert int(reset["id"]) == last - 3
            assert await stream.events(3) == [
                (last - 2, "agent_notice", "d"),
                (last - 1, "agent_notice", "e"),
                (last, "agent_notice", "f"),
            ]
            with pytest.raises(EOFError):
                await stream.next()


async def test_an_idle_stream_sends_keep_alives_and_a_bad_cursor_is_refused(
    tmp_path: Path,
) -> None:
    """A stream with nothing new sends comment lines; a Last-Event-ID that is no id is a 400
    naming it; a viewer may follow the stream."""
    async with running_controller(tmp_path / "data", events_stream_keepalive_s=0.05) as controller:
        viewer, _ = await controller.core.access.create_token(Role.VIEWER, "viewer")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {viewer}"}) as http:
            url = f"{controller.url}/api/v1/events/stream"
            after = str(controller.core.bus.last_id)
            async with http.get(url, params={"after": after}) as response:
                assert response.status == 200
                assert await Stream(response).next() == {"comment": "keep-alive"}
            async with http.get(url, headers={"Last-Event-ID": "seven"}) as response:
                assert response.status == 400
                body = await response.json()
                assert body["error"]["field"] == "Last-Event-ID"


async def test_ids_go_on_after_a_standby_takes_over(postgres_url: str, tmp_path: Path) -> None:
    """On PostgreSQL, the standby that takes over numbers the next event after the last one
    the previous active controller recorded."""
    async with (
        running_controller(tmp_path / "a", store_url=postgres_url) as first,
        running_controller(tmp_path / "b", store_url=postgres_url, wait_active=False) as second,
    ):
        await _publish(first, "a", "b")
        last = first.core.bus.last_id
        # The active one stops (its runner's own cleanup at the end then finds nothing to do).
        await first.app.shutdown()
        await first.app.cleanup()
        await asyncio.wait_for(second.app[LEADERSHIP].became_active.wait(), 30)
        assert second.core.bus.last_id == last
        await _publish(second, "c")
        found = second.core.bus.query(since=last - 2)
        assert [(e["id"], e["data"]["detail"]) for e in found] == [
            (last - 1, "a"),
            (last, "b"),
            (last + 1, "c"),
        ]
