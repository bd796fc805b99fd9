"""Mutual TLS over real gRPC on loopback, with certificates from `init_federation`."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from forsaken.common import certs, tls
from forsaken.common.errors import ConfigError
from forsaken.common.fsutil import atomic_write

WHO = "/forsaken.test.Whoami/Who"


def _who(_request: bytes, context: grpc.ServicerContext) -> bytes:
    cn = tls.peer_common_name(context)
    return b"<none>" if cn is None else cn.encode()


@contextmanager
def serve(credentials: grpc.ServerCredentials | None) -> Iterator[int]:
    """A server with the standard health service and a Whoami method; yields its port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    handler = grpc.unary_unary_rpc_method_handler(_who)  # raw bytes in and out
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("forsaken.test.Whoami", {"Who": handler}),)
    )
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(0).wait()


def whoami(port: int, creds: grpc.ChannelCredentials, server_name: str | None = None) -> str:
    with tls.secure_channel(f"127.0.0.1:{port}", creds, server_name=server_name) as channel:
        return channel.unary_unary(WHO)(b"", timeout=10).decode()


def handshake_fails(
    port: int, creds: grpc.ChannelCredentials, server_name: str | None = None
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        whoami(port, creds, server_name)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> certs.Layout:
    return certs.init_federation(tmp_path_factory.mktemp("fed"), ["server"], clients=2)


@pytest.fixture(scope="module")
def other_fed(tmp_path_factory: pytest.TempPathFactory) -> certs.Layout:
    return certs.init_federation(tmp_path_factory.mktemp("other"), ["server"], clients=1)


@pytest.fixture(scope="module")
def mtls_port(fed: certs.Layout) -> Iterator[int]:
    with serve(tls.server_credentials(fed.server_dir)) as port:
        yield port


def test_client_with_valid_cert_is_served_and_its_cn_seen(
    fed: certs.Layout, mtls_port: int
) -> None:
    for i, node_id in enumerate(fed.node_ids):
        directory = fed.client_dir(i)
        by_dir = tls.channel_credentials(directory)
        by_paths = tls.channel_credentials(
            directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
        )
        assert whoami(mtls_port, by_dir) == node_id
        assert whoami(mtls_port, by_paths) == node_id


def test_operator_cn_is_seen(fed: certs.Layout, mtls_port: int) -> None:
    cn = whoami(mtls_port, tls.channel_credentials(fed.operator_dir("admin")))
    assert cn == "operator:admin"
    assert certs.role_of(cn) is certs.Role.OPERATOR


def test_client_without_cert_fails_the_handshake(fed: certs.Layout, mtls_port: int) -> None:
    handshake_fails(mtls_port, tls.channel_credentials(fed.ca_cert))


def test_client_with_cert_from_another_ca_fails_the_handshake(
    fed: certs.Layout, other_fed: certs.Layout, mtls_port: int
) -> None:
    foreign = other_fed.client_dir(0)
    # It trusts our server (our CA as root) but presents a certificate our CA did not sign.
    creds = tls.channel_credentials(fed.ca_cert, foreign / "cert.pem", foreign / "key.pem")
    handshake_fails(mtls_port, creds)


def test_client_that_does_not_trust_the_server_fails(
    fed: certs.Layout, other_fed: certs.Layout, mtls_port: int
) -> None:
    mine = fed.client_dir(0)
    creds = tls.channel_credentials(other_fed.ca_cert, mine / "cert.pem", mine / "key.pem")
    handshake_fails(mtls_port, creds)


def test_plaintext_client_cannot_talk_to_a_tls_server(mtls_port: int) -> None:
    assert not tls.health_check(f"127.0.0.1:{mtls_port}", None, timeout_s=2)


def test_health_check_over_mtls_including_the_servers_own_set(
    fed: certs.Layout, mtls_port: int
) -> None:
    target = f"127.0.0.1:{mtls_port}"
    assert tls.health_check(target, tls.channel_credentials(fed.client_dir(0)))
    # The container health probe presents the server's own certificate (deploy/Dockerfile).
    assert tls.health_check(target, tls.channel_credentials(fed.server_dir))
    assert not tls.health_check(target, tls.channel_credentials(fed.ca_cert), timeout_s=2)


def test_target_name_override_for_a_cert_without_ip_sans(fed: certs.Layout, tmp_path: Path) -> None:
    ca = certs.load_ca(fed.root)
    cred = certs.issue_server_cert(ca, ["fleet.example"], include_loopback=False)
    certs.write_credential(tmp_path, cred, ca.cert)
    client = tls.channel_credentials(fed.client_dir(0))
    with serve(tls.server_credentials(tmp_path)) as port:
        handshake_fails(port, client)  # 127.0.0.1 is not in the certificate
        handshake_fails(port, client, server_name="other.example")
        assert whoami(port, client, server_name="fleet.example") == fed.node_ids[0]
        assert tls.health_check(f"127.0.0.1:{port}", client, server_name="fleet.example")


def test_server_without_client_auth_sees_no_cn(fed: certs.Layout) -> None:
    creds = tls.server_credentials(tls.TlsFiles.in_dir(fed.server_dir), require_client_cert=False)
    with serve(creds) as port:
        assert whoami(port, tls.channel_credentials(fed.ca_cert)) == "<none>"
        # gRPC then does not even request a certificate: one offered is never seen, so any
        # authorization by CN needs require_client_cert=True.
        assert whoami(port, tls.channel_credentials(fed.client_dir(1))) == "<none>"


def test_insecure_server_peer_has_no_cn() -> None:
    with serve(None) as port, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert channel.unary_unary(WHO)(b"", timeout=10) == b"<none>"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:7070", True),
        ("127.1.2.3:7070", True),
        ("localhost:7070", True),
        ("LOCALHOST:1", True),
        ("[::1]:7070", True),
        ("::1", True),
        ("127.0.0.1", True),
        ("ipv4:127.0.0.1:51234", True),
        ("ipv6:%5B::1%5D:51234", True),
        ("ipv6:[::ffff:127.0.0.1]:5", True),
        ("unix:/run/forsaken.sock", True),
        ("0.0.0.0:7070", False),
        ("[::]:7070", False),
        (":7070", False),
        ("10.0.0.5:7070", False),
        ("ipv4:192.168.1.9:4444", False),
        ("server:7070", False),
        ("localhost.evil.example:7070", False),
    ],
)
def test_is_loopback(address: str, expected: bool) -> None:
    assert tls.is_loopback(address) is expected


