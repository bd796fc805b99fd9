"""Connection failures named in plain words: each TLS mistake against a real gRPC server.

Servers here are real gRPC servers on loopback (health service only) with certificates from
`init_federation`; expired and not-yet-valid certificates are issued with a shifted clock.
Every case also checks that gRPC itself fails (or not) the way the diagnosis claims.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from forsaken.common import certs, tls
from forsaken.common.diagnosis import (
    OPERATOR_FLAGS,
    Problem,
    check_own_certificate,
    diagnose,
)
from forsaken.common.errors import CertificateError
from forsaken.launch import free_port

NOW = datetime.now(UTC)


@contextmanager
def serve(credentials: grpc.ServerCredentials | None) -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0).wait()


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> certs.Layout:
    return certs.init_federation(tmp_path_factory.mktemp("fed"), ["fleet.example"], clients=1)


@pytest.fixture(scope="module")
def other(tmp_path_factory: pytest.TempPathFactory) -> certs.Layout:
    return certs.init_federation(tmp_path_factory.mktemp("other"), ["fleet.example"], clients=1)


@pytest.fixture(scope="module")
def server(fed: certs.Layout) -> Iterator[str]:
    with serve(tls.server_credentials(fed.server_dir)) as address:
        yield address


def _leaf(fed: certs.Layout, out: Path, *, server: bool, now: datetime) -> Path:
    """A credential from `fed`'s CA issued as if the clock said `now`, valid for 2 days."""
    ca = certs.load_ca(fed.root)
    if server:
        cred = certs.issue_server_cert(ca, ["fleet.example"], days=2, now=now)
    else:
        cred = certs.issue_operator_cert(ca, "clock", days=2, now=now)
    certs.write_credential(out, cred, ca.cert)
    return out


def _grpc_fails(address: str, files: tls.TlsFiles | None, server_name: str | None = None) -> bool:
    creds = None if files is None else tls.channel_credentials(files.ca, files.cert, files.key)
    return not tls.health_check(address, creds, server_name=server_name, timeout_s=3)


def test_a_working_set_has_nothing_to_report(fed: certs.Layout, server: str) -> None:
    files = tls.TlsFiles.in_dir(fed.operator_dir("admin"))
    assert not _grpc_fails(server, files)
    assert diagnose(server, files) is None


def test_wrong_ca(fed: certs.Layout, other: certs.Layout, server: str) -> None:
    files = tls.TlsFiles.in_dir(fed.operator_dir("admin"))
    files = tls.TlsFiles(files.cert, files.key, other.ca_cert)
    assert _grpc_fails(server, files)
    found = diagnose(server, files)
    assert found is not None and found.problem == Problem.WRONG_CA and found.certificate
    assert "--tls-ca" in found.message and str(other.ca_cert) in found.message
    operator = diagnose(server, files, flags=OPERATOR_FLAGS)
    assert operator is not None and "--tls-dir" in operator.message


def test_own_certificate_from_another_ca_is_rejected(
    fed: certs.Layout, other: certs.Layout, server: str
) -> None:
    theirs = tls.TlsFiles.in_dir(other.operator_dir("admin"))
    files = tls.TlsFiles(theirs.cert, theirs.key, fed.ca_cert)
    assert _grpc_fails(server, files)
    found = diagnose(server, files)
    assert found is not None and found.problem == Problem.OWN_CERT_REJECTED
    assert "not from the CA that signed the server's certificate" in found.message


@pytest.mark.parametrize(
    ("shift", "problem"),
    [
        (timedelta(days=-30), Problem.SERVER_CERT_EXPIRED),
        (timedelta(days=30), Problem.SERVER_CERT_NOT_YET_VALID),
    ],
)
def test_server_certificate_outside_its_validity(
    fed: certs.Layout, tmp_path: Path, shift: timedelta, problem: Problem
) -> None:
    cred = _leaf(fed, tmp_path / "srv", server=True, now=NOW + shift)
    files = tls.TlsFiles.in_dir(fed.operator_dir("admin"))
    with serve(tls.server_credentials(cred)) as address:
        assert _grpc_fails(address, files)
        found = diagnose(address, files)
    assert found is not None and found.problem == problem, found


def test_own_certificate_expired(fed: certs.Layout, server: str, tmp_path: Path) -> None:
    files = tls.TlsFiles.in_dir(_leaf(fed, tmp_path / "op", server=False, now=NOW - timedelta(30)))
    assert _grpc_fails(server, files)
    found = diagnose(server, files)
    assert found is not None and found.problem == Problem.OWN_CERT_EXPIRED
    with pytest.raises(CertificateError, match="expired on"):
        check_own_certificate(files, "this node's")
    check_own_certificate(tls.TlsFiles.in_dir(fed.operator_dir("admin")), "this node's")


def test_server_name_mismatch(fed: certs.Layout, server: str) -> None:
    files = tls.TlsFiles.in_dir(fed.operator_dir("admin"))
    assert _grpc_fails(server, files, server_name="other.example")
    found = diagnose(server, files, server_name="other.example")
    assert found is not None and found.problem == Problem.SERVER_NAME_MISMATCH
    assert "fleet.example" in found.message and "--tls-server-name" in found.message
    assert not _grpc_fails(server, files, server_name="fleet.example")
    assert diagnose(server, files, server_name="fleet.example") is None


def test_plaintext_against_tls(server: str) -> None:
    assert _grpc_fails(server, None)
    found = diagnose(server, None, flags=OPERATOR_FLAGS)
    assert found is not None and found.problem == Problem.PLAINTEXT_TO_TLS
    assert "--tls-dir" in found.message and "health check" in found.message


def test_tls_against_plaintext(fed: certs.Layout) -> None:
    files = tls.TlsFiles.in_dir(fed.operator_dir("admin"))
    with serve(None) as address:
        assert _grpc_fails(address, files)
        found = diagnose(address, files)
        assert diagnose(address, None) is None  # plaintext to plaintext: nothing wrong
    assert found is not None and found.problem == Problem.TLS_TO_PLAINTEXT


def test_nothing_listening_is_not_a_certificate_problem(fed: certs.Layout) -> None:
    address = f"127.0.0.1:{free_port()}"
    found = diagnose(address, tls.TlsFiles.in_dir(fed.operator_dir("admin")))
    assert found is not None and found.problem == Problem.REFUSED and not found.certificate
    assert address in found.message
