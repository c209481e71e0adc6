"""The firmware release catalogue and the next-hop rule (E7): which release a device steps to."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from polyfleet.controller.domain.plans import ASSET_MODELS, CatalogueError
from polyfleet.shared.version import FirmwareVersion, VersionError

HopKind = Literal["patch", "upgrade"]

RELEASES_HEADER = """\
# Poly VideoOS firmware releases for Studio X30/X50/X70 with a known publication date (E7).
# Versions known without a date stay out until their date is known:
# `polyfleet controller releases add --version V --date YYYY-MM-DD [--needs V]`.
# needs = the oldest installed version that may take this release in one step.
# models = what these releases are published for; an E70 camera has firmware of its own.
"""
#: Models the VideoOS releases are published for; an E70 camera has firmware of its own.
DEFAULT_MODELS = ("studio_x30", "studio_x50", "studio_x70", "g7500")


@dataclass(frozen=True, kw_only=True)
class Release:
    """One published release: its version as Poly prints it, its date, and what it needs first."""

    text: str
    version: FirmwareVersion
    released: date
    needs_text: str | None = None
    needs: FirmwareVersion | None = None

    @property
    def build(self) -> int:
        """The build number (0 when the catalogue gives none)."""
        return self.version.build

    def accepts(self, installed: FirmwareVersion) -> bool:
        """True when ``installed`` is recent enough to take this release in one step."""
        if self.needs is None:
            return True
        return installed >= self.needs or installed.same_release(self.needs)


def is_newer(candidate: FirmwareVersion, installed: FirmwareVersion) -> bool:
    """True when ``candidate`` is a later release than ``installed`` (unknown builds tie)."""
    return candidate > installed and not candidate.same_release(installed)


def hop_kind(installed: FirmwareVersion, target: FirmwareVersion) -> HopKind:
    """``patch`` when major.minor stays, ``upgrade`` when it rises (S3)."""
    return "patch" if target.feature_line == installed.feature_line else "upgrade"


@dataclass(frozen=True)
class ReleaseCatalogue:
    """The dated releases, oldest version first, and the models they are published for."""

    releases: tuple[Release, ...]
    models: frozenset[str] = frozenset(DEFAULT_MODELS)

    def applies_to(self, model: str) -> bool:
        """True when these releases are firmware for ``model`` (not for an E70 camera)."""
        return model in self.models

    def published(self, day: date) -> list[Release]:
        """Releases published on or before ``day`` (E7)."""
        return [release for release in self.releases if release.released <= day]

    def candidates(self, installed: FirmwareVersion, day: date) -> list[Release]:
        """Every release ``installed`` may step to directly on ``day``, oldest first (E7)."""
        return [
            release
            for release in self.published(day)
            if is_newer(release.version, installed) and release.accepts(installed)
        ]

    def next_hop(self, installed: FirmwareVersion, day: date) -> Release | None:
        """The newest release newer than ``installed`` whose "needs at least" it meets (E7)."""
        found = self.candidates(installed, day)
        return found[-1] if found else None

    def path(self, installed: FirmwareVersion, day: date) -> list[Release]:
        """Hops from ``installed`` towards the newest published release, in order (E7)."""
        hops: list[Release] = []
        current = installed
        while (hop := self.next_hop(current, day)) is not None:
            hops.append(hop)
            current = hop.version
        return hops

    def find(self, version: FirmwareVersion) -> Release | None:
        """The catalogued release naming ``version``, if any."""
        for release in self.releases:
            if release.version.same_release(version):
                return release
        return None

    def add(self, release: Release) -> ReleaseCatalogue:
        """A new catalogue with ``release``; CatalogueError when it is already there or is odd."""
        if (existing := self.find(release.version)) is not None:
            raise CatalogueError(
                f"version {release.text}: already catalogued as {existing.text} "
                f"({existing.released.isoformat()})"
            )
        _check_needs(release)
        ordered = tuple(sorted((*self.releases, release), key=lambda r: r.version))
        return ReleaseCatalogue(ordered, self.models)


def _check_needs(release: Release) -> None:
    if release.needs is not None and not is_newer(release.version, release.needs):
        raise CatalogueError(
            f"version {release.text}: needs {release.needs_text} is not older than the release"
        )


def make_release(version: str, released: date, needs: str | None = None) -> Release:
    """A validated Release from the texts an admin types; CatalogueError names the field."""
    try:
        parsed = FirmwareVersion.parse(version)
    except VersionError as exc:
        raise CatalogueError(f"version: {exc}") from None
    needs_version: FirmwareVersion | None = None
    if needs:
        try:
            needs_version = FirmwareVersion.parse(needs)
        except VersionError as exc:
            raise CatalogueError(f"needs: {exc}") from None
    release = Release(
        text=version.strip(),
        version=parsed,
        released=released,
        needs_text=needs.strip() if needs else None,
        needs=needs_version,
    )
    _check_needs(release)
    return release


def parse_releases(document: Mapping[str, Any]) -> ReleaseCatalogue:
    """Validate a parsed releases.toml; CatalogueError names the entry and the key."""
    entries = document.get("release", [])
    if not isinstance(entries, list):
        raise CatalogueError("releases.toml: [[release]] entries expected")
    models = document.get("models", list(DEFAULT_MODELS))
    if not isinstance(models, list) or not all(m in ASSET_MODELS for m in models):
        raise CatalogueError(f"models: a list of models from {', '.join(ASSET_MODELS)} expected")
    catalogue = ReleaseCatalogue((), frozenset(models))
    for index, entry in enumerate(entries, start=1):
        where = f"release #{index}"
        if not isinstance(entry, dict):
            raise CatalogueError(f"{where}: a table expected")
        version, released, needs = entry.get("version"), entry.get("date"), entry.get("needs")
        if not isinstance(version, str):
            raise CatalogueError(f"{where}.version: a version string expected")
        # E7: only releases whose publication date is known belong here.
        if not isinstance(released, date):
            raise CatalogueError(f"{where}.date: a YYYY-MM-DD publication date expected")
        if needs is not None and not isinstance(needs, str):
            raise CatalogueError(f"{where}.needs: a version string expected")
        unknown = set(entry) - {"version", "date", "needs"}
        if unknown:
            raise CatalogueError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        try:
            catalogue = catalogue.add(make_release(version, released, needs))
        except CatalogueError as exc:
            raise CatalogueError(f"{where}: {exc}") from None
    return catalogue


def render_releases(catalogue: ReleaseCatalogue) -> str:
    """releases.toml text for ``catalogue``, oldest version first."""
    models = ", ".join(f'"{model}"' for model in sorted(catalogue.models))
    parts = [RELEASES_HEADER, f"models = [{models}]\n"]
    for release in catalogue.releases:
        lines = ["", "[[release]]", f'version = "{release.text}"']
        lines.append(f"date = {release.released.isoformat()}")
        if release.needs_text:
            lines.append(f'needs = "{release.needs_text}"')
        parts.append("\n".join(lines) + "\n")
    return "".join(parts)
