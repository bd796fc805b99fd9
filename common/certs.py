"""A small federation PKI for mutual TLS: one CA, a server certificate, and one client
certificate per node and per operator.

Identity binding: a node's client certificate has subject CN = its node id, the hash of its
Ed25519 identity key (`identity.node_id_for`). The server checks that the CN of the TLS peer
equals the node id of the signed Join, so a stolen TLS key alone cannot join as another node
and a stolen node key alone cannot open a channel.

Operators (the Admin API) get CN ``operator:<name>`` and OU ``operators``; nodes get OU
``nodes``. A node id is 32 lowercase hex characters and can never start with ``operator:``,
so the CN alone tells the roles apart (`role_of`). That matters because gRPC's auth context
exposes the peer's CN but not its OU. Every leaf also carries a URI SAN
(``urn:forsaken:node:<id>`` / ``urn:forsaken:operator:<name>``) because modern verifiers
require a SAN on every leaf.

TLS keys are ECDSA P-256: supported by every TLS stack gRPC links, small and fast. Private
keys are written with mode 0600, every file atomically.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from forsaken.common.errors import ConfigError
from forsaken.common.fsutil import atomic_write
from forsaken.common.identity import KEY_FILE as NODE_KEY_FILE
from forsaken.common.identity import NodeIdentity, node_id_for

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"

OPERATOR_CN_PREFIX = "operator:"
SERVER_CN_PREFIX = "server:"
DEFAULT_CA_NAME = "forsaken federation CA"
DEFAULT_DAYS = 365
DEFAULT_CA_DAYS = 3650
# Containers' clocks drift a little; a certificate valid only from "now" fails on a peer
# whose clock is a few seconds behind.
_BACKDATE = timedelta(minutes=5)
# A kept certificate must outlive this, else re-running `init` renews it.
_RENEW_BEFORE = timedelta(days=7)
_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
_ORG = "forsaken"
_NODE_ID_RE = re.compile(r"[0-9a-f]{32}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_RE = re.compile(rf"(?=.{{1,253}}$){_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?")


class Role(StrEnum):
    CA = "ca"
    SERVER = "server"
    NODE = "node"
    OPERATOR = "operator"


class Credential(NamedTuple):
    """A private key and its certificate; unpacks as ``key, cert``."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True, slots=True)
class Entry:
    """One credential of a layout: where it lives and whether this run wrote it."""

    role: Role
    name: str
    common_name: str
    directory: Path
    not_after: datetime
    written: bool


@dataclass(frozen=True, slots=True)
class Layout:
    """What `init_federation` produced under `root`."""

    root: Path
    entries: tuple[Entry, ...]

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT_FILE

    @property
    def server_dir(self) -> Path:
        return self.root / "server"

    def client_dir(self, index: int) -> Path:
        return self.root / "clients" / f"client-{index}"

    def operator_dir(self, name: str) -> Path:
        return self.root / "operators" / name

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(e.common_name for e in self.entries if e.role is Role.NODE)


def role_of(common_name: str | None) -> Role | None:
    """Which kind of federation peer a client certificate's CN names; None if neither."""
    if common_name is None:
        return None
    if _NODE_ID_RE.fullmatch(common_name):
        return Role.NODE
    if common_name.startswith(SERVER_CN_PREFIX):
        return Role.SERVER
    name = common_name.removeprefix(OPERATOR_CN_PREFIX)
    if name != common_name and _NAME_RE.fullmatch(name):
        return Role.OPERATOR
    return None


