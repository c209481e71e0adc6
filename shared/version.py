"""Poly firmware version parsing and ordering."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Tools print one version in several shapes: 4.1.0.382263, 4.0.0-376092,
# 4.1.0_00.180034 (a hotfix on top of 4.1.0), or X.Y.Z with the build apart.
_VERSION_RE = re.compile(
    r"^\s*(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)"
    r"(?:_(?P<hotfix>\d+))?"
    r"(?:[.\-](?P<build>\d+))?\s*$"
)


class VersionError(ValueError):
    """A text is not a Poly firmware version."""


@dataclass(frozen=True, order=True)
class FirmwareVersion:
    """A comparable firmware version: (major, minor, patch, hotfix, build).

    A hotfix release ranks above the plain release of the same X.Y.Z whatever
    its build, so 4.1.0_00.180034 is newer than 4.1.0.382263. An unknown build
    compares as 0, so "3.12.0" sorts before "3.12.0.366027".
    """

    major: int
    minor: int
    patch: int
    hotfix: int = -1
    build: int = 0

    @classmethod
    def parse(cls, text: str, build: str | int | None = None) -> FirmwareVersion:
        """Parse a version as devices and release notes print it.

        ``build`` supplies the build when the text is X.Y.Z only, as in
        ``GET /rest/system`` (``softwareVersion`` and ``build`` apart).
        """
        match = _VERSION_RE.match(text or "")
        if match is None:
            raise VersionError(f"not a firmware version: {text!r} (expected e.g. 4.1.0.382263)")
        build_text = match["build"]
        if build_text is None and build not in (None, ""):
            build_text = str(build).strip()
            if not build_text.isdigit():
                raise VersionError(f"not a firmware build: {build!r}")
        return cls(
            major=int(match["major"]),
            minor=int(match["minor"]),
            patch=int(match["patch"]),
            hotfix=int(match["hotfix"]) if match["hotfix"] is not None else -1,
            build=int(build_text) if build_text else 0,
        )

    @property
    def release(self) -> str:
        """X.Y.Z, with the hotfix suffix when there is one (``4.1.0_00``)."""
        base = f"{self.major}.{self.minor}.{self.patch}"
        return f"{base}_{self.hotfix:02d}" if self.hotfix >= 0 else base

    @property
    def feature_line(self) -> tuple[int, int]:
        """(major, minor): a release that changes it is an upgrade, else a patch (S3)."""
        return (self.major, self.minor)

    def same_release(self, other: FirmwareVersion) -> bool:
        """True when both name the same release, ignoring an unknown build on either side."""
        if (self.major, self.minor, self.patch, self.hotfix) != (
            other.major,
            other.minor,
            other.patch,
            other.hotfix,
        ):
            return False
        return self.build == other.build or 0 in (self.build, other.build)

    def __str__(self) -> str:
        return f"{self.release}.{self.build}" if self.build else self.release
