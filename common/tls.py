"""gRPC glue for mutual TLS: credentials from PEM files, the peer's CN, loopback checks.

The files come from `forsaken.common.certs`: every credential directory holds ``cert.pem``,
``key.pem`` and ``ca.pem``, so either a directory or three paths describe one TLS set.

Dialling by IP: gRPC checks the name a client dialled against the server certificate's SANs.
Server certificates from `certs.issue_server_cert` name their hosts plus localhost,
127.0.0.1 and ::1. To dial an address the certificate does not name (a test on 127.0.0.1
against a certificate for ``fleet.example``, or an IP behind NAT), pass ``server_name=`` to
`secure_channel`/`health_check`: it sets the channel option ``grpc.ssl_target_name_override``,
which changes the name checked, never whether it is checked.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import grpc
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from forsaken.common.certs import CA_CERT_FILE, CERT_FILE, KEY_FILE, check_key_pair, common_name_of
from forsaken.common.errors import ConfigError

PathLike = str | os.PathLike[str]
TARGET_NAME_OVERRIDE = "grpc.ssl_target_name_override"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where one TLS set lives: this side's certificate and key, and the CA that signs peers."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def in_dir(cls, directory: PathLike) -> TlsFiles:
        d = Path(directory)
        return cls(d / CERT_FILE, d / KEY_FILE, d / CA_CERT_FILE)

    @classmethod
    def from_options(
        cls, cert: PathLike | None, key: PathLike | None, ca: PathLike | None
    ) -> TlsFiles | None:
        """From three config options: None when all are empty (TLS off), else all three.

        Half-configured TLS is an error rather than a silent fallback to plaintext.
        """
        given = {"tls_cert": cert, "tls_key": key, "tls_ca": ca}
        missing = [name for name, value in given.items() if not _is_set(value)]
        if len(missing) == 3:
            return None
        if cert is None or key is None or ca is None or missing:
            raise ConfigError(
                "TLS needs tls_cert, tls_key and tls_ca (--tls-cert, --tls-key, --tls-ca) "
                f"together; missing {', '.join(missing)}"
            )
        return cls(Path(cert), Path(key), Path(ca))

    def load(self) -> TlsMaterial:
        """Read and check the three files; ConfigError names the file that is wrong."""
        cert, key, ca = (
            _read(self.cert, "certificate"),
            _read(self.key, "key"),
            _read(self.ca, "CA"),
        )
        check_key_pair(cert, key, f"{self.cert} / {self.key}")
        _check_ca_bundle(ca, self.ca)
        return TlsMaterial(cert=cert, key=key, ca=ca)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """The PEM bytes of a checked `TlsFiles`."""

    cert: bytes
    key: bytes
    ca: bytes

    @property
    def common_name(self) -> str:
        """This side's certificate CN: a client daemon checks it equals its own node id at
        start-up, so a swapped certificate fails there rather than at every Join."""
        return common_name_of(x509.load_pem_x509_certificate(self.cert))


def load_tls(source: TlsFiles | TlsMaterial | PathLike) -> TlsMaterial:
    """PEM bytes from a `TlsFiles`, a credential directory, or material already loaded."""
    if isinstance(source, TlsMaterial):
        return source
    files = source if isinstance(source, TlsFiles) else TlsFiles.in_dir(source)
    return files.load()


def server_credentials(
    source: TlsFiles | TlsMaterial | PathLike, require_client_cert: bool = True
) -> grpc.ServerCredentials:
    """Credentials for `server.add_secure_port`.

    With `require_client_cert` (the default) a peer without a certificate signed by the CA
    fails the handshake before any RPC runs. Without it gRPC does not even request a client
    certificate, so `peer_common_name` is None for every peer: authorizing by CN needs it on.
    """
    m = load_tls(source)
    return grpc.ssl_server_credentials(
        [(m.key, m.cert)], root_certificates=m.ca, require_client_auth=require_client_cert
    )


def channel_credentials(
    ca: PathLike, cert: PathLike | None = None, key: PathLike | None = None
) -> grpc.ChannelCredentials:
    """Credentials for a channel to a TLS server.

    `ca` is the CA file that must have signed the server; `cert` and `key` (both or neither)
    are this side's client certificate for mutual TLS. If `ca` is a credential directory and
    `cert`/`key` are omitted, all three come from that directory.
    """
    if Path(ca).is_dir() and cert is None and key is None:
        m = TlsFiles.in_dir(ca).load()
        return grpc.ssl_channel_credentials(m.ca, m.key, m.cert)
    if (cert is None) != (key is None):
        raise ConfigError("a client certificate needs its key, and a key its certificate")
    root = _read(Path(ca), "CA")
    _check_ca_bundle(root, Path(ca))
    if cert is None or key is None:
        return grpc.ssl_channel_credentials(root_certificates=root)
    m = TlsFiles(Path(cert), Path(key), Path(ca)).load()
    return grpc.ssl_channel_credentials(m.ca, m.key, m.cert)


def channel_options(server_name: str | None = None) -> list[tuple[str, Any]]:
    """The channel option that makes gRPC check `server_name` instead of the dialled host."""
    return [(TARGET_NAME_OVERRIDE, server_name)] if server_name else []


def secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    *,
    server_name: str | None = None,
    options: list[tuple[str, Any]] | tuple[tuple[str, Any], ...] = (),
) -> grpc.Channel:
    return grpc.secure_channel(
        target, credentials, options=[*options, *channel_options(server_name)]
    )


def peer_common_name(context: grpc.ServicerContext) -> str | None:
    """The subject CN of the peer's verified client certificate, or None without one.

    gRPC only fills ``x509_common_name`` after the handshake verified the chain, so a value
    here was signed by the server's CA.
    """
    # A list of bytes per key, whatever the stubs say (they type each value as bytes).
    values: Sequence[object] = context.auth_context().get("x509_common_name") or []
    if not values:
        return None
    value = values[0]
    return value.decode() if isinstance(value, bytes) else str(value)


def is_loopback(address: str) -> bool:
    """Whether `address` can only be reached from this machine.

    Accepts listen/dial forms (``host:port``, ``[v6]:port``, a bare IP) and gRPC's peer forms
    (``ipv4:127.0.0.1:5``, ``ipv6:%5B::1%5D:5``, ``unix:/path``). Host names other than
    ``localhost`` count as not loopback: resolving them here would make a security decision
    depend on DNS. A wildcard (``0.0.0.0``, ``[::]``) listens on every interface: not loopback.
    """
    addr = unquote(address.strip())
    if addr.startswith(("unix:", "unix-abstract:")):
        return True
    for prefix in ("ipv4:", "ipv6:", "dns:///", "dns:"):
        if addr.startswith(prefix):
            addr = addr[len(prefix) :]
            break
    host = _host_of(addr)
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def health_check(
    target: str,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    server_name: str | None = None,
    service: str = "",
    timeout_s: float = 3.0,
) -> bool:
    """True when the standard gRPC health service at `target` reports SERVING.

    Plaintext without `credentials`. Any failure (refused, handshake, deadline) is False:
    callers poll this, and a probe must not crash on the states it exists to detect.
    """
    if credentials is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = secure_channel(target, credentials, server_name=server_name)
    with channel:
        try:
            # The stubs leave out the methods HealthStub sets in __init__.
            reply = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _is_set(value: PathLike | None) -> bool:
    # A Path-typed option defaulting to "" arrives as Path("."), which is truthy.
    return value is not None and str(value) not in ("", ".")


def _host_of(addr: str) -> str:
    if addr.startswith("["):
        return addr[1 : addr.find("]")] if "]" in addr else addr[1:]
    try:
        ipaddress.ip_address(addr)  # a bare IP, possibly IPv6 with colons and no port
        return addr
    except ValueError:
        return addr.rsplit(":", 1)[0] if ":" in addr else addr


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"TLS {what} file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"TLS {what} file {path} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS {what} file {path}: {exc.strerror or exc}") from None
    if not data.strip():
        raise ConfigError(f"TLS {what} file {path} is empty")
    return data


def _check_ca_bundle(pem: bytes, path: Path) -> None:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"TLS CA file {path} holds no PEM certificate")
