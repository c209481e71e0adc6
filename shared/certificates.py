"""Self-signed TLS certificates for the servers polyfleet runs on a site (EC P-256)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: How long a certificate is valid; it is pinned by fingerprint, not trusted by expiry.
DEFAULT_VALID_DAYS = 3650


@dataclass(frozen=True, kw_only=True)
class SelfSigned:
    """A new certificate and its private key, in the forms they are written and pinned in."""

    cert_pem: bytes
    cert_der: bytes
    key_pem: bytes


def make_self_signed(
    common_name: str, alt_names: list[x509.GeneralName], *, days: int = DEFAULT_VALID_DAYS
) -> SelfSigned:
    """A certificate for ``alt_names`` signed by its own new key (P-256: quick to make, which
    a lab starting a thousand devices needs), valid from a day ago for ``days`` days."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .sign(key, hashes.SHA256())
    )
    return SelfSigned(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        cert_der=cert.public_bytes(serialization.Encoding.DER),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
