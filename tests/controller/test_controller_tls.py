"""Serving over TLS when a certificate and key are configured, with the control socket alongside."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import ssl
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from polyfleet.controller.app import read_runtime, serve
from polyfleet.controller.config import ControllerConfig


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_when_certificate_configured(tmp_path: Path) -> None:
    """With tls_cert and tls_key the API answers over HTTPS; the control socket still works."""
    cert, key = _self_signed(tmp_path)
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
