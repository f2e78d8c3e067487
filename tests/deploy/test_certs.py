"""deploy.certs: a CA that signs certificates with the right SANs, OpenSSH node keys."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_ssh_private_key,
    load_ssh_public_key,
)

from deploy.certs import TlsBundle, cert_sans, generate, mounted_files


@pytest.fixture
def bundle(tmp_path: Path) -> TlsBundle:
    return generate(2, tmp_path / "certs", tmp_path / "keys", extra_sans=["IP:10.1.2.3"])


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certificates_are_signed_by_the_ca(bundle: TlsBundle) -> None:
    ca = _load(bundle.ca_cert)
    for cert in [bundle.server_cert, *(n.runtime_cert for n in bundle.supernodes)]:
        _load(cert).verify_directly_issued_by(ca)  # raises if not
    other = generate(1, bundle.ca_cert.parent.parent / "o" / "c", bundle.ca_cert.parent / "k")
    with pytest.raises((ValueError, InvalidSignature)):
        _load(bundle.server_cert).verify_directly_issued_by(_load(other.ca_cert))


def test_sans_cover_loopback_service_names_and_extras(bundle: TlsBundle) -> None:
    assert cert_sans(bundle.server_cert) == {
        "DNS:superlink", "DNS:localhost", "IP:127.0.0.1", "IP:::1", "IP:10.1.2.3",
    }  # fmt: skip
    assert cert_sans(bundle.supernodes[1].runtime_cert) == {
        "DNS:supernode-1", "DNS:localhost", "IP:127.0.0.1", "IP:::1",
    }  # fmt: skip


def test_supernode_keys_are_openssh_ecdsa_pairs(bundle: TlsBundle) -> None:
    node = bundle.supernodes[0]
    private = load_ssh_private_key(node.auth_key.read_bytes(), password=None)
    public = load_ssh_public_key(node.auth_pub.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.curve.name == "secp384r1"
    assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
    assert node.auth_key.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    keys = {n.auth_pub.read_bytes() for n in bundle.supernodes}
    assert len(keys) == 2  # one distinct key per SuperNode


def test_private_files_are_owner_only(bundle: TlsBundle) -> None:
    private = [bundle.ca_key, bundle.server_key, bundle.superlink_secret]
    private += [p for n in bundle.supernodes for p in (n.auth_key, n.runtime_key)]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(bundle.ca_cert.stat().st_mode) == 0o644


def test_rerun_keeps_files_and_adding_a_san_reissues_only_the_server(tmp_path: Path) -> None:
    first = generate(1, tmp_path / "c", tmp_path / "k")
    files = [*mounted_files(first), first.ca_key]
    before = {p: p.read_bytes() for p in files}
    again = generate(1, tmp_path / "c", tmp_path / "k")
    assert {p: p.read_bytes() for p in [*mounted_files(again), again.ca_key]} == before
    third = generate(1, tmp_path / "c", tmp_path / "k", extra_sans=["DNS:link.example.org"])
    assert third.server_cert.read_bytes() != before[first.server_cert]
    assert "DNS:link.example.org" in cert_sans(third.server_cert)
    assert third.ca_cert.read_bytes() == before[first.ca_cert]
    assert third.supernodes[0].auth_key.read_bytes() == before[first.supernodes[0].auth_key]


def test_more_supernodes_add_keys_without_touching_existing_ones(tmp_path: Path) -> None:
    one = generate(1, tmp_path / "c", tmp_path / "k")
    key0 = one.supernodes[0].auth_key.read_bytes()
    three = generate(3, tmp_path / "c", tmp_path / "k")
    assert three.supernodes[0].auth_key.read_bytes() == key0
    assert [n.auth_key.name for n in three.supernodes] == [
        "supernode-0",
        "supernode-1",
        "supernode-2",
    ]


@pytest.mark.parametrize("san", ["superlink", "URI:x", "IP:not-an-ip", "DNS:"])
def test_bad_san_is_rejected(tmp_path: Path, san: str) -> None:
    with pytest.raises(ValueError, match="san"):
        generate(1, tmp_path / "c", tmp_path / "k", extra_sans=[san])


def test_zero_supernodes_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--supernodes"):
        generate(0, tmp_path / "c", tmp_path / "k")


def test_a_missing_ca_key_stops_instead_of_replacing_the_chain_of_trust(tmp_path: Path) -> None:
    first = generate(1, tmp_path / "c", tmp_path / "k")
    ca_cert = first.ca_cert.read_bytes()
    first.ca_key.unlink()  # kept off this host, as docs/deployment.md advises
    with pytest.raises(ValueError, match=r"ca.key does not .*--force"):
        generate(1, tmp_path / "c", tmp_path / "k")
    assert first.ca_cert.read_bytes() == ca_cert
    renewed = generate(1, tmp_path / "c", tmp_path / "k", force=True)
    assert renewed.ca_cert.read_bytes() != ca_cert


def test_private_files_are_never_created_readable_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Created 0600, not chmod-ed there after a moment at the umask's 0644."""
    import os

    modes: dict[str, int] = {}
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if str(path).endswith(".tmp"):
            modes[Path(path).name] = mode
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.setattr(os, "open", spy)
    generate(1, tmp_path / "c", tmp_path / "k")
    assert modes["ca.key.tmp"] == modes["server.key.tmp"] == 0o600
    assert modes["ca.crt.tmp"] == 0o644


def test_a_strict_tls_client_accepts_the_server_certificate(bundle: TlsBundle) -> None:
    """``VERIFY_X509_STRICT`` (on by default in Python 3.13's ``create_default_context``,
    as the compose health checks and httpx use it) needs the leaf's Authority Key
    Identifier; over a socket pair, nothing leaves this process."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(bundle.server_cert, bundle.server_key)
    client = ssl.create_default_context(cafile=str(bundle.ca_cert))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    near, far = socket.socketpair()
    with near, far:
        accepted: list[ssl.SSLSocket] = []
        thread = threading.Thread(
            target=lambda: accepted.append(server.wrap_socket(far, server_side=True))
        )
        thread.start()
        with client.wrap_socket(near, server_hostname="localhost") as tls:
            assert tls.version() is not None  # the handshake verified the chain strictly
        thread.join(timeout=10)
        for sock in accepted:
            sock.close()