def test_missing_file_is_named(fed: certs.Layout, tmp_path: Path) -> None:
    files = tls.TlsFiles(fed.server_dir / "cert.pem", tmp_path / "absent.pem", fed.ca_cert)
    with pytest.raises(ConfigError, match=r"TLS key file .*absent\.pem does not exist"):
        tls.server_credentials(files)
    with pytest.raises(ConfigError, match=r"TLS CA file .*nope\.pem does not exist"):
        tls.channel_credentials(tmp_path / "nope.pem")


def test_bad_material_is_a_config_error(fed: certs.Layout, tmp_path: Path) -> None:
    atomic_write(tmp_path / "garbage.pem", b"not a certificate\n")
    with pytest.raises(ConfigError, match="holds no PEM certificate"):
        tls.channel_credentials(tmp_path / "garbage.pem")
    mismatched = tls.TlsFiles(
        fed.server_dir / "cert.pem", fed.client_dir(0) / "key.pem", fed.ca_cert
    )
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        mismatched.load()
    atomic_write(tmp_path / "empty.pem", b"")
    with pytest.raises(ConfigError, match=r"empty\.pem is empty"):
        tls.TlsFiles(tmp_path / "empty.pem", fed.server_dir / "key.pem", fed.ca_cert).load()
    with pytest.raises(ConfigError, match="needs its key"):
        tls.channel_credentials(fed.ca_cert, fed.client_dir(0) / "cert.pem")


def test_tls_options_all_or_nothing(fed: certs.Layout) -> None:
    d = fed.server_dir
    assert tls.TlsFiles.from_options(None, "", Path("")) is None
    got = tls.TlsFiles.from_options(d / "cert.pem", d / "key.pem", d / "ca.pem")
    assert got == tls.TlsFiles.in_dir(d)
    with pytest.raises(ConfigError, match="missing tls_key, tls_ca"):
        tls.TlsFiles.from_options(d / "cert.pem", "", None)


def test_material_names_its_own_common_name(fed: certs.Layout) -> None:
    assert tls.load_tls(fed.client_dir(1)).common_name == fed.node_ids[1]
    assert tls.load_tls(fed.operator_dir("admin")).common_name == "operator:admin"


def test_channel_options_only_when_a_name_is_given() -> None:
    assert tls.channel_options(None) == []
    assert tls.channel_options("fleet.example") == [(tls.TARGET_NAME_OVERRIDE, "fleet.example")]
