"""Who is asking over HTTP, as a use case's ``Caller``: a token, a session, or the local socket."""

from __future__ import annotations

import pwd
import socket
import struct

from aiohttp import web

from polyfleet.controller.active import LEADERSHIP
from polyfleet.controller.features.caller import Caller
from polyfleet.controller.http.auth import PRINCIPAL, via_control_socket
from polyfleet.controller.http.errors import ApiError
from polyfleet.controller.services.access import Role
from polyfleet.controller.services.audit import Actor, Origin, local_command

#: ``struct ucred`` of SO_PEERCRED: pid, uid, gid.
_UCRED = struct.Struct("3i")


def _peer(request: web.Request) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end of the control socket, when the OS says."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return None
    try:
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size))
    except OSError:
        return None
    return pid, uid


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def who_and_where(request: web.Request) -> tuple[Actor, Origin]:
    """The actor and origin of a request, as the audit log records them."""
    found = request.get(PRINCIPAL)
    if request.app[LEADERSHIP].command:
        # An admin command serving itself on the store it holds: this machine's OS user.
        return local_command()
    if via_control_socket(request):
        peer = _peer(request)
        user = _user_name(peer[1]) if peer else None
        actor = Actor(name=user or "local control socket", role="admin")
        return actor, Origin(via="control_socket", user=user, pid=peer[0] if peer else None)
    origin = Origin(via="http", address=request.remote)
    if found is None:
        return Actor(name="anonymous", role="none"), origin
    name = found.name or found.token_id
    return Actor(name=name, role=found.role.value, token_id=found.token_id), origin


def caller(request: web.Request) -> Caller:
    """Who asks, for a use case: the request's credential and where it came from."""
    actor, origin = who_and_where(request)
    found = request.get(PRINCIPAL)
    role = Role.ADMIN if found is None and via_control_socket(request) else None
    if found is not None:
        role = found.role
    if role is None:
        raise ApiError(401, "unauthorized", "missing bearer token", "Authorization")
    return Caller(actor=actor, origin=origin, role=role)
