"""The legacy SSH command-line API of a simulated device (paramiko, one thread per connection)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable

import paramiko

from polyfleet.simulator.device import SimDevice
from polyfleet.simulator.subsystems import status_entries

log = logging.getLogger(__name__)

#: paramiko logs every client that hangs up abruptly as an ERROR; for a lab that is normal.
TRANSPORT_LOG = "polyfleet.simulator.ssh.transport"
logging.getLogger(TRANSPORT_LOG).setLevel(logging.CRITICAL)

# paramiko's constants, typed (its stubs do not export them at the top level).
AUTH_SUCCESSFUL: int = paramiko.common.AUTH_SUCCESSFUL
AUTH_FAILED: int = paramiko.common.AUTH_FAILED
OPEN_SUCCEEDED: int = paramiko.common.OPEN_SUCCEEDED
OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED: int = (
    paramiko.common.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
)

PROMPT = "-> "
#: Line endings by ``DeviceSpec.ssh_line_ending``; some units send ``\r\r\n``.
EOLS = {"crlf": "\r\n", "crcrlf": "\r\r\n"}
#: How long a client may take to open its session channel after logging in.
CHANNEL_TIMEOUT = 20.0
#: Longest command line accepted; longer input is dropped (a hostile or stuck client).
MAX_LINE = 1024
#: How long to wait for the client to hang up after the last answer.
CLOSE_GRACE = 2.0

NOT_FOUND = "error: command not found"
NEEDS_MORE = "error: command needs more parameters to execute successfully"
ILLEGAL = "error: command has illegal parameters"

#: REST subsystem name -> legacy ``status`` name.
LEGACY_STATUS_NAMES = {
    "ipnetwork": "ipnetwork",
    "trackablecamera": "trackablecamera",
    "mr.camera": "camera",
    "mr.audio": "microphones",
    "sipserver": "sipserver",
    "gatekeeper": "gatekeeper",
    "logthreshold": "logthreshold",
    "remotecontrol": "remotecontrol",
    "autoanswerp2p": "autoanswerp2p",
    "globaldirectory": "globaldirectory",
    "calendar": "calendar",
    "provisioning": "provisioning",
}
LEGACY_STATES = {
    "up": "online",
    "all_up": "online",
    "down": "offline",
    "some_down": "offline",
    "all_down": "offline",
    "off": "disabled",
    "full": "full",
    "unknown": "unknown",
}


class SessionServer(paramiko.ServerInterface):
    """Password login; one session channel running a shell or one command (``command``)."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.command: str | None = None
        #: Whether the client asked for a terminal (one echoes what is typed).
        self.pty = False

    def get_allowed_auths(self, username: str) -> str:
        return "password"

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return OPEN_SUCCEEDED
        return OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_pty_request(
        self,
        channel: paramiko.Channel,
        term: bytes,
        width: int,
        height: int,
        pixelwidth: int,
        pixelheight: int,
        modes: bytes,
    ) -> bool:
        self.pty = True
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        self.ready.set()
        return True

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self.command = command.decode("utf-8", "replace")
        self.ready.set()
        return True


class DeviceSshServer(SessionServer):
    """Password login against the device's admin password."""

    def __init__(self, device: SimDevice) -> None:
        super().__init__()
        self.device = device

    def check_auth_password(self, username: str, password: str) -> int:
        if self.device.check_password(username, password) == "ok":
            return AUTH_SUCCESSFUL
        return AUTH_FAILED