def create_ca(
    common_name: str = DEFAULT_CA_NAME, days: int = DEFAULT_CA_DAYS, *, now: datetime | None = None
) -> Credential:
    """A self-signed CA that may sign leaves only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name, "ca")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _builder(name, name, key.public_key(), days, now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return Credential(key, builder.sign(key, hashes.SHA256()))


def issue_server_cert(
    ca: Credential,
    hosts: Sequence[str],
    days: int = DEFAULT_DAYS,
    *,
    include_loopback: bool = True,
    now: datetime | None = None,
) -> Credential:
    """A server certificate whose SANs are `hosts` (DNS names and IP addresses).

    gRPC checks the name the client dialled against these SANs. Loopback names are added by
    default so a container can probe its own health on 127.0.0.1; the certificate also
    allows client auth for the same reason (the probe presents it under mutual TLS). Its CN
    is ``server:<first host>``, so `role_of` never mistakes it for a node or an operator.
    """
    names = _unique([*hosts, *(_LOOPBACK_HOSTS if include_loopback else ())])
    if not names:
        raise ConfigError("a server certificate needs at least one host name or IP address")
    sans = x509.SubjectAlternativeName([_general_name(h) for h in names])
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue_leaf(ca, _name(_server_cn(names[0]), "server"), sans, usage, days, now)


def issue_client_cert(
    ca: Credential,
    node: bytes | str | Ed25519PublicKey,
    days: int = DEFAULT_DAYS,
    *,
    now: datetime | None = None,
) -> Credential:
    """A client certificate whose CN is the node id of `node` (a raw 32-byte Ed25519 public
    key, an Ed25519PublicKey, or a node id already computed)."""
    node_id = _node_id(node)
    return _issue_client(ca, node_id, "nodes", f"urn:forsaken:node:{node_id}", days, now)


def issue_operator_cert(
    ca: Credential, name: str, days: int = DEFAULT_DAYS, *, now: datetime | None = None
) -> Credential:
    """A client certificate for the Admin API: CN ``operator:<name>``, OU ``operators``."""
    _check_name(name, "operator name")
    cn, urn = OPERATOR_CN_PREFIX + name, f"urn:forsaken:operator:{name}"
    return _issue_client(ca, cn, "operators", urn, days, now)


def common_name_of(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def check_key_pair(cert_pem: bytes, key_pem: bytes, where: str) -> x509.Certificate:
    """Parse a PEM certificate and key; ConfigError (naming `where`) unless they match."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(f"{where}: certificate is not a PEM X.509 certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{where}: key is not an unencrypted PEM private key") from None
    if _spki(key.public_key()) != _spki(cert.public_key()):
        raise ConfigError(f"{where}: the private key does not belong to the certificate")
    return cert


def write_credential(directory: Path, cred: Credential, ca_cert: x509.Certificate) -> None:
    """Write cert.pem, key.pem (0600) and ca.pem, so each directory is a complete TLS set."""
    directory = Path(directory)
    atomic_write(directory / KEY_FILE, cred.key_pem(), mode=0o600)
    atomic_write(directory / CERT_FILE, cred.cert_pem())
    atomic_write(directory / CA_CERT_FILE, ca_cert.public_bytes(serialization.Encoding.PEM))


def load_ca(ca_dir: Path) -> Credential:
    """Read ``ca.pem`` and ``ca.key`` from `ca_dir`; ConfigError naming what is wrong."""
    cert_path, key_path = Path(ca_dir) / CA_CERT_FILE, Path(ca_dir) / CA_KEY_FILE
    cert_pem, key_pem = _read(cert_path), _read(key_path)
    cert = check_key_pair(cert_pem, key_pem, str(ca_dir))
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{key_path}: expected an ECDSA key")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ConfigError(f"{cert_path} is not a CA certificate")
    return Credential(key, cert)


