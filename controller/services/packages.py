"""Firmware packages kept by the controller: one verified file per catalogued release.

A package document (collection ``firmware_packages``, key = the release's version text) is
``{version, sha256, size, added_at, added_by, file}``; the bytes live in
``<data dir>/packages/<sha256>.bin``, written elsewhere, fsynced and renamed, so a package
is either whole and recorded or absent. Agents fetch a package once per site (with HTTP
ranges, so an interrupted download resumes) and check it against ``sha256`` and ``size``.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from polyfleet.controller.clock import Clock
from polyfleet.controller.domain.releases import Release, ReleaseCatalogue
from polyfleet.controller.errors import Invalid, NotFound
from polyfleet.controller.store.base import Doc, Store
from polyfleet.shared.durable import SHARED_MODE, StagedFile
from polyfleet.shared.version import FirmwareVersion, VersionError

PACKAGES = "firmware_packages"
#: The largest package accepted (real VideoOS packages are a few hundred MB).
MAX_PACKAGE_BYTES = 4 * 1024 * 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class PackageError(Invalid, ValueError):
    """A package that cannot be kept (422 ``invalid_package``); ``field`` names what to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message, code="invalid_package", field=field)


class UnknownPackage(NotFound, KeyError):
    """No package is kept for the release asked for (404 ``not_found``)."""

    def __init__(self, version: str) -> None:
        super().__init__(
            f"no firmware package for {version}: add one with "
            "`polyfleet controller releases package add VERSION FILE`"
        )
        self.version = version


def check_sha256(text: str | None) -> str | None:
    """A lower-case SHA-256 hex digest, or None; PackageError when malformed."""
    if text is None or text == "":
        return None
    digest = text.strip().lower()
    if not _SHA256.match(digest):
        raise PackageError("sha256", f"{text!r} is not a SHA-256 digest (64 hex digits)")
    return digest


class PackageService:
    """Owns the ``firmware_packages`` collection and the packages directory."""

    def __init__(self, store: Store, clock: Clock, *, packages_dir: Path) -> None:
        self._store = store
        self._clock = clock
        self.directory = packages_dir
        #: Whole downloads by agents since start, (site, version) -> count (ranges resume one).
        self.downloads: dict[tuple[str, str], int] = {}
        #: Release (without its build) -> the keys of its packages; read from the store at
        #: first use, kept by ``add`` (the only writer), so ``find`` reads no whole collection.
        self._by_release: dict[tuple[int, int, int, int], list[str]] | None = None

    def _releases(self) -> dict[tuple[int, int, int, int], list[str]]:
        if self._by_release is None:
            by_release: dict[tuple[int, int, int, int], list[str]] = {}
            for key, doc in list(self._store.scan(PACKAGES).items()):
                self._note(by_release, key, str(doc["version"]))
            self._by_release = by_release
        return self._by_release

    @staticmethod
    def _note(
        by_release: dict[tuple[int, int, int, int], list[str]], key: str, version: str
    ) -> None:
        try:
            parsed = FirmwareVersion.parse(version)
        except VersionError:
            return
        keys = by_release.setdefault((parsed.major, parsed.minor, parsed.patch, parsed.hotfix), [])
        if key not in keys:
            keys.append(key)

    def note_download(self, version: str, site: str, range_header: str | None) -> None:
        """Count an agent's download; a resumed one (a range) is the same download."""
        if range_header:
            return
        key = (site, version)
        self.downloads[key] = self.downloads.get(key, 0) + 1

    def release_of(self, releases: ReleaseCatalogue, version: str) -> Release:
        try:
            parsed = FirmwareVersion.parse(version)
        except VersionError as exc:
            raise PackageError("version", str(exc)) from None
        release = releases.find(parsed)
        if release is None:
            raise PackageError(
                "version",
                f"{version} is not in the release catalogue: add the release first "
                "(`polyfleet controller releases add`)",
            )
        return release

    def get(self, version: str) -> Doc:
        doc = self._store.get(PACKAGES, version)
        if doc is None:
            raise UnknownPackage(version)
        return doc

    def find(self, version: str) -> Doc | None:
        """The package of the release ``version`` names (in any of its printed forms)."""
        doc = self._store.get(PACKAGES, version)
        if doc is not None:
            return doc
        try:
            parsed = FirmwareVersion.parse(version)
        except VersionError:
            return None
        release = (parsed.major, parsed.minor, parsed.patch, parsed.hotfix)
        for key in self._releases().get(release, ()):
            candidate = self._store.get(PACKAGES, key)
            if candidate is not None and FirmwareVersion.parse(candidate["version"]).same_release(
                parsed
            ):
                return candidate
        return None

    def packages(self) -> list[Doc]:
        docs = list(self._store.scan(PACKAGES).values())
        return sorted(docs, key=lambda doc: FirmwareVersion.parse(doc["version"]))

    def path(self, doc: Doc) -> Path:
        return self.directory / str(doc["file"])

    async def add(
        self,
        releases: ReleaseCatalogue,
        version: str,
        chunks: AsyncIterator[bytes],
        *,
        sha256: str | None = None,
        added_by: str = "",
    ) -> Doc:
        """Stream a package to disk and record it; PackageError leaves nothing behind.

        ``sha256``, when given, must match what arrived (the vendor's published digest).
        Adding again replaces the release's package (its document names the new file).
        """
        release = self.release_of(releases, version)
        expected = check_sha256(sha256)
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True, mode=0o755)
        digest = hashlib.sha256()
        size = 0
        staged = await asyncio.to_thread(StagedFile, self.directory, mode=SHARED_MODE)
        try:
            async for chunk in chunks:
                size += len(chunk)
                if size > MAX_PACKAGE_BYTES:
                    raise PackageError("file", f"larger than {MAX_PACKAGE_BYTES} bytes")
                digest.update(chunk)
                await asyncio.to_thread(staged.write, chunk)
            await asyncio.to_thread(staged.finish)
            if size == 0:
                raise PackageError("file", "the package is empty")
            actual = digest.hexdigest()
            if expected is not None and actual != expected:
                raise PackageError(
                    "sha256",
                    f"the file's SHA-256 is {actual}, not the {expected} given: "
                    "nothing was kept (a damaged or wrong file?)",
                )
            final = self.directory / f"{actual}.bin"
            await asyncio.to_thread(staged.commit, final)
        finally:
            await asyncio.to_thread(staged.discard)
        doc: Doc = {
            "version": release.text,
            "sha256": actual,
            "size": size,
            "added_at": self._clock().isoformat(),
            "added_by": added_by,
            "file": final.name,
        }
        seq = self._store.apply({PACKAGES: {release.text: doc}})
        self._note(self._releases(), release.text, release.text)
        await self._store.wait_durable(seq)
        return doc


def package_json(doc: Doc) -> dict[str, Any]:
    """A package as the API and CLI show it."""
    return {
        "version": doc["version"],
        "sha256": doc["sha256"],
        "size": doc["size"],
        "added_at": doc["added_at"],
        "added_by": doc.get("added_by", ""),
    }


async def file_chunks(path: Path, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    """A file's bytes in chunks, read off the event loop."""
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, size):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)
