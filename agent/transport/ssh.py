"""The VideoOS legacy command line over SSH: paramiko in worker threads, host key pinned."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from polyfleet.agent.transport.failures import ssh_failure_words
from polyfleet.shared.errors import (
    AuthenticationFailed,
    CertificateMismatch,
    DeviceProtocolError,
    DeviceUnreachable,
    NotAPolyDevice,
    os_error_words,
)
from polyfleet.shared.fingerprint import (
    normalise_fingerprint,
    sha256_fingerprint,
    short_fingerprint,
)

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 15.0
PROMPT = "-> "
#: Lines of the VideoOS greeting (the ``whoami`` banner, device document), lower case.
VIDEOOS_GREETING_MARKERS = ("hi, my name is", "serial number:", "software version:")
#: A shell waiting for input at the end of the text: ``admin@host:~$ ``, ``bash-5.2# ``,
#: ``host> ``, ``Router#``; the VideoOS ``-> `` is not one.
_SHELL_PROMPT = re.compile(r"(?:\A|\n|[^\s-])[$#%>] ?\Z")
#: Terminal control sequences (colours, window titles, bracketed paste) around a shell prompt.
_TERMINAL_CONTROL = re.compile(
    r"\x1b(?:\][^\x07\x1b]*(?:\x07|\x1b\\)|\[[0-?]*[ -/]*[@-~]|[@-Z\\-_])"
)
#: How long a shell-like prompt must stay quiet before the host counts as a shell.
SHELL_SETTLE_S = 0.3
#: Most output kept from one command; a runaway device cannot fill memory.
MAX_OUTPUT_BYTES = 1024 * 1024

# paramiko blocks; it gets its own threads so a hung device never starves the
# event loop's default executor (outbox writes use that).
_EXECUTOR = ThreadPoolExecutor(max_workers=16, thread_name_prefix="polyfleet-ssh")


@dataclass
class SshSession:
    """What one SSH visit gave: the login banner, each command's output, the host key seen."""

    host_key_fingerprint: str
    banner: str = ""
    outputs: dict[str, str] = field(default_factory=dict)


def normalise_lines(text: str) -> str:
    """Devices end lines in ``\\r\\r\\n`` or ``\\r\\n``; make them ``\\n``."""
    return text.replace("\r\r\n", "\n").replace("\r\n", "\n").replace("\r", "\n")


class SshClient:
    """Runs legacy-API commands on one device.

    ``pin`` is the host key's ``SHA256:...`` fingerprint; a different key
    raises :class:`CertificateMismatch` before the password is sent. With no
    pin the caller gets the key it saw in :attr:`SshSession.host_key_fingerprint`
    to pin (trust on first use).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        user: str,
        password: str | None,
        pin: str | None,
        key_file: Path | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.host = host
        self.port = port
        self.user = user
        self._password = password
        self._key_file = key_file
        self.pin = normalise_fingerprint(pin) if pin else None
        self.timeout = timeout

    async def run(self, commands: list[str], *, wait_reply: bool = True) -> SshSession:
        """Log in, run ``commands`` one by one at the ``-> `` prompt, log out."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_EXECUTOR, self._run_blocking, commands, wait_reply)

    def _run_blocking(self, commands: list[str], wait_reply: bool) -> SshSession:
        where = f"{self.host}:{self.port} ssh"
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        except OSError as exc:
            raise DeviceUnreachable(f"{where}: {os_error_words(exc)}", host=self.host) from exc
        transport: paramiko.Transport | None = None
        try:
            transport = paramiko.Transport(sock)
            transport.banner_timeout = self.timeout
            transport.auth_timeout = self.timeout
            try:
                transport.start_client(timeout=self.timeout)
            except (paramiko.SSHException, EOFError, OSError) as exc:
                raise NotAPolyDevice(
                    f"{where}: no SSH service ({ssh_failure_words(exc)})", host=self.host
                ) from exc
            key = transport.get_remote_server_key()
            seen = sha256_fingerprint(key.asbytes())
            if self.pin is not None and seen != self.pin:
                raise CertificateMismatch(
                    f"{where}: the device's SSH host key does not match the pinned one "
                    f"(device {short_fingerprint(seen)}, pinned {short_fingerprint(self.pin)})",
                    host=self.host,
                    seen=seen,
                    pinned=self.pin,
                )
            self._authenticate(transport, where)
            session = SshSession(host_key_fingerprint=seen)
            channel = transport.open_session(timeout=self.timeout)
            channel.get_pty(term="vt100", width=200, height=50)
            channel.invoke_shell()
            channel.settimeout(self.timeout)
            reader = _PromptReader(channel, where=where, host=self.host, timeout=self.timeout)
            session.banner = reader.until_prompt(greeting=True)
            for command in commands:
                channel.sendall((command + "\n").encode())
                if not wait_reply:
                    continue
                session.outputs[command] = _strip_echo(reader.until_prompt(), command)
            if wait_reply:
                # Leave the way a person would; dropping the line upsets some units.
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    channel.sendall(b"exit\n")
                    _drain_until_closed(channel, timeout=min(self.timeout, 2.0))
            else:
                # A command without reply (``reboot now``) ends with the unit hanging up:
                # hanging up first could drop the command before the unit has read it.
                with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                    _drain_until_closed(channel, timeout=min(self.timeout, 5.0))
            # The work is done; a unit that already hung up makes closing fail, harmlessly.
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.close()
            return session
        except paramiko.SSHException as exc:
            raise DeviceUnreachable(
                f"{where}: SSH failed ({ssh_failure_words(exc)})", host=self.host
            ) from exc
        except (OSError, EOFError) as exc:
            raise DeviceUnreachable(
                f"{where}: connection lost ({ssh_failure_words(exc)})", host=self.host
            ) from exc
        finally:
            if transport is not None:
                transport.close()
            sock.close()

    def _authenticate(self, transport: paramiko.Transport, where: str) -> None:
        try:
            if self._key_file is not None:
                key = paramiko.PKey.from_path(self._key_file)
                transport.auth_publickey(self.user, key)
                return
            if self._password is None:
                raise AuthenticationFailed(f"{where}: no password configured", host=self.host)
            password = self._password
            try:
                transport.auth_password(self.user, password)
            except paramiko.BadAuthenticationType as exc:
                if "keyboard-interactive" not in exc.allowed_types:
                    raise
                transport.auth_interactive(
                    self.user, lambda _title, _instr, prompts: [password for _ in prompts]
                )
        except paramiko.AuthenticationException as exc:
            raise AuthenticationFailed(
                f"{where}: the device refused the credentials", host=self.host
            ) from exc
        if not transport.is_authenticated():
            raise AuthenticationFailed(
                f"{where}: the device refused the credentials", host=self.host
            )


