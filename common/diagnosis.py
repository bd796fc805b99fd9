"""Why a connection to a forsaken gRPC endpoint fails, in plain words with the flag to fix.

gRPC reports every failure to connect as UNAVAILABLE with a core message ("Socket closed",
"CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"), which reads like an
outage. `diagnose` looks for itself: a TCP connect, then a TLS handshake of its own with
Python's ssl module (no verification, so that it sees the server's certificate whatever is
wrong with it), whose certificate it checks against the CA, the clock and the dialled name
the way gRPC would; then it speaks HTTP/2 on the session so that a server that refuses this
side's certificate says so in its TLS alert. No RPC is made and nothing is sent but a
ClientHello, a certificate and the HTTP/2 preface.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from forsaken.common.errors import CertificateError, ConfigError
from forsaken.common.ports import split_address
from forsaken.common.tls import TlsFiles, health_check

PROBE_TIMEOUT_S = 3.0
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


class Problem(StrEnum):
    REFUSED = "refused"  # nothing listens there
    UNREACHABLE = "unreachable"  # no route, no name, or no answer in time
    WRONG_CA = "wrong-ca"  # the server's certificate is not from the CA this side trusts
    SERVER_CERT_EXPIRED = "server-cert-expired"
    SERVER_CERT_NOT_YET_VALID = "server-cert-not-yet-valid"
    SERVER_NAME_MISMATCH = "server-name-mismatch"
    OWN_CERT_EXPIRED = "own-cert-expired"
    OWN_CERT_NOT_YET_VALID = "own-cert-not-yet-valid"
    OWN_CERT_REJECTED = "own-cert-rejected"  # the server does not trust this side's certificate
    PLAINTEXT_TO_TLS = "plaintext-to-tls"  # this side dials in plaintext, the server wants TLS
    TLS_TO_PLAINTEXT = "tls-to-plaintext"  # this side dials TLS, the server is plaintext


# What no retry can fix: the certificates or the TLS settings have to change.
CERTIFICATE_PROBLEMS = frozenset(Problem) - {Problem.REFUSED, Problem.UNREACHABLE}


@dataclass(frozen=True, slots=True)
class Flags:
    """How the command that asks names its TLS options, so the advice names the right flag."""

    ca: str = "--tls-ca"
    cert: str = "--tls-cert"
    server_name: str = "--tls-server-name"
    enable_tls: str = "--tls-cert, --tls-key and --tls-ca"
    target: str = "--server"


DAEMON_FLAGS = Flags()
OPERATOR_FLAGS = Flags(
    ca="--tls-dir (its ca.pem)",
    cert="--tls-dir (its cert.pem)",
    enable_tls="--tls-dir with an operator credential (`forsaken certs init --operator NAME`)",
)


@dataclass(frozen=True, slots=True)
class Diagnosis:
    problem: Problem
    message: str

    @property
    def certificate(self) -> bool:
        """True when only new certificates or other TLS settings can fix it."""
        return self.problem in CERTIFICATE_PROBLEMS

    def __str__(self) -> str:
        return self.message


def diagnose(
    target: str,
    files: TlsFiles | None,
    *,
    server_name: str | None = None,
    flags: Flags = DAEMON_FLAGS,
    now: datetime | None = None,
) -> Diagnosis | None:
    """What is wrong with dialling `target` with `files` (None: plaintext); None if nothing
    this probe can see (the failure is then transient or inside the server)."""
    now = now or datetime.now(UTC)
    try:
        host, port = split_address(target)
    except ConfigError:
        return None
    try:
        raw = socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S)
    except ConnectionRefusedError:
        return Diagnosis(
            Problem.REFUSED,
            f"nothing listens on {target} (connection refused): is the server running, and "
            f"is {flags.target} right?",
        )
    except OSError as exc:
        return Diagnosis(
            Problem.UNREACHABLE, f"cannot reach {target}: {exc.strerror or exc} ({flags.target})"
        )
    with raw:
        if files is None:
            return _plaintext(raw, host, target, flags)
        return _tls(raw, host, target, files, server_name, flags, now)


def check_own_certificate(files: TlsFiles, what: str, now: datetime | None = None) -> None:
    """CertificateError when this side's own certificate is outside its validity window:
    every handshake would fail, so a daemon should say so at start-up rather than retry."""
    cert = _load(files.cert)
    problem = _validity(cert, now or datetime.now(UTC))
    if problem is None:
        return
    if problem == "expired":
        state = f"expired on {_date(cert.not_valid_after_utc)}"
        clock = ""
    else:
        state = f"is not valid until {_date(cert.not_valid_before_utc)}"
        clock = ", or check this machine's clock"
    raise CertificateError(
        f"{what} certificate {files.cert} {state}: issue a new one (`forsaken certs init` "
        f"renews certificates with under a week left; `forsaken certs issue` one client's){clock}"
    )


# ---- the two probes ---------------------------------------------------------------------------


def _plaintext(raw: socket.socket, host: str, target: str, flags: Flags) -> Diagnosis | None:
    """This side dials without TLS: does the server at `target` want TLS?"""
    if _speaks_tls(raw, host):
        return Diagnosis(
            Problem.PLAINTEXT_TO_TLS,
            f"the server at {target} speaks TLS but this side dials in plaintext: give "
            f"{flags.enable_tls}. Under mutual TLS every call needs a client certificate, the "
            "health check too",
        )
    return None


def _tls(
    raw: socket.socket,
    host: str,
    target: str,
    files: TlsFiles,
    server_name: str | None,
    flags: Flags,
    now: datetime,
) -> Diagnosis | None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # we check the certificate ourselves, to say what is wrong
    ctx.set_alpn_protocols(["h2"])
    with contextlib.suppress(ssl.SSLError, OSError):
        ctx.load_cert_chain(files.cert, files.key)
    try:
        conn = ctx.wrap_socket(raw, server_hostname=_sni(server_name or host))
    except (ssl.SSLError, OSError) as exc:
        if _plaintext_peer(exc) or health_check(target, None, timeout_s=PROBE_TIMEOUT_S):
            return Diagnosis(
                Problem.TLS_TO_PLAINTEXT,
                f"the server at {target} does not speak TLS (a plaintext server): drop "
                f"{flags.enable_tls} to dial it in plaintext, or start the server with "
                "--tls-cert, --tls-key and --tls-ca",
            )
        return None
    with conn:
        der = conn.getpeercert(binary_form=True)
        found = _check_server(der, target, host, files, server_name, flags, now) if der else None
        if found is not None:
            return found
        own = _check_own(files, flags, now)
        if own is not None:
            return own
        return _server_verdict(conn, target, files, flags)


def _check_server(
    der: bytes,
    target: str,
    host: str,
    files: TlsFiles,
    server_name: str | None,
    flags: Flags,
    now: datetime,
) -> Diagnosis | None:
    cert = x509.load_der_x509_certificate(der)
    cas = _load_all(files.ca)
    if not any(_issued_by(cert, ca) for ca in cas):
        ours = ", ".join(_describe_ca(ca) for ca in cas) or "no CA certificate"
        return Diagnosis(
            Problem.WRONG_CA,
            f"the server at {target} has a certificate that {flags.ca} ({files.ca}: {ours}) "
            "did not sign (CERTIFICATE_VERIFY_FAILED: wrong CA): give the federation's ca.pem, "
            "the one `forsaken certs init` wrote beside the server's certificate",
        )
    validity = _validity(cert, now)
    if validity == "expired":
        return Diagnosis(
            Problem.SERVER_CERT_EXPIRED,
            f"the server's certificate at {target} expired on {_date(cert.not_valid_after_utc)}: "
            "its operator must issue a new one (`forsaken certs init` renews it) and restart the "
            "server",
        )
    if validity == "not-yet-valid":
        return Diagnosis(
            Problem.SERVER_CERT_NOT_YET_VALID,
            f"the server's certificate at {target} is not valid until "
            f"{_date(cert.not_valid_before_utc)}: this machine's clock or the server's is wrong",
        )
    name = server_name or host
    names = _san_names(cert)
    if not _name_matches(name, names):
        how = f"{flags.server_name} {name}" if server_name else f"{flags.target} {target}"
        return Diagnosis(
            Problem.SERVER_NAME_MISMATCH,
            f"the server's certificate at {target} is for {', '.join(names) or 'no name'}, not "
            f"{name!r} (given by {how}): dial one of its names, or give {flags.server_name} "
            "with one of them",
        )
    return None


def _check_own(files: TlsFiles, flags: Flags, now: datetime) -> Diagnosis | None:
    try:
        cert = _load(files.cert)
    except CertificateError:
        return None
    validity = _validity(cert, now)
    if validity == "expired":
        return Diagnosis(
            Problem.OWN_CERT_EXPIRED,
            f"this side's certificate {files.cert} expired on {_date(cert.not_valid_after_utc)}: "
            f"issue a new one and give it as {flags.cert}",
        )
    if validity == "not-yet-valid":
        return Diagnosis(
            Problem.OWN_CERT_NOT_YET_VALID,
            f"this side's certificate {files.cert} is not valid until "
            f"{_date(cert.not_valid_before_utc)}: check this machine's clock",
        )
    return None


def _server_verdict(
    conn: ssl.SSLSocket, target: str, files: TlsFiles, flags: Flags
) -> Diagnosis | None:
    """Under TLS 1.3 the server checks this side's certificate after this side's handshake has
    finished: a refusal is the connection closing (or an alert) on the first read, where an
    HTTP/2 server would send its SETTINGS frame."""
    try:
        conn.settimeout(PROBE_TIMEOUT_S)
        conn.sendall(_H2_PREFACE)
        answer = conn.recv(64)
    except ssl.SSLError as exc:
        if "alert" not in str(exc).lower():
            return None
        answer = b""
    except OSError:
        return None
    if answer:
        return None
    own = _load_all(files.cert)
    ours = own and any(_issued_by(own[0], ca) for ca in _load_all(files.ca))
    why = (
        "it is not from the CA that signed the server's certificate"
        if own and not ours
        else "the server trusts another CA, or it is not a certificate the server accepts here"
    )
    return Diagnosis(
        Problem.OWN_CERT_REJECTED,
        f"the server at {target} refused this side's certificate {files.cert} ({why}): give "
        f"a certificate from the federation's CA as {flags.cert}",
    )


# ---- helpers ----------------------------------------------------------------------------------


def _speaks_tls(raw: socket.socket, host: str) -> bool:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    try:
        with ctx.wrap_socket(raw, server_hostname=_sni(host)) as conn:
            return conn.getpeercert(binary_form=True) is not None
    except ssl.SSLError as exc:
        # A TLS server that insists on a client certificate may abort the handshake; that
        # still is a TLS server. A plaintext one answers with bytes that are not a record.
        return "alert" in str(exc).lower() and not _plaintext_peer(exc)
    except OSError:
        return False


def _plaintext_peer(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(
        marker in text
        for marker in ("wrong version number", "record layer failure", "packet length too long")
    )


def _sni(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host or None
    return None  # SNI carries no IP addresses


def _validity(cert: x509.Certificate, now: datetime) -> str | None:
    if now > cert.not_valid_after_utc:
        return "expired"
    if now < cert.not_valid_before_utc:
        return "not-yet-valid"
    return None


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _san_names(cert: x509.Certificate) -> list[str]:
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names = [str(n) for n in sans.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    return names


def _name_matches(name: str, names: list[str]) -> bool:
    wanted = name.lower().rstrip(".")
    with contextlib.suppress(ValueError):
        ip = ipaddress.ip_address(wanted.strip("[]"))
        return any(_same_ip(ip, n) for n in names)
    for n in names:
        n = n.lower()
        if n == wanted:
            return True
        if n.startswith("*.") and "." in wanted and wanted.split(".", 1)[1] == n[2:]:
            return True
    return False


def _same_ip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, name: str) -> bool:
    try:
        return ipaddress.ip_address(name) == ip
    except ValueError:
        return False


def _cn(name: x509.Name) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(values[0].value) if values else name.rfc4514_string()


def _describe_ca(ca: x509.Certificate) -> str:
    fingerprint = ca.fingerprint(hashes.SHA256()).hex()[:16]
    return f"{_cn(ca.subject)!r}, SHA-256 {fingerprint}…"


def _date(when: datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _load(path: Path) -> x509.Certificate:
    certs = _load_all(path)
    if not certs:
        raise CertificateError(f"{path} holds no PEM certificate")
    return certs[0]


def _load_all(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(Path(path).read_bytes())
    except (OSError, ValueError):
        return []