def format_uptime(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    return f"{days} Days, {hours} Hours, {minutes} Minutes"


def banner(device: SimDevice) -> list[str]:
    """What ``whoami`` prints (and the greeting after login)."""
    sip = "True" if device.spec.sip else "False"
    return [
        f"Hi, my name is : {device.spec.display_name}",
        "Here is what I know about myself:",
        f"Model: {device.spec.model_name}",
        f"Serial Number: {device.serial}",
        f"Software Version: {device.firmware_version}",
        f"Build Information: {device.build}",
        f"Contact Number: {device.address}",
        f"Time In Last Call: {'0:00:00'}",
        f"Uptime: {format_uptime(device.uptime())}",
        f"SIP Enabled: {sip}",
    ]


def run_command(device: SimDevice, line: str) -> tuple[list[str], bool]:
    """Output lines of one command, and whether the connection should close after it."""
    words = line.split()
    if not words:
        return [], False
    command, args = words[0].lower(), [w.lower() for w in words[1:]]
    if command in ("exit", "bye", "quit"):
        return [], True
    if command == "whoami":
        return banner(device), False
    if command == "status":
        lines = [f"inacall {'online' if device.call is not None else 'offline'}"]
        for name, state in status_entries(device):
            lines.append(f"{LEGACY_STATUS_NAMES[name]} {LEGACY_STATES.get(state, state)}")
        return [*lines, "status end"], False
    if command == "systemsetting":
        if len(args) < 2:
            return [NEEDS_MORE], False
        if args[0] == "get" and args[1] == "model":
            return [f'systemsetting model "{device.spec.model_name}"'], False
        if args[0] == "get" and args[1] == "systemname":
            return [f'systemsetting systemname "{device.spec.display_name}"'], False
        return [ILLEGAL], False
    if command == "uptime":
        if not args:
            return [NEEDS_MORE], False
        if args[0] == "get":
            return [format_uptime(device.uptime())], False
        return [ILLEGAL], False
    if command == "callinfo":
        if not args:
            return [NEEDS_MORE], False
        if args[0] != "all":
            return [ILLEGAL], False
        call = device.call
        if call is None:
            return ["system is not in a call"], False
        return [
            "callinfo begin",
            f"callinfo:0:{call.remote}:1920:connected:notmuted:outgoing:videocall",
            "callinfo end",
        ], False
    if command == "reboot":
        if args[:1] != ["now"]:
            return [NEEDS_MORE], False
        device.request_reboot_threadsafe()
        return [], True
    return [NOT_FOUND], False


def _send_lines(device: SimDevice, channel: paramiko.Channel, lines: list[str]) -> None:
    if lines:
        eol = EOLS[device.spec.ssh_line_ending]
        channel.sendall(("".join(line + eol for line in lines)).encode())


def _delay(device: SimDevice) -> None:
    slow = device.faults.get("slow")
    if slow is not None:
        time.sleep(float(slow.get("latency_ms", 0)) / 1000)  # waits-for: fault "slow" (SSH thread)


class _Terminal:
    """The shell's output side: once the client has gone, output is dropped, input still runs.

    A client may type ``reboot now`` and hang up at once; a real unit still reboots.
    """

    def __init__(self, device: SimDevice, channel: paramiko.Channel) -> None:
        self.device = device
        self.channel = channel
        self.gone = False

    def send(self, lines: list[str], prompt: bool = False) -> None:
        if self.gone:
            return
        try:
            _send_lines(self.device, self.channel, lines)
            if prompt:
                self.channel.sendall(PROMPT.encode())
        except (OSError, EOFError, paramiko.SSHException):
            self.gone = True


def _shell(device: SimDevice, channel: paramiko.Channel) -> None:
    terminal = _Terminal(device, channel)
    if device.spec.ssh_banner_delay_ms:
        # Real units may greet late; clients must wait for the prompt, not assume it.
        time.sleep(device.spec.ssh_banner_delay_ms / 1000)  # waits-for: simulated late banner
    terminal.send(banner(device), prompt=True)
    line = bytearray()
    skip_lf = False
    while True:
        data = channel.recv(1024)
        if not data:
            return
        for byte in data:
            if byte == 0x0A and skip_lf:
                skip_lf = False
                continue
            skip_lf = byte == 0x0D
            if byte not in (0x0A, 0x0D):
                if len(line) < MAX_LINE:
                    line.append(byte)
                continue
            text = line.decode("utf-8", "replace").strip()
            line.clear()
            # Real units echo the command before answering it.
            terminal.send([text])
            _delay(device)
            lines, close = run_command(device, text)
            terminal.send(lines, prompt=not close)
            if close:
                return


def serve_session(
    conn: socket.socket,
    *,
    version: str,
    host_key: paramiko.PKey,
    server: SessionServer,
    track: Callable[[paramiko.Transport, bool], bool],
    run: Callable[[paramiko.Channel], None],
) -> None:
    """Serve one accepted SSH connection to the end (runs in its own thread): log in with
    ``server``, ``run`` the session channel, close.

    ``track(transport, True)`` registers the connection so a shutdown can end it (False: the
    host no longer serves, and the connection is dropped); ``track(transport, False)`` forgets it.
    """
    transport = paramiko.Transport(conn)
    transport.set_log_channel(TRANSPORT_LOG)
    # Clients and scanners read this line first; paramiko's own name would give the lab away.
    transport.local_version = version
    if not track(transport, True):
        transport.close()
        return
    try:
        transport.add_server_key(host_key)
        try:
            transport.start_server(server=server)
        except (paramiko.SSHException, EOFError, OSError):
            return
        channel = transport.accept(CHANNEL_TIMEOUT)
        if channel is None or not server.ready.wait(CHANNEL_TIMEOUT):
            return
        try:
            run(channel)
        except (OSError, EOFError, paramiko.SSHException):
            return
        finally:
            # The client may have gone first; closing a dead channel is not an error.
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.close()
        # Let the client close first, so OpenSSH does not report "closed by remote host".
        transport.join(CLOSE_GRACE)
    finally:
        transport.close()
        track(transport, False)


def serve_connection(device: SimDevice, conn: socket.socket) -> None:
    """Serve one accepted SSH connection to the device (runs in its own thread)."""
    assert device.host_key is not None
    server = DeviceSshServer(device)

    def run(channel: paramiko.Channel) -> None:
        if server.command is not None:
            _delay(device)
            lines, _close = run_command(device, server.command)
            _send_lines(device, channel, lines)
            failed = any(line.startswith("error:") for line in lines)
            channel.send_exit_status(1 if failed else 0)
        else:
            _shell(device, channel)
            channel.send_exit_status(0)

    serve_session(
        conn,
        version=f"SSH-2.0-{device.spec.ssh_server_version}",
        host_key=device.host_key,
        server=server,
        track=device.track_ssh_transport,
        run=run,
    )
