"""Mutual TLS and node identity against a real server process on loopback.

Certificates come from `init_federation`; the server runs with `--tls-cert/--tls-key/--tls-ca`.
Checked: a node with its own certificate joins and trains; a certificate that belongs to
another node is refused at Join, and so is a stolen session token; no client certificate or
one from another CA fails the handshake; a revoked node is refused at once and on re-Join;
the Admin API takes operators only; a plaintext server on a non-loopback address refuses to
start; and the join-rate, client-count and payload limits answer RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from forsaken.cli.status import fetch_status
from forsaken.client.transport import SESSION_KEY, FleetConnection
from forsaken.common import certs, errors, tls, wire
from forsaken.common.chunking import header_for
from forsaken.common.identity import NodeIdentity
from forsaken.common.round_tasks import TrainTask
from forsaken.common.tensors import TensorSpec
from forsaken.launch import forsaken_command, free_port, terminate, wait_healthy
from forsaken.launch import spawn as spawn_detached
from forsaken.v1 import admin_pb2, admin_pb2_grpc, fleet_pb2, fleet_pb2_grpc

pytestmark = pytest.mark.slow

DIGITS = ("digits", (1, 8, 8), 10)


@dataclass
class TlsServer:
    root: Path
    layout: certs.Layout
    address: str
    proc: subprocess.Popen[bytes]

    @property
    def operator(self) -> Path:
        return self.layout.operator_dir("admin")

    @property
    def log(self) -> str:
        return (self.root / "logs" / "server.log").read_text()

    def status(self) -> dict[str, Any]:
        return fetch_status(self.address, 0, timeout=5, tls_dir=self.operator)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}\n{self.log}"
            try:
                last = self.status()
                if predicate(last):
                    return last
            except grpc.RpcError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; last status {last}\n{self.log}")

    def node(self, index: int, *, identity_of: int | None = None) -> FleetConnection:
        """A connection with client `index`'s TLS set and the node key of `identity_of`."""
        key_dir = self.layout.client_dir(index if identity_of is None else identity_of)
        return FleetConnection(
            self.address,
            NodeIdentity.load_or_create(key_dir),
            credentials=tls.channel_credentials(self.layout.client_dir(index)),
        )


def start_server(root: Path, layout: certs.Layout, **opts: Any) -> TlsServer:
    address = f"127.0.0.1:{free_port()}"
    server = layout.server_dir
    args = [
        "server",
        "--listen",
        address,
        "--state-dir",
        str(root / "server"),
        "--dataset",
        "digits",
        "--tls-cert",
        str(server / certs.CERT_FILE),
        "--tls-key",
        str(server / certs.KEY_FILE),
        "--tls-ca",
        str(server / certs.CA_CERT_FILE),
    ]
    for key, value in {"poll-timeout-s": 1, "liveness-s": 10, **opts}.items():
        args += [f"--{key}", str(value)]
    proc = spawn_detached(forsaken_command(*args), root / "logs" / "server.log")
    probe = tls.channel_credentials(layout.operator_dir("admin"))
    try:
        wait_healthy(address, timeout_s=60, proc=proc, credentials=probe)
    except BaseException:
        terminate([proc], grace_s=5)
        raise
    return TlsServer(root, layout, address, proc)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> certs.Layout:
    return certs.init_federation(tmp_path_factory.mktemp("pki"), ["127.0.0.1"], clients=6)


@pytest.fixture(scope="module")
def other_layout(tmp_path_factory: pytest.TempPathFactory) -> certs.Layout:
    """A second federation: its certificates are signed by a CA our server does not know."""
    return certs.init_federation(tmp_path_factory.mktemp("other-pki"), ["127.0.0.1"], clients=1)


@pytest.fixture
def make_server(tmp_path: Path, layout: certs.Layout) -> Iterator[Callable[..., TlsServer]]:
    started: list[TlsServer] = []

    def make(name: str = "s", **opts: Any) -> TlsServer:
        srv = start_server(tmp_path / name, layout, **opts)
        started.append(srv)
        return srv

    yield make
    terminate([s.proc for s in started], grace_s=5)


@pytest.fixture(scope="module")
def idle_server(
    tmp_path_factory: pytest.TempPathFactory, layout: certs.Layout
) -> Iterator[TlsServer]:
    """No round ever starts here, so joins and revocations are all that happens."""
    srv = start_server(tmp_path_factory.mktemp("idle"), layout, rounds=0, **{"min-clients": 50})
    yield srv
    terminate([srv.proc], grace_s=5)


