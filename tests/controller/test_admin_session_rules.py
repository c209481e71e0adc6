"""Which admin sessions are new, and which come from outside a site's admin networks."""

from __future__ import annotations

from polyfleet.controller.domain.admin_sessions import outside_networks, read_sessions


def test_addresses_inside_and_outside_the_admin_networks() -> None:
    """Inside any network is inside (ports and IPv4-in-IPv6 too); garbage and no networks
    are outside."""
    networks = ["10.20.0.0/16", "fd00:20::/32", "not a network"]
    for address in ("10.20.1.5", "10.20.1.5:51234", "::ffff:10.20.1.5", "[fd00:20::5]:22"):
        assert not outside_networks(address, networks), address
    for address in ("10.21.0.1", "", "admin-pc", "10.20.1.5.evil", "fd00:21::1"):
        assert outside_networks(address, networks), address
    assert outside_networks("10.20.1.5", [])


def test_a_session_is_judged_once_and_the_agents_own_never() -> None:
    """A session first seen from outside is unexpected once; seen again it keeps its first
    sighting; the agent's own is neither kept nor judged."""
    own = {"key": "a", "user": "admin", "address": "192.0.2.1", "kind": "web", "agent": True}
    eve = {"key": "e", "user": "eve", "address": "192.0.2.9", "kind": "ssh", "agent": False}
    first = read_sessions([], [own, eve], networks=["10.0.0.0/8"], now="T1")
    assert [s["key"] for s in first.unexpected] == ["e"] and first.keys == ["e"]
    again = read_sessions(first.kept, [own, eve], networks=["10.0.0.0/8"], now="T2")
    assert again.unexpected == [] and again.kept[0]["first_seen"] == "T1"
    gone = read_sessions(again.kept, [own], networks=["10.0.0.0/8"], now="T3")
    assert gone.kept == [] and gone.unexpected == []
