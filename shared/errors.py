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


class PolyfleetError(Exception):
    """Base of every error polyfleet raises on purpose."""


class ConfigError(PolyfleetError):
    """A configuration file or flag is wrong."""


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
