"""Per-device TLS certificates and SSH host keys, made once and kept under the lab's data dir."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import paramiko
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from polyfleet.shared.certificates import make_self_signed
from polyfleet.shared.durable import write_atomically
from polyfleet.shared.fingerprint import sha256_fingerprint

CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"
SSH_KEY_FILE = "ssh-host-key"
CERT_DAYS = 3650


@dataclass(frozen=True)
class TlsIdentity:
    """A device certificate: files on disk and the fingerprint clients pin (over the DER)."""

    cert_path: Path
    key_path: Path
    fingerprint: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        return context


def _write_private(path: Path, data: bytes) -> None:
    """Write a key file readable only by us, atomically (no half-written key after a crash)."""
    # Whole or absent, but not forced to disk: a simulated device's keys are not worth the
    # fsyncs, which would cost a 1,000-device lab seconds at its start.
    write_atomically(path, data, sync=False)


def make_tls_identity(directory: Path, common_name: str, address: str) -> TlsIdentity:
    """Create a new self-signed EC P-256 certificate (P-256 keeps a 1,000-device start fast)."""
    directory.mkdir(parents=True, exist_ok=True)
    made = make_self_signed(
        common_name, [x509.IPAddress(ipaddress.ip_address(address))], days=CERT_DAYS
    )
    _write_private(directory / KEY_FILE, made.key_pem)
    _write_private(directory / CERT_FILE, made.cert_pem)
    return TlsIdentity(
        directory / CERT_FILE,
        directory / KEY_FILE,
        sha256_fingerprint(made.cert_der),
    )


def load_or_make_tls_identity(directory: Path, common_name: str, address: str) -> TlsIdentity:
    """The persisted certificate, or a new one when there is none yet."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        der = cert.public_bytes(serialization.Encoding.DER)
        return TlsIdentity(cert_path, key_path, sha256_fingerprint(der))
    return make_tls_identity(directory, common_name, address)


def load_or_make_host_key(directory: Path, key_type: str) -> paramiko.PKey:
    """The persisted SSH host key of ``key_type`` (ed25519 or rsa), made on first use."""
    path = directory / f"{SSH_KEY_FILE}-{key_type}"
    if not path.exists():
        return make_host_key(directory, key_type)
    if key_type == "rsa":
        return paramiko.RSAKey.from_private_key_file(str(path))
    return paramiko.Ed25519Key.from_private_key_file(str(path))


def make_host_key(directory: Path, key_type: str) -> paramiko.PKey:
    """A new SSH host key of ``key_type``, replacing the persisted one (a factory reset)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{SSH_KEY_FILE}-{key_type}"
    private: ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if key_type == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    _write_private(path, pem)
    if key_type == "rsa":
        return paramiko.RSAKey.from_private_key_file(str(path))
    return paramiko.Ed25519Key.from_private_key_file(str(path))


def host_key_fingerprint(key: paramiko.PKey) -> str:
    """``SHA256:...`` over the public key blob, as ``ssh-keygen -l`` prints it."""
    return sha256_fingerprint(key.asbytes())
