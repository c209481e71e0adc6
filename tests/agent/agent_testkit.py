"""Agent test tools: one unit and its poller, a recording controller, a stand-in credential,
a cuttable link."""

from __future__ import annotations

from typing import Any, NamedTuple

import aiohttp

from polyfleet.agent.config import AgentConfig
from polyfleet.agent.pins import PinStore
from polyfleet.agent.poller import Poller
from polyfleet.simulator.device import SimDevice


class PolledUnit(NamedTuple):
    """One lab unit, a poller configured for it alone, and the poller's key for it."""

    device: SimDevice
    poller: Poller
    key: str


def make_poller(config: AgentConfig, http: aiohttp.ClientSession, **kwargs: Any) -> Poller:
    return Poller(config, session=http, outbox=None, pins=PinStore(config.data_dir), **kwargs)


class RecordingController:
    """A real HTTP server speaking the agent protocol's report side, switchable down (503).

    It stores each report id once, like the controller, and counts every time an
    id arrives so tests can tell "delivered once" from "sent twice".
    """

    def __init__(self) -> None:
        self.up = False
        self.received: dict[str, int] = {}
        self.snapshots: list[dict[str, Any]] = []
        self.notices: list[dict[str, Any]] = []
        self.batches = 0
        self.url = ""
        self._runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        async def reports(request: web.Request) -> web.Response:
            if not self.up:
                return web.json_response(
                    {"error": {"code": "unavailable", "message": "down", "field": None}}, status=503
                )
            body = await request.json()
            accepted = duplicates = 0
            for report in body["reports"]:
                count = self.received.get(report["id"], 0)
                self.received[report["id"]] = count + 1
                if count:
                    duplicates += 1
                else:
                    accepted += 1
                    self.snapshots.append(report["snapshot"])
            self.notices.extend(body.get("notices", []))
            self.batches += 1
            return web.json_response({"accepted": accepted, "duplicates": duplicates})

        async def jobs(request: web.Request) -> web.Response:
            if not self.up:
                return web.json_response({"error": {"code": "x", "message": "down"}}, status=503)
            return web.json_response({"jobs": []})

        app = web.Application()
        app.router.add_post("/api/v1/agent/reports", reports)
        app.router.add_get("/api/v1/agent/jobs", jobs)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class SwitchableLink:
    """A TCP relay on loopback that can cut the line to a real server (an uplink outage)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.up = False
        self.port = 0
        self._server: Any = None
        self._writers: set[Any] = set()

    async def start(self) -> None:
        import asyncio

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not self.up:
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.update({writer, up_writer})
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            self._writers.difference_update({writer, up_writer})

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        self.up = False
        for writer in list(self._writers):
            writer.close()

    async def stop(self) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()
