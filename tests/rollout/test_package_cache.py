"""The agent's package cache: fetched once from the controller, resumed, verified, bounded."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from polyfleet.agent.update_server import PackageCache, PackageMismatch, PackageRef
from polyfleet.agent.uplink import Uplink
from polyfleet.controller.testing import RunningController, running_controller

CONTENT = {v: (v.encode() * 50_000)[:400_000] for v in ("4.1.3.394009", "4.2.2-408037")}


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[RunningController]:
    async with running_controller(tmp_path / "ctl") as running:
        async with aiohttp.ClientSession(headers=running.admin_headers) as http:
            for version, content in CONTENT.items():
                url = f"{running.url}/api/v1/releases/{version}/package"
                async with http.put(url, data=content) as response:
                    assert response.status == 201
        yield running


@pytest.fixture
async def uplink(controller: RunningController) -> AsyncIterator[Uplink]:
    """The uplink of an agent enrolled at krk."""
    agent = await controller.enroll("krk")
    async with aiohttp.ClientSession() as http:
        yield Uplink(controller.url, session=http, token=agent.token)


def loaded_cache(folder: Path, max_bytes: int = 10_000_000) -> PackageCache:
    cache = PackageCache(folder / "packages", max_bytes=max_bytes)
    cache.load()
    return cache


def ref(version: str) -> PackageRef:
    content = CONTENT[version]
    return PackageRef(version, hashlib.sha256(content).hexdigest(), len(content))


async def test_an_interrupted_download_resumes_from_where_it_stopped(
    uplink: Uplink, tmp_path: Path
) -> None:
    """A part left by an interrupted download is completed with a range, then verified."""
    cache = loaded_cache(tmp_path)
    wanted = ref("4.2.2-408037")
    (cache.directory / f"{wanted.sha256}.part").write_bytes(CONTENT[wanted.version][:150_000])
    path = await cache.ensure(uplink, wanted)
    assert path.read_bytes() == CONTENT[wanted.version]
    assert cache.fetches == [
        {"version": wanted.version, "bytes": 400_000 - 150_000, "resumed_from": 150_000}
    ]
    # Kept: asking again fetches nothing.
    await cache.ensure(uplink, wanted)
    assert len(cache.fetches) == 1


async def test_a_damaged_part_is_discarded_and_never_served(uplink: Uplink, tmp_path: Path) -> None:
    """A part with wrong bytes fails the SHA-256 check and is dropped; the next try is whole."""
    cache = loaded_cache(tmp_path)
    wanted = ref("4.2.2-408037")
    (cache.directory / f"{wanted.sha256}.part").write_bytes(b"\x00" * 1000)
    # Not what was ordered: the job's failure code says checksum_mismatch.
    with pytest.raises(PackageMismatch, match="discarded"):
        await cache.ensure(uplink, wanted)
    assert not cache.path(wanted.sha256).exists()
    path = await cache.ensure(uplink, wanted)
    assert path.read_bytes() == CONTENT[wanted.version]


async def test_the_cache_stays_under_its_bound(uplink: Uplink, tmp_path: Path) -> None:
    """With room for one package, fetching a second removes the least recently used."""
    cache = loaded_cache(tmp_path, max_bytes=500_000)
    older, newer = ref("4.1.3.394009"), ref("4.2.2-408037")
    await cache.ensure(uplink, older)
    await cache.ensure(uplink, newer)
    assert not cache.path(older.sha256).exists()
    assert cache.path(newer.sha256).read_bytes() == CONTENT[newer.version]
