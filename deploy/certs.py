"""Generate the deployment's TLS material, SuperExec secrets and SuperNode keys.

Writes into ignored folders (``deploy/certs/``, ``deploy/keys/`` by default):

``deploy/certs/``
    ``ca.crt``/``ca.key``: a self-signed CA, the root of trust every SuperNode, SuperExec
    and the ``flwr`` CLI pass as root certificate (``ca.key`` never leaves this folder);
    ``server.pem``/``server.key``: the SuperLink certificate, SANs ``localhost``,
    ``superlink``, ``127.0.0.1``, ``::1`` (the SuperLink dials its own Runtime API on
    loopback) plus every ``--san``; ``superlink-superexec.secret``: the shared secret of
    the SuperLink and its ServerApp SuperExec; per SuperNode ``i``:
    ``supernode-<i>.pem``/``.key`` (its Runtime API certificate, SANs ``supernode-<i>``,
    ``localhost``, loopback) and ``supernode-<i>-superexec.secret``. SuperNode hosts never
    receive the SuperLink's key or secret.
``deploy/keys/``
    ``supernode-<i>``/``supernode-<i>.pub``: ECDSA P-384 authentication keys in OpenSSH
    format; register the ``.pub`` with ``flwr supernode register`` before the node starts.

Existing files are kept (safe to re-run while a deployment uses them) unless ``--force``;
a certificate lacking a requested SAN is re-issued.

Usage::

    python -m deploy.certs [--supernodes 3] [--san DNS:link.example.org --san IP:10.0.0.5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEPLOY_DIR = Path(__file__).resolve().parent
DEFAULT_CERTS_DIR = DEPLOY_DIR / "certs"
DEFAULT_KEYS_DIR = DEPLOY_DIR / "keys"
DEFAULT_SUPERNODES = 3
VALIDITY_DAYS = 365
LOOPBACK_SANS = ("DNS:localhost", "IP:127.0.0.1", "IP:::1")
EcKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class SuperNodeFiles:
    """One SuperNode's material (absolute paths)."""

    auth_key: Path  # OpenSSH private key (--auth-supernode-private-key)
    auth_pub: Path  # OpenSSH public key (flwr supernode register)
    runtime_cert: Path  # Runtime API certificate (--ssl-certfile)
    runtime_key: Path  # Runtime API key (--ssl-keyfile)
    superexec_secret: Path  # --superexec-auth-secret-file of the node and its SuperExec


