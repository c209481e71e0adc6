"""Serving over TLS when a certificate and key are configured, with the control socket alongside."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from pathlib import Path

import aiohttp

from polyfleet.controller.app import read_runtime, serve
from polyfleet.controller.config import ControllerConfig
from polyfleet.simulator.identity import make_tls_identity


async def test_https_when_certificate_configured(tmp_path: Path) -> None:
    """With tls_cert and tls_key the API answers over HTTPS; the control socket still works."""
    identity = make_tls_identity(tmp_path / "tls", "127.0.0.1", "127.0.0.1")
    cert, key = identity.cert_path, identity.key_path
    config = dataclasses.replace(
        ControllerConfig(),
        data_dir=tmp_path / "data",
        listen_port=0,
        tls_cert=cert,
        tls_key=key,
    )
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve(config, on_ready=ready.set_result, stop=stop, process_wide_gc_tuning=False)
    )
    try:
        url = await asyncio.wait_for(ready, 30)
        assert url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/api/v1/openapi.json", ssl=context) as response:
                assert response.status == 200
            async with http.get(f"{url}/api/v1/devices", ssl=context) as response:
                assert response.status == 401
        runtime = read_runtime(config.data_dir)
        assert runtime is not None
        connector = aiohttp.UnixConnector(path=runtime["control_socket"])
        async with (
            aiohttp.ClientSession(connector=connector) as local,
            local.get("http://controller/api/v1/devices") as response,
        ):
            assert response.status == 200
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)
    assert read_runtime(config.data_dir) is None