def refused(call: Callable[[], object], domain: type[errors.ForsakenError], code: str) -> str:
    """Run a FleetConnection call that must fail; return the server's message."""
    with pytest.raises(domain) as info:
        call()
    message = str(info.value)
    assert message.startswith(f"{code}: "), message
    return message


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


# ---- (a) a node with its own certificate joins and trains ------------------------------------


def start_client(srv: TlsServer, root: Path, index: int, count: int) -> subprocess.Popen[bytes]:
    """A real client daemon over mutual TLS; its --state-dir is a copy of the layout's."""
    state = root / f"client-{index}"
    shutil.copytree(srv.layout.client_dir(index), state)
    return spawn_detached(
        forsaken_command(
            "client",
            "--server",
            srv.address,
            "--state-dir",
            str(state),
            "--dataset",
            "digits",
            "--partition",
            f"{index}/{count}",
            "--owner-listen",
            "127.0.0.1:0",
            "--max-backoff-s",
            "1",
            "--tls-cert",
            str(state / certs.CERT_FILE),
            "--tls-key",
            str(state / certs.KEY_FILE),
            "--tls-ca",
            str(state / certs.CA_CERT_FILE),
        ),
        root / "logs" / f"client-{index}.log",
    )


def test_clients_with_valid_certs_join_and_train(
    tmp_path: Path, make_server: Callable[..., TlsServer]
) -> None:
    # Secure aggregation (the default) needs two clients.
    srv = make_server(rounds=1, **{"min-clients": 2, "min-completed": 2, "local-epochs": 1})
    clients = [start_client(srv, tmp_path, i, 2) for i in range(2)]
    try:
        status = srv.wait_for(lambda s: s["phase"] == "finished", 120, "round 1 over mTLS")
        (r1,) = [r for r in status["rounds"] if r["round"] == 1 and r["status"] == "completed"]
        expected = sorted(srv.layout.node_ids[:2])
        assert sorted(r1["participants"]) == expected
        assert status["secure_aggregation"] is True
        assert sorted(c["node_id"] for c in status["clients"]) == expected
        for proc in clients:
            assert proc.wait(timeout=60) == 0  # told to stop once the federation finished
    finally:
        terminate(clients, grace_s=5)


def test_secure_server_with_one_client_does_not_abort_in_a_loop(
    tmp_path: Path, layout: certs.Layout
) -> None:
    try:
        srv = start_server(tmp_path, layout, rounds=1, **{"min-clients": 1, "min-completed": 1})
    except RuntimeError as exc:  # refusing the configuration at start-up is a fine fix too
        assert "exited with code 2" in str(exc)
        return
    try:
        conn = srv.node(0)
        conn.join(10, *DIGITS)
        # Watch a 3 s window (it is the rate that matters), failing as soon as it is clear.
        aborted: list[dict[str, Any]] = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(aborted) < 3:
            aborted = [r for r in srv.status()["rounds"] if r["status"] == "aborted"]
            time.sleep(0.2)
        conn.close()
        assert len(aborted) < 3, f"{len(aborted)} aborted attempts within 3 s"
    finally:
        terminate([srv.proc], grace_s=5)


# ---- (b) another node's certificate --------------------------------------------------------


def test_another_nodes_certificate_is_refused_at_join(idle_server: TlsServer) -> None:
    # TLS set of client 1, node key of client 2: the handshake succeeds, the Join must not.
    conn = idle_server.node(1, identity_of=2)
    try:
        message = refused(
            lambda: conn.join(10, *DIGITS), errors.PermissionDenied, "PERMISSION_DENIED"
        )
        assert idle_server.layout.node_ids[1] in message and "does not belong" in message
    finally:
        conn.close()
    listed = {c["node_id"] for c in idle_server.status()["clients"]}
    assert idle_server.layout.node_ids[2] not in listed


def test_a_session_token_only_works_from_its_own_certificate(idle_server: TlsServer) -> None:
    owner, thief = idle_server.node(1), idle_server.node(2)
    try:
        owner.join(10, *DIGITS)
        thief.join(10, *DIGITS)
        thief.token = owner.token  # replay node 1's session over node 2's TLS channel
        refused(lambda: thief.pull(10), errors.PermissionDenied, "PERMISSION_DENIED")
        owner.pull(10)  # the rightful owner is unaffected
    finally:
        owner.close()
        thief.close()


# ---- (c) no client certificate, or one from another CA -------------------------------------


def _join_over(srv: TlsServer, credentials: grpc.ChannelCredentials | None, key_dir: Path) -> None:
    conn = FleetConnection(
        srv.address, NodeIdentity.load_or_create(key_dir), credentials=credentials
    )
    try:
        refused(lambda: conn.join(10, *DIGITS), errors.Unavailable, "UNAVAILABLE")
    finally:
        conn.close()


