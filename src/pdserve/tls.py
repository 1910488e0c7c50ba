"""TLS: self-signed certificates (sidecar, rendered Secrets, the operator's webhooks) and
client contexts."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

LOOPBACK = ("localhost", "127.0.0.1")
# A certificate folder's files, as Kubernetes TLS Secrets and the sidecar's --cert-path name
# them.
CERT_FILE, KEY_FILE = "tls.crt", "tls.key"


def self_signed_pem(names: Sequence[str] = LOOPBACK) -> tuple[str, str]:
    """A fresh EC P-256 certificate for `names` (DNS names, or IP addresses written as
    such) and its key, PEM-encoded; the certificate is its own CA bundle."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pdserve")])
    now = datetime.datetime.now(datetime.UTC)
    san = x509.SubjectAlternativeName([_general_name(n) for n in names])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), pem_key.decode()


def _general_name(name: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """Write a self-signed pair as tls.crt / tls.key (the layout llm-d's --cert-path expects)."""
    return _write_pair(directory, *self_signed_pem())


def _write_pair(directory: Path, cert: str, key: str) -> tuple[Path, Path]:
    """The key is created 0600: a key readable by others is no secret."""
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    cert_path.write_text(cert)
    key_path.unlink(missing_ok=True)  # O_CREAT keeps an existing file's mode
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key)
    return cert_path, key_path


def server_context(cert_dir: str) -> ssl.SSLContext:
    """From --cert-path (a folder with tls.crt and tls.key), or a fresh self-signed pair.

    ssl loads a key only from a file, so a generated pair is written to a private temporary
    folder and removed once loaded: no key is left behind on disk.
    """
    if cert_dir:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(Path(cert_dir) / CERT_FILE, Path(cert_dir) / KEY_FILE)
        return ctx
    return pem_context(*self_signed_pem())


def pem_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context from a PEM certificate and key held in memory (see server_context)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load_pem(ctx, cert, key)
    return ctx


def load_pem(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    """Load a PEM pair held in memory into `ctx`, in place: a listening server's next
    handshakes present it (connections already made keep theirs)."""
    with tempfile.TemporaryDirectory(prefix="pdserve-tls-") as tmp:
        ctx.load_cert_chain(*_write_pair(Path(tmp), cert, key))


def client_context(insecure_skip_verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def trusting(ca_file: Path) -> ssl.SSLContext:
    """A verifying client context whose only trust is `ca_file`: a run's own certificate
    (it is its own CA), so nothing but that run's servers pass."""
    return ssl.create_default_context(cafile=str(ca_file))