class _PromptReader:
    """Reads a shell channel until the ``-> `` prompt ends the text seen so far."""

    def __init__(self, channel: paramiko.Channel, *, where: str, host: str, timeout: float) -> None:
        self.channel = channel
        self.where = where
        self.host = host
        self.timeout = timeout
        self.pending = ""

    def until_prompt(self, *, greeting: bool = False) -> str:
        """Text up to the next prompt; ``greeting``: the first, where other hosts show themselves.

        After login a VideoOS unit greets (maybe late) with its banner and ``-> ``. A
        host that instead settles at a shell prompt (``admin@host:~$ ``), or says
        something else and never shows ``-> ``, is not a VideoOS unit: it says so
        at once rather than the "no prompt" of a unit that stays silent.
        """
        deadline = time.monotonic() + self.timeout
        while True:
            text = normalise_lines(self.pending)
            if text.endswith(PROMPT) or text.endswith(PROMPT.rstrip()):
                self.pending = ""
                body = text[: text.rfind(PROMPT.rstrip())]
                return body
            if len(self.pending) > MAX_OUTPUT_BYTES:
                raise DeviceProtocolError(f"{self.where}: output too long", host=self.host)
            plain = _TERMINAL_CONTROL.sub("", text) if greeting else ""
            foreign = greeting and plain.strip() != "" and not _looks_like_videoos(plain)
            if foreign and _SHELL_PROMPT.search(plain) and not self._more_within(SHELL_SETTLE_S):
                raise NotAPolyDevice(
                    f"{self.where}: a shell prompt ({_last_line(plain)!r}), "
                    "not the VideoOS command line",
                    host=self.host,
                )
            if time.monotonic() > deadline:
                raise self._no_prompt(plain, foreign)
            try:
                data = self.channel.recv(65536)
            except TimeoutError as exc:
                raise self._no_prompt(plain, foreign) from exc
            if not data:
                if foreign:
                    raise NotAPolyDevice(
                        f"{self.where}: closed after {_last_line(plain)!r}, no VideoOS prompt",
                        host=self.host,
                    )
                raise DeviceUnreachable(
                    f"{self.where}: the device closed the session", host=self.host
                )
            # A \r\r\n can be split across reads; normalise only whole texts.
            self.pending += data.decode("utf-8", errors="replace")

    def _more_within(self, seconds: float) -> bool:
        """Whether more output arrives within ``seconds`` (kept in ``pending``)."""
        self.channel.settimeout(seconds)
        try:
            data = self.channel.recv(65536)
        except TimeoutError:
            return False
        finally:
            self.channel.settimeout(self.timeout)
        if data:
            self.pending += data.decode("utf-8", errors="replace")
            return True
        return False

    def _no_prompt(self, text: str, foreign: bool) -> DeviceUnreachable | NotAPolyDevice:
        if foreign:
            # Something answered, in words that are not a VideoOS greeting.
            return NotAPolyDevice(
                f"{self.where}: no VideoOS prompt within {self.timeout:g}s "
                f"(last said {_last_line(text)!r})",
                host=self.host,
            )
        return DeviceUnreachable(
            f"{self.where}: no prompt within {self.timeout:g}s", host=self.host
        )


def _looks_like_videoos(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in VIDEOOS_GREETING_MARKERS)


def _last_line(text: str) -> str:
    lines = [line for line in text.split("\n") if line.strip()]
    return lines[-1].strip()[:80] if lines else ""


def _drain_until_closed(channel: paramiko.Channel, *, timeout: float) -> None:
    """Let the device close its side first, so neither end writes into a dead connection."""
    deadline = time.monotonic() + timeout
    channel.settimeout(timeout)
    while time.monotonic() < deadline:
        try:
            if not channel.recv(4096):
                return
        except TimeoutError:
            return


def _strip_echo(text: str, command: str) -> str:
    lines = text.split("\n")
    while lines and lines[0].strip() == "":
        lines.pop(0)
    if lines and lines[0].strip().endswith(command.strip()):
        lines.pop(0)
    return "\n".join(line.rstrip() for line in lines).strip("\n")