@dataclass(frozen=True)
class TlsBundle:
    """Everything :func:`generate` wrote (absolute paths)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    superlink_secret: Path
    supernodes: list[SuperNodeFiles]


def supernode_name(index: int) -> str:
    """Compose service name and file stem of SuperNode ``index``: ``supernode-<index>``."""
    return f"supernode-{index}"


def _parse_san(entry: str) -> x509.GeneralName:
    kind, sep, value = entry.partition(":")
    if not sep or not value:
        raise ValueError(f"--san {entry!r}: expected DNS:<name> or IP:<address>")
    if kind.upper() == "DNS":
        return x509.DNSName(value)
    if kind.upper() == "IP":
        try:
            return x509.IPAddress(ipaddress.ip_address(value))
        except ValueError as err:
            raise ValueError(f"--san {entry!r}: {err}") from err
    raise ValueError(f"--san {entry!r}: kind must be DNS or IP, got {kind!r}")


def _normalise_san(entry: str) -> str:
    name = _parse_san(entry)
    return f"IP:{name.value}" if isinstance(name, x509.IPAddress) else f"DNS:{name.value}"


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write atomically; a private file is created 0600, never readable by others even
    for the moment between create and chmod."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.chmod(0o600 if private else 0o644)  # the umask may have narrowed 0644
    os.replace(tmp, path)


def _key_pem(key: EcKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _builder(subject: str, issuer: x509.Name, key: EcKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedEquity"),
            x509.NameAttribute(NameOID.COMMON_NAME, subject),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer if len(issuer) else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
    )


def make_ca() -> tuple[EcKey, x509.Certificate]:
    """A self-signed CA key and certificate (may sign leaf certificates only)."""
    key = ec.generate_private_key(ec.SECP384R1())
    usage = x509.KeyUsage(
        digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    builder = (
        _builder("FedEquity CA", x509.Name([]), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    return key, builder.sign(key, hashes.SHA256())


def make_leaf_cert(
    ca_key: EcKey, ca_cert: x509.Certificate, common_name: str, sans: Sequence[str]
) -> tuple[EcKey, x509.Certificate]:
    """A TLS server key and CA-signed certificate valid for ``sans``, with the extensions
    strict verification requires (Python 3.13's default context: ``VERIFY_X509_STRICT``)."""
    key = ec.generate_private_key(ec.SECP384R1())
    usage = x509.KeyUsage(
        digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
        key_encipherment=False, data_encipherment=False, key_agreement=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    issuer = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    builder = (
        _builder(common_name, ca_cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectAlternativeName([_parse_san(s) for s in sans]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(issuer, False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    return key, builder.sign(ca_key, hashes.SHA256())


def make_auth_keypair(private_path: Path) -> Path:
    """Write an ECDSA P-384 key pair in OpenSSH format; return the ``.pub`` path."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    public_path = private_path.with_name(private_path.name + ".pub")
    _write(private_path, private, private=True)
    _write(public_path, public + f" {private_path.name}\n".encode(), private=False)
    return public_path


def cert_sans(cert_path: Path) -> set[str]:
    """The SANs of a PEM certificate as ``DNS:x`` / ``IP:y`` strings."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = {f"DNS:{n}" for n in ext.get_values_for_type(x509.DNSName)}
    return dns | {f"IP:{ip}" for ip in ext.get_values_for_type(x509.IPAddress)}


class _Issuer:
    """Issues certificates and secrets into ``certs_dir``, keeping what is already valid."""

    def __init__(self, certs_dir: Path, force: bool) -> None:
        self.dir, self.force = certs_dir, force
        self.ca_cert, self.ca_key = certs_dir / "ca.crt", certs_dir / "ca.key"
        if self.ca_cert.exists() and not self.ca_key.exists() and not force:
            raise ValueError(
                f"{self.ca_cert} exists but {self.ca_key} does not (kept off this host?): "
                "issuing would replace the CA every SuperNode trusts; restore ca.key, or "
                "pass --force to start a new chain of trust"
            )
        self.renew = force or not self.ca_cert.exists()
        if self.renew:
            key, cert = make_ca()
            _write(self.ca_key, _key_pem(key), private=True)
            _write(self.ca_cert, _cert_pem(cert), private=False)

    def leaf(self, stem: str, common_name: str, sans: Sequence[str]) -> tuple[Path, Path]:
        cert_path, key_path = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        wanted = {_normalise_san(s) for s in sans}
        current = not self.renew and cert_path.exists() and key_path.exists()
        if current and wanted <= cert_sans(cert_path):
            return cert_path, key_path
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), None)
        if not isinstance(ca_key, EcKey):
            raise ValueError(f"{self.ca_key}: expected an EC private key")
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key, cert = make_leaf_cert(ca_key, ca_cert, common_name, sorted(wanted))
        _write(key_path, _key_pem(key), private=True)
        _write(cert_path, _cert_pem(cert), private=False)
        return cert_path, key_path

    def secret(self, name: str) -> Path:
        path = self.dir / name
        if self.force or not path.exists():
            _write(path, secrets.token_hex(32).encode(), private=True)
        return path


def generate(
    num_supernodes: int = DEFAULT_SUPERNODES,
    certs_dir: Path = DEFAULT_CERTS_DIR,
    keys_dir: Path = DEFAULT_KEYS_DIR,
    extra_sans: Sequence[str] = (),
    force: bool = False,
) -> TlsBundle:
    """Create (or complete) the CA, certificates, secrets and SuperNode key pairs."""
    if num_supernodes < 1:
        raise ValueError(f"--supernodes must be >= 1, got {num_supernodes}")
    for san in extra_sans:
        _parse_san(san)
    issuer = _Issuer(certs_dir.resolve(), force)
    server_cert, server_key = issuer.leaf(
        "server", "superlink", ["DNS:superlink", *LOOPBACK_SANS, *extra_sans]
    )
    nodes: list[SuperNodeFiles] = []
    for i in range(num_supernodes):
        name = supernode_name(i)
        cert, key = issuer.leaf(name, name, [f"DNS:{name}", *LOOPBACK_SANS])
        auth_key = keys_dir.resolve() / name
        auth_pub = auth_key.with_name(f"{name}.pub")
        if force or not (auth_key.exists() and auth_pub.exists()):
            make_auth_keypair(auth_key)
        secret = issuer.secret(f"{name}-superexec.secret")
        nodes.append(SuperNodeFiles(auth_key, auth_pub, cert, key, secret))
    return TlsBundle(
        ca_cert=issuer.ca_cert,
        ca_key=issuer.ca_key,
        server_cert=server_cert,
        server_key=server_key,
        superlink_secret=issuer.secret("superlink-superexec.secret"),
        supernodes=nodes,
    )


def mounted_files(bundle: TlsBundle) -> list[Path]:
    """Files the containers read (everything but the CA key)."""
    paths = [bundle.ca_cert, bundle.server_cert, bundle.server_key, bundle.superlink_secret]
    for node in bundle.supernodes:
        paths += [node.auth_key, node.auth_pub, node.runtime_cert, node.runtime_key]
        paths.append(node.superexec_secret)
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point (``python -m deploy.certs``)."""
    parser = argparse.ArgumentParser(prog="python -m deploy.certs", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--supernodes", type=int, default=DEFAULT_SUPERNODES)
    parser.add_argument("--san", action="append", default=[], help="DNS:name or IP:addr")
    parser.add_argument("--certs-dir", type=Path, default=DEFAULT_CERTS_DIR)
    parser.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR)
    parser.add_argument("--force", action="store_true", help="re-create everything")
    parser.add_argument(
        "--owner",
        help="chown mounted files to UID[:GID]; Flower's images run as 49999:49999 (needs root)",
    )
    args = parser.parse_args(argv)
    try:
        bundle = generate(args.supernodes, args.certs_dir, args.keys_dir, args.san, args.force)
    except ValueError as err:
        parser.error(str(err))
    if args.owner:
        uid, _, gid = args.owner.partition(":")
        for path in mounted_files(bundle):
            os.chown(path, int(uid), int(gid or uid))
    print(f"CA: {bundle.ca_cert}")
    print(f"SuperLink certificate SANs: {', '.join(sorted(cert_sans(bundle.server_cert)))}")
    for node in bundle.supernodes:
        print(f"SuperNode key: {node.auth_key} (register {node.auth_pub.name})")


if __name__ == "__main__":
    main()