def init_federation(
    out_dir: Path,
    server_hosts: Sequence[str],
    clients: int,
    operators: Iterable[str] = ("admin",),
    *,
    days: int = DEFAULT_DAYS,
    ca_days: int = DEFAULT_CA_DAYS,
    force: bool = False,
    now: datetime | None = None,
) -> Layout:
    """Create (or complete) a federation's certificates under `out_dir`::

        ca.pem, ca.key                      the CA (key 0600)
        server/{cert,key,ca}.pem            the server's TLS set
        clients/client-<i>/                 a client daemon's --state-dir: node_key.ed25519,
                                            {cert,key,ca}.pem with CN = that node's id
        operators/<name>/{cert,key,ca}.pem  Admin API credentials

    Re-running is safe: an existing CA is reused, never replaced, unless `force`; existing
    node keys are always kept (they are the nodes' identities, not part of the PKI); a leaf
    certificate is kept while it still matches the CA, its names and the node key, and has
    more than a week left. `force` makes a new CA and reissues every certificate.
    """
    root = Path(out_dir)
    _check_days(days)
    _check_days(ca_days)
    if clients < 0:
        raise ConfigError(f"clients must be >= 0, got {clients}")
    operators = tuple(operators)
    for op in operators:
        _check_name(op, "operator name")
    now = now or datetime.now(UTC)
    ca, ca_written = _load_or_create_ca(root, ca_days, force, now)
    paths = Layout(root, ())  # only for its path helpers
    run = _Run(ca, force, now)
    hosts = _unique([*server_hosts, *_LOOPBACK_HOSTS])
    entries = [
        _entry(Role.CA, "ca", root, ca.cert, ca_written),
        run.leaf(
            Role.SERVER,
            "server",
            paths.server_dir,
            _server_cn(hosts[0]),
            partial(issue_server_cert, ca, server_hosts, days, now=now),
            sans=frozenset(_general_name(h) for h in hosts),
        ),
    ]
    for i in range(clients):
        node_id = NodeIdentity.load_or_create(paths.client_dir(i)).node_id
        issue = partial(issue_client_cert, ca, node_id, days, now=now)
        entries.append(run.leaf(Role.NODE, f"client-{i}", paths.client_dir(i), node_id, issue))
    for op in operators:
        issue = partial(issue_operator_cert, ca, op, days, now=now)
        cn = OPERATOR_CN_PREFIX + op
        entries.append(run.leaf(Role.OPERATOR, op, paths.operator_dir(op), cn, issue))
    return Layout(root, tuple(entries))


def issue_for_node(
    ca_dir: Path, state_dir: Path, days: int = DEFAULT_DAYS, *, now: datetime | None = None
) -> Entry:
    """Issue a client certificate for an existing client state directory.

    Reads the node key the daemon created there (it must exist: a typo in the path must not
    mint a new identity) and writes cert.pem, key.pem and ca.pem next to it.
    """
    _check_days(days)
    key_path = Path(state_dir) / NODE_KEY_FILE
    if not key_path.is_file():
        raise ConfigError(
            f"{key_path} does not exist: start the client once with --state-dir {state_dir} "
            "or create the directory with `forsaken certs init`"
        )
    ca = load_ca(Path(ca_dir))
    identity = NodeIdentity.load_or_create(Path(state_dir))
    cred = issue_client_cert(ca, identity.public_key, days, now=now)
    write_credential(Path(state_dir), cred, ca.cert)
    return _entry(Role.NODE, Path(state_dir).name, Path(state_dir), cred.cert, True)


# --- internals -------------------------------------------------------------------------------


def _load_or_create_ca(
    root: Path, days: int, force: bool, now: datetime
) -> tuple[Credential, bool]:
    cert_path, key_path = root / CA_CERT_FILE, root / CA_KEY_FILE
    present = [p for p in (cert_path, key_path) if p.exists()]
    if present and not force:
        if len(present) == 1:
            missing = key_path if present[0] == cert_path else cert_path
            raise ConfigError(
                f"{present[0]} exists but {missing} does not exist; refusing to replace a partial "
                "CA (use --force to create a new one)"
            )
        return load_ca(root), False
    ca = create_ca(DEFAULT_CA_NAME, days, now=now)
    atomic_write(key_path, ca.key_pem(), mode=0o600)
    atomic_write(cert_path, ca.cert_pem())
    return ca, True


