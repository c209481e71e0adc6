"""Admin sessions open on the units: which are new, and which come from outside a site's
admin networks (a security event, once per session)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Doc = dict[str, Any]

#: What a stored session keeps of a reported one (``shared.schema.AdminSession``).
SESSION_FIELDS = ("key", "user", "role", "address", "kind", "since")


def outside_networks(address: str, networks: Iterable[str]) -> bool:
    """Whether ``address`` lies outside every one of ``networks`` (CIDR texts).

    An address that is no IP address (empty, a name, garbage) is outside: nothing says it
    belongs. A port after it (``10.0.0.5:51234``, ``[fd00::5]:51234``) is left aside; an
    IPv4 address written as IPv6 (``::ffff:10.0.0.5``) is judged as IPv4.
    """
    ip = _ip(address.strip())
    if ip is None:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for text in networks:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            continue
        if network.version == ip.version and ip in network:
            return False
    return True


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    candidates = [text]
    if text.startswith("[") and "]" in text:
        candidates.append(text[1 : text.index("]")])
    elif text.count(":") == 1:
        candidates.append(text.partition(":")[0])
    for candidate in candidates:
        try:
            return ipaddress.ip_address(candidate)
        except ValueError:
            continue
    return None


@dataclass(frozen=True, kw_only=True)
class SessionReading:
    """What one reading of a unit's sessions changes: the sessions of other admins kept
    (the agent's own come and go every poll and are not kept), and those of them new since
    the last reading that came from outside the site's admin networks."""

    kept: list[Doc]
    unexpected: list[Doc]

    @property
    def keys(self) -> list[str]:
        return [session["key"] for session in self.kept]


def read_sessions(
    previous: Sequence[Mapping[str, Any]],
    reported: Sequence[Mapping[str, Any]],
    *,
    networks: Sequence[str],
    now: str,
) -> SessionReading:
    """Judge a reading of a unit's sessions (``reported``, in the wire's JSON form) against
    the sessions kept from the one before (``previous``).

    A session is new when its key was not kept: each session is judged once, when it first
    appears (a session already kept keeps its ``first_seen`` and its verdict). ``outside``:
    it came from an address outside ``networks`` (a site with none: every address).
    """
    known = {session["key"]: session for session in previous}
    kept: list[Doc] = []
    unexpected: list[Doc] = []
    seen: set[str] = set()
    for session in reported:
        key = session["key"]
        if session.get("agent") or key in seen:
            continue
        seen.add(key)
        before = known.get(key)
        if before is not None:
            kept.append(dict(before))
            continue
        doc: Doc = {name: session.get(name) for name in SESSION_FIELDS}
        doc["first_seen"] = now
        doc["outside"] = outside_networks(str(session.get("address") or ""), networks)
        kept.append(doc)
        if doc["outside"]:
            unexpected.append(doc)
    return SessionReading(kept=kept, unexpected=unexpected)
