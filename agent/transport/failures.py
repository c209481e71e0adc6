"""Library failures (aiohttp, TLS, sockets, paramiko) told in words, never as object text.

A library's own ``str(exc)`` may carry what it was called with: aiohttp prints the
``ssl=`` argument (``ssl:<aiohttp.client_reqrep.Fingerprint object at 0x...>``),
``EOFError()`` prints nothing at all. What reaches a log, a report or a ticket is
built from these phrases instead.
"""

from __future__ import annotations

import ssl

import aiohttp
import paramiko

from polyfleet.shared.errors import os_error_words


def tls_error_words(exc: ssl.SSLError) -> str:
    """``TLS handshake failed (wrong version number)``: OpenSSL's reason in words."""
    reason = (exc.reason or "").replace("_", " ").lower()
    return f"TLS handshake failed ({reason})" if reason else "TLS handshake failed"


def http_failure_words(exc: BaseException) -> str:
    """Why an HTTP request got no usable answer, in words (for aiohttp, TLS and OS errors)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "TLS certificate refused"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return "TLS handshake failed"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({os_error_words(exc.os_error)})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection closed before an answer"
    if isinstance(exc, aiohttp.ServerTimeoutError | aiohttp.ConnectionTimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the answer was cut off"
    if isinstance(exc, aiohttp.ClientResponseError):
        return "malformed HTTP answer"
    if isinstance(exc, aiohttp.InvalidURL):
        return "not a valid URL"
    if isinstance(exc, ssl.SSLError):
        return tls_error_words(exc)
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError):
        return os_error_words(exc)
    return "connection failed"


def ssh_failure_words(exc: BaseException) -> str:
    """Why an SSH session broke off, in words (paramiko, socket and EOF errors)."""
    if isinstance(exc, EOFError):
        return "the device closed the connection"
    if isinstance(exc, OSError):
        return os_error_words(exc)
    if isinstance(exc, paramiko.SSHException):
        # paramiko's messages are sentences; some exceptions carry codes or lists instead.
        parts = [a for a in exc.args if isinstance(a, str) and a.strip()]
        if parts and len(parts) == len(exc.args):
            text = "; ".join(p.strip() for p in parts)
            return text[:1].lower() + text[1:200]
        return "SSH protocol error"
    return "SSH failed"