@dataclass(frozen=True, slots=True)
class _Run:
    """One `init_federation` pass: decides per leaf whether to keep or reissue it."""

    ca: Credential
    force: bool
    now: datetime

    def leaf(
        self,
        role: Role,
        name: str,
        directory: Path,
        common_name: str,
        issue: Callable[[], Credential],
        sans: frozenset[x509.GeneralName] = frozenset(),
    ) -> Entry:
        kept = None if self.force else _reusable(directory, self.ca, self.now)
        if kept is not None and common_name_of(kept) == common_name and sans <= set(_sans(kept)):
            return _entry(role, name, directory, kept, False)
        cred = issue()
        write_credential(directory, cred, self.ca.cert)
        return _entry(role, name, directory, cred.cert, True)


def _reusable(directory: Path, ca: Credential, now: datetime) -> x509.Certificate | None:
    """The certificate in `directory` if it is a sound set signed by `ca`, else None."""
    try:
        cert_pem = (directory / CERT_FILE).read_bytes()
        key_pem = (directory / KEY_FILE).read_bytes()
        ca_pem = (directory / CA_CERT_FILE).read_bytes()
    except OSError:
        return None
    try:
        cert = check_key_pair(cert_pem, key_pem, str(directory))
        cert.verify_directly_issued_by(ca.cert)
    except (ConfigError, ValueError, TypeError, InvalidSignature):  # any defect: reissue
        return None
    if ca_pem != ca.cert_pem() or cert.not_valid_after_utc - now < _RENEW_BEFORE:
        return None
    return cert


def _issue_leaf(
    ca: Credential,
    subject: x509.Name,
    sans: x509.SubjectAlternativeName,
    usages: list[x509.ObjectIdentifier],
    days: int,
    now: datetime | None,
) -> Credential:
    _check_days(days)
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        _builder(subject, ca.cert.subject, key.public_key(), days, now)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(sans, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    return Credential(key, builder.sign(ca.key, hashes.SHA256()))


def _issue_client(
    ca: Credential, common_name: str, unit: str, urn: str, days: int, now: datetime | None
) -> Credential:
    sans = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(urn)])
    usage = [ExtendedKeyUsageOID.CLIENT_AUTH]
    return _issue_leaf(ca, _name(common_name, unit), sans, usage, days, now)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    days: int,
    now: datetime | None,
) -> x509.CertificateBuilder:
    start = (now or datetime.now(UTC)) - _BACKDATE
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + _BACKDATE + timedelta(days=days))
    )


def _server_cn(host: str) -> str:
    # X.509 caps a CN at 64 characters; verifiers match SANs, so the CN is only a label.
    return (SERVER_CN_PREFIX + host)[:64]


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str, unit: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORG),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _DNS_RE.fullmatch(host):
        raise ConfigError(f"{host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host.lower().rstrip("."))


def _sans(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _node_id(node: bytes | str | Ed25519PublicKey) -> str:
    if isinstance(node, Ed25519PublicKey):
        node = node.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(node, bytes):
        if len(node) != 32:
            raise ConfigError(f"an Ed25519 public key is 32 bytes, got {len(node)}")
        return node_id_for(node)
    if not _NODE_ID_RE.fullmatch(node):
        raise ConfigError(f"{node!r} is not a node id (32 lowercase hex characters)")
    return node


def _entry(role: Role, name: str, directory: Path, cert: x509.Certificate, written: bool) -> Entry:
    return Entry(role, name, common_name_of(cert), directory, cert.not_valid_after_utc, written)


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _check_days(days: int) -> None:
    if not 1 <= days <= 36500:
        raise ConfigError(f"validity must be 1 to 36500 days, got {days}")


def _check_name(name: str, what: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ConfigError(
            f"{what} {name!r} must be 1-64 of A-Z a-z 0-9 . _ - (not starting with . _ -)"
        )
