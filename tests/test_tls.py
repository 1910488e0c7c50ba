"""Server TLS contexts: a generated pair serves, and no private key is left on disk."""

import ssl
import tempfile
from pathlib import Path

import pytest

from pdserve.tls import self_signed, server_context, trusting


def test_a_generated_pair_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ctx = server_context("")
    assert isinstance(ctx, ssl.SSLContext) and ctx.get_ca_certs() == []
    assert list(tmp_path.iterdir()) == []


def test_cert_path_is_read_from_the_folder(tmp_path: Path) -> None:
    self_signed(tmp_path)
    server_context(str(tmp_path))
    (tmp_path / "tls.key").write_text("not a key")
    with pytest.raises(ssl.SSLError):
        server_context(str(tmp_path))


def test_a_written_key_is_private_and_its_certificate_is_the_only_trust(tmp_path: Path) -> None:
    (tmp_path / "tls.key").write_text("an older, world-readable key")
    (tmp_path / "tls.key").chmod(0o644)
    cert, key = self_signed(tmp_path)
    assert key.stat().st_mode & 0o777 == 0o600
    ctx = trusting(cert)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509"] == 1  # no system CA beside it