def test_no_client_certificate_fails_the_handshake(idle_server: TlsServer) -> None:
    layout = idle_server.layout
    _join_over(idle_server, tls.channel_credentials(layout.ca_cert), layout.client_dir(3))
    _join_over(idle_server, None, layout.client_dir(3))  # plaintext to a TLS port
    assert layout.node_ids[3] not in {c["node_id"] for c in idle_server.status()["clients"]}


def test_certificate_from_another_ca_fails_the_handshake(
    idle_server: TlsServer, other_layout: certs.Layout
) -> None:
    foreign = other_layout.client_dir(0)
    creds = tls.channel_credentials(
        idle_server.layout.ca_cert, foreign / certs.CERT_FILE, foreign / certs.KEY_FILE
    )
    _join_over(idle_server, creds, foreign)
    # The foreign operator certificate does not open the Admin API either.
    err = rpc_error(
        lambda: fetch_status(
            idle_server.address, tls_dir=other_layout.operator_dir("admin"), timeout=5
        )
    )
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    listed = {c["node_id"] for c in idle_server.status()["clients"]}
    assert other_layout.node_ids[0] not in listed


# ---- (d) revocation ------------------------------------------------------------------------


def _admin_cli(srv: TlsServer, *args: str, tls_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        forsaken_command("admin", *args, "--server", srv.address, "--tls-dir", str(tls_dir)),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_revoked_node_is_refused_at_once_and_on_rejoin(idle_server: TlsServer) -> None:
    layout = idle_server.layout
    node = layout.node_ids[4]
    conn = idle_server.node(4)
    try:
        conn.join(10, *DIGITS)
        conn.pull(10)
        # A node certificate cannot revoke anyone, not even itself.
        out = _admin_cli(idle_server, "revoke", node, tls_dir=layout.client_dir(4))
        assert out.returncode == 1 and "PERMISSION_DENIED" in out.stdout, out
        out = _admin_cli(
            idle_server, "revoke", node, "--reason", "test", tls_dir=idle_server.operator
        )
        assert out.returncode == 0 and f"node {node} is now revoked" in out.stdout, out
        stub = fleet_pb2_grpc.FleetStub(conn.channel)
        assert conn.token is not None
        err = rpc_error(
            lambda: stub.PullTask(
                fleet_pb2.PullTaskRequest(), metadata=((SESSION_KEY, conn.token),), timeout=10
            )
        )
        assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
        message = refused(
            lambda: conn.join(10, *DIGITS), errors.PermissionDenied, "PERMISSION_DENIED"
        )
        assert "revoked" in message
    finally:
        conn.close()
    assert node in {c["node_id"] for c in idle_server.status()["clients"]}


def test_revoked_nodes_next_call_is_permission_denied(idle_server: TlsServer) -> None:
    node = idle_server.layout.node_ids[5]
    conn = idle_server.node(5)
    try:
        conn.join(10, *DIGITS)
        assert _admin_cli(idle_server, "revoke", node, tls_dir=idle_server.operator).returncode == 0
        refused(lambda: conn.pull(10), errors.PermissionDenied, "PERMISSION_DENIED")
    finally:
        conn.close()


# ---- (e) the Admin API takes operators only --------------------------------------------------


def test_admin_api_refuses_node_certificates_and_accepts_operators(idle_server: TlsServer) -> None:
    layout = idle_server.layout
    with tls.secure_channel(
        idle_server.address, tls.channel_credentials(layout.client_dir(1))
    ) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        calls = {
            "GetStatus": lambda: stub.GetStatus(admin_pb2.StatusRequest(), timeout=10),
            "ListRounds": lambda: stub.ListRounds(admin_pb2.ListRoundsRequest(), timeout=10),
            "ListClients": lambda: stub.ListClients(admin_pb2.ListClientsRequest(), timeout=10),
            "ListForgetRequests": lambda: stub.ListForgetRequests(
                admin_pb2.ListForgetRequestsRequest(), timeout=10
            ),
            "RevokeClient": lambda: stub.RevokeClient(
                admin_pb2.RevokeClientRequest(node_id=layout.node_ids[0]), timeout=10
            ),
        }
        for name, call in calls.items():
            err = rpc_error(call)
            assert err.code() is grpc.StatusCode.PERMISSION_DENIED, name
            assert "operator certificate" in (err.details() or ""), name
    # The server's own TLS set (used for health probes) is no operator either.
    err = rpc_error(lambda: fetch_status(idle_server.address, tls_dir=layout.server_dir, timeout=5))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    status = idle_server.status()  # the operator's certificate
    assert status["phase"] == "waiting" and status["model_sha256"]


# ---- (f) plaintext on a non-loopback address needs --insecure --------------------------------


def test_plaintext_on_a_public_address_needs_insecure(tmp_path: Path, layout: certs.Layout) -> None:
    base = ["server", "--state-dir", str(tmp_path / "s"), "--dataset", "digits"]
    out = subprocess.run(
        forsaken_command(*base, "--listen", f"0.0.0.0:{free_port()}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2, out
    assert "--insecure" in out.stderr and "0.0.0.0" in out.stderr, out.stderr
    # Half a TLS configuration is no fallback to plaintext either.
    server = layout.server_dir
    out = subprocess.run(
        forsaken_command(
            *base, "--listen", f"127.0.0.1:{free_port()}", "--tls-cert", str(server / "cert.pem")
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "tls_key" in out.stderr, out.stderr


# ---- (g) limits ------------------------------------------------------------------------------


def test_join_rate_limit_has_a_burst_of_ten(make_server: Callable[..., TlsServer]) -> None:
    srv = make_server(rounds=0, **{"min-clients": 50, "join-rate-per-min": 1})
    conn = srv.node(0)
    try:
        for _ in range(10):
            conn.join(10, *DIGITS)
        message = refused(
            lambda: conn.join(10, *DIGITS), errors.PayloadTooLarge, "RESOURCE_EXHAUSTED"
        )
        assert "join rate limit" in message and "retry in" in message, message
        conn.pull(10)  # the session of the 10th Join is still good
    finally:
        conn.close()
    other = srv.node(1)  # the limit is per node
    try:
        other.join(10, *DIGITS)
    finally:
        other.close()


def test_max_clients_refuses_a_second_node(make_server: Callable[..., TlsServer]) -> None:
    srv = make_server(rounds=0, **{"min-clients": 50, "max-clients": 1})
    first, second = srv.node(0), srv.node(1)
    try:
        first.join(10, *DIGITS)
        message = refused(
            lambda: second.join(10, *DIGITS), errors.PayloadTooLarge, "RESOURCE_EXHAUSTED"
        )
        assert "limit of 1 clients" in message, message
        first.join(10, *DIGITS)  # a node already live may re-join
        listed = {c["node_id"] for c in srv.status()["clients"]}
        assert listed == {srv.layout.node_ids[0]}
    finally:
        first.close()
        second.close()


def test_upload_over_max_payload_is_refused(make_server: Callable[..., TlsServer]) -> None:
    srv = make_server(
        aggregation="plaintext",
        rounds=1,
        **{"min-clients": 1, "min-completed": 1, "max-payload-mb": 1, "round-timeout-s": 120},
    )
    conn = srv.node(0)
    try:
        conn.join(10, *DIGITS)
        deadline = time.monotonic() + 60
        task = conn.pull(10)
        while not isinstance(task, TrainTask):
            assert time.monotonic() < deadline, "no training task"
            task = conn.pull(10)
        payload = bytes(2 << 20)  # 2 MiB of float32 zeros, over the 1 MiB limit
        specs = (TensorSpec("weight", (len(payload) // 4,)),)
        message = refused(
            lambda: conn.push(
                request_id=uuid.uuid4().hex,
                task=task,
                num_samples=10,
                metrics={},
                tensors=specs,
                payload=payload,
            ),
            errors.PayloadTooLarge,
            "RESOURCE_EXHAUSTED",
        )
        assert "exceeds the limit" in message, message
        # Lying about the size does not help: the stream may not outgrow its header.
        header = fleet_pb2.UploadHeader(
            request_id=uuid.uuid4().hex,
            task_id=task.task_id,
            round=task.round,
            base_model_sha256=bytes.fromhex(task.model_sha256),
            num_samples=10,
            payload=wire.payload_header_to_proto(header_for(specs[:0], b"")),
        )
        stub = fleet_pb2_grpc.FleetStub(conn.channel)
        assert conn.token is not None
        err = rpc_error(
            lambda: stub.PushUpdate(
                wire.upload_chunks(header, payload),
                metadata=((SESSION_KEY, conn.token),),
                timeout=30,
            )
        )
        # The header is checked against the node's open task before the stream is read, so
        # this lie is refused before a byte is buffered (the stream could not outgrow it anyway).
        assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert "update tensors do not match" in (err.details() or "")
        assert srv.status()["completed_rounds"] == 0
    finally:
        conn.close()
