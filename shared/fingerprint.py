"""Fingerprints for pinning device TLS certificates and SSH host keys (OpenSSH style)."""

from __future__ import annotations

import base64
import hashlib


def sha256_fingerprint(blob: bytes) -> str:
    """``SHA256:<base64 without padding>`` of ``blob``, as ``ssh-keygen -l`` prints it.

    For a TLS certificate ``blob`` is its DER encoding; for an SSH host key the
    public key blob. One format for both lets an admin pin either the same way.
    """
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def normalise_fingerprint(text: str) -> str:
    """Accept ``SHA256:b64``, or a hex digest with or without colons; return ``SHA256:b64``."""
    value = text.strip()
    if value.upper().startswith("SHA256:"):
        body = value[len("SHA256:") :]
        hex_candidate = body.replace(":", "")
        if len(hex_candidate) == 64 and all(c in "0123456789abcdefABCDEF" for c in hex_candidate):
            return sha256_fingerprint_from_digest(bytes.fromhex(hex_candidate))
        padded = body + "=" * (-len(body) % 4)
        try:
            digest = base64.b64decode(padded, validate=True)
        except ValueError as exc:
            raise ValueError(f"not a SHA256 fingerprint: {text!r}") from exc
        if len(digest) != 32:
            raise ValueError(f"not a SHA256 fingerprint: {text!r}")
        return sha256_fingerprint_from_digest(digest)
    hex_candidate = value.replace(":", "")
    if len(hex_candidate) == 64:
        try:
            return sha256_fingerprint_from_digest(bytes.fromhex(hex_candidate))
        except ValueError as exc:
            raise ValueError(f"not a SHA256 fingerprint: {text!r}") from exc
    raise ValueError(f"not a SHA256 fingerprint: {text!r} (expected SHA256:...)")


def sha256_fingerprint_from_digest(digest: bytes) -> str:
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def short_fingerprint(fingerprint: str, chars: int = 12) -> str:
    """``SHA256:p5uPgzfL1hwG...``: enough of a fingerprint for a person to tell two apart.

    Messages for people (logs, report problems, tickets) show this; the whole value
    stays where an admin checks and accepts it (``polyfleet agent pins list``).
    """
    prefix, sep, body = fingerprint.partition(":")
    if not sep:
        prefix, body = "", fingerprint
    head = f"{prefix}:" if sep else ""
    return head + body if len(body) <= chars else f"{head}{body[:chars]}..."
