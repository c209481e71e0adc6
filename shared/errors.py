"""The polyfleet error tree.

PolyfleetError
├── ConfigError            a config file or flag is wrong (names the file and key)
├── ProtocolError          a wire message does not match the schema (names the field)
└── DeviceError            talking to one device failed (carries host)
    ├── DeviceUnreachable      no TCP/TLS/SSH answer
    ├── CertificateMismatch    TLS certificate or SSH host key differs from the pin
    ├── AuthenticationFailed   the device refused the credentials
    ├── LockedOut              the device locked the account after failures
    ├── NotAPolyDevice         something answered, but not a Poly VideoOS device
    ├── DeviceWedged           repeated 5xx from calls that used to work
    └── DeviceProtocolError    the device answered something we cannot read
"""

from __future__ import annotations

import errno
import socket


class PolyfleetError(Exception):
    """Base of every error polyfleet raises on purpose."""


class ConfigError(PolyfleetError, ValueError):
    """A configuration file or flag is wrong; a ValueError too, as a bad value is one."""


class ProtocolError(PolyfleetError):
    """A wire message does not match the schema."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DeviceError(PolyfleetError):
    """Talking to one device failed."""

    #: The one-line reason shown by ``polyfleet agent probe``.
    reason = "device error"

    def __init__(self, message: str, *, host: str = "") -> None:
        super().__init__(message)
        self.host = host


class DeviceUnreachable(DeviceError):
    reason = "unreachable"


class CertificateMismatch(DeviceError):
    reason = "certificate does not match the pinned fingerprint"

    def __init__(self, message: str, *, host: str = "", seen: str = "", pinned: str = "") -> None:
        super().__init__(message, host=host)
        self.seen = seen
        self.pinned = pinned


class AuthenticationFailed(DeviceError):
    reason = "bad credentials"


class LockedOut(DeviceError):
    reason = "locked out"


class NotAPolyDevice(DeviceError):
    reason = "not a Poly VideoOS device"


class DeviceWedged(DeviceError):
    reason = "device wedged"


class DeviceProtocolError(DeviceError):
    reason = "unexpected answer"


#: errno -> words, for OS errors that carry no text of their own.
_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
    errno.EPIPE: "connection closed while sending",
    errno.ENOSPC: "no space left on the disk",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EDQUOT: "disk quota exceeded",
    errno.EIO: "input/output error",
}


def os_error_words(exc: OSError) -> str:
    """``connection refused``, ``no space left on the disk``...: the OS's words, lower case.

    For messages people read: ``str(exc)`` of an OSError adds ``[Errno 28]`` and the
    path, and some (``TimeoutError()``) say nothing at all.
    """
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, socket.gaierror):
        return "the name does not resolve"
    if exc.errno in _ERRNO_WORDS:
        return _ERRNO_WORDS[exc.errno]
    if exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    if exc.errno:
        return errno.errorcode.get(exc.errno, f"error {exc.errno}").lower()
    return "operating system error"
