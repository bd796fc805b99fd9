"""Every bad input over real gRPC gets a specific status and message and leaves the model as
it was. The server is a real process; the test plays two clients with raw stubs."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from forsaken.client.transport import SESSION_KEY, FleetConnection
from forsaken.common import errors, wire
from forsaken.common.chunking import PayloadHeader, header_for
from forsaken.common.identity import NodeIdentity
from forsaken.common.round_tasks import TrainTask
from forsaken.common.tensors import TensorSpec, from_bytes, to_bytes
from forsaken.v1 import fleet_pb2, fleet_pb2_grpc
from tests.cluster import Cluster

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(
        tmp_path_factory.mktemp("bad"),
        rounds=3,
        aggregation="plaintext",
        **{"min-clients": 2, "min-completed": 2, "round-timeout-s": 600, "max-payload-mb": 1},
    )
    c.start_server()
    yield c
    c.stop()


class Node:
    def __init__(self, address: str) -> None:
        self.conn = FleetConnection(address, NodeIdentity.generate())
        self.conn.join(100, "digits", (1, 8, 8), 10)
        self.stub = fleet_pb2_grpc.FleetStub(self.conn.channel)

    @property
    def md(self) -> tuple[tuple[str, bytes], ...]:
        assert self.conn.token is not None
        return ((SESSION_KEY, self.conn.token),)

    def task(self) -> TrainTask:
        for _ in range(40):
            task = self.conn.pull(100)
            if isinstance(task, TrainTask):
                return task
        raise AssertionError("no task")

    def model(self, task: TrainTask) -> tuple[tuple[TensorSpec, ...], np.ndarray]:
        specs, payload = self.conn.fetch_model(task.model_sha256, 1 << 24)
        return specs, from_bytes(payload, specs)

    def push_raw(self, chunks: list[fleet_pb2.UploadChunk]) -> fleet_pb2.PushReply:
        return self.stub.PushUpdate(iter(chunks), metadata=self.md, timeout=30)


def upload(
    task: TrainTask,
    specs: tuple[TensorSpec, ...],
    data: bytes,
    *,
    header: PayloadHeader | None = None,
    round_: int | None = None,
    request_id: str | None = None,
) -> list[fleet_pb2.UploadChunk]:
    h = fleet_pb2.UploadHeader(
        request_id=request_id or uuid.uuid4().hex,
        task_id=task.task_id,
        round=task.round if round_ is None else round_,
        base_model_sha256=bytes.fromhex(task.model_sha256),
        num_samples=100,
        payload=wire.payload_header_to_proto(header or header_for(specs, data)),
    )
    return list(wire.upload_chunks(h, data, chunk_bytes=4096))


@pytest.fixture(scope="module")
def nodes(cluster: Cluster) -> tuple[Node, Node]:
    a, b = Node(cluster.address), Node(cluster.address)
    return a, b


def expect(code: grpc.StatusCode, match: str, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    assert match in info.value.details()


def unchanged(cluster: Cluster, sha: str) -> None:
    status = cluster.status()
    assert status["completed_rounds"] == 0
    assert status["model_sha256"] == sha


def test_bad_updates_are_refused_and_model_unchanged(
    cluster: Cluster, nodes: tuple[Node, Node]
) -> None:
    a, b = nodes
    task = a.task()
    btask = b.task()
    specs, model = a.model(task)
    good = to_bytes(np.zeros_like(model))
    sha = cluster.status()["model_sha256"]
    assert sha == task.model_sha256

    wrong_shape = tuple(TensorSpec(s.name, (s.numel,), s.dtype) for s in specs)
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "shapes or dtype",
        lambda: a.push_raw(upload(task, wrong_shape, good)),
    )
    f64 = tuple(TensorSpec(s.name, s.shape, "float64") for s in specs)
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "shapes or dtype",
        lambda: a.push_raw(upload(task, f64, to_bytes(np.zeros(model.size, np.float64)))),
    )
    for bad in (np.nan, np.inf):
        vec = np.zeros_like(model)
        vec[5] = bad
        expect(
            grpc.StatusCode.INVALID_ARGUMENT,
            "NaN or Inf",
            lambda v=vec: a.push_raw(upload(task, specs, to_bytes(v))),
        )
    expect(
        grpc.StatusCode.NOT_FOUND,
        "round 9 does not exist",
        lambda: a.push_raw(upload(task, specs, good, round_=9)),
    )
    big = tuple([TensorSpec("huge", (1 << 20,))])
    expect(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "exceeds the limit",
        lambda: a.push_raw(upload(task, big, good, header=PayloadHeader(big, 4 << 20, b"\0" * 32))),
    )
    wrong_sha = PayloadHeader(specs, len(good), hashlib.sha256(b"x").digest())
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "sha256 does not match",
        lambda: a.push_raw(upload(task, specs, good, header=wrong_sha)),
    )
    truncated = upload(task, specs, good)[:-1]
    expect(grpc.StatusCode.INVALID_ARGUMENT, "stream truncated", lambda: a.push_raw(truncated))
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "must start with an UploadHeader",
        lambda: a.push_raw([fleet_pb2.UploadChunk(data=b"abc")]),
    )
    unchanged(cluster, sha)

    # A duplicate push is acknowledged once; a second, different update is refused.
    first = upload(task, specs, good, request_id="push-1")
    reply = a.push_raw(first)
    assert reply.accepted and not reply.duplicate
    again = a.push_raw(upload(task, specs, good, request_id="push-1"))
    assert again.accepted and again.duplicate
    expect(
        grpc.StatusCode.ALREADY_EXISTS,
        "already pushed",
        lambda: a.push_raw(upload(task, specs, good, request_id="push-2")),
    )
    unchanged(cluster, sha)  # b has not delivered, so the round is still open

    # Once b delivers, the round completes with exactly one update from each.
    assert b.push_raw(upload(btask, specs, good)).accepted
    deadline = time.monotonic() + 10
    while cluster.status()["completed_rounds"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    (r1,) = [
        r for r in cluster.status()["rounds"] if r["round"] == 1 and r["status"] == "completed"
    ]
    assert sorted(r1["participants"]) == sorted([a.conn.node_id, b.conn.node_id])


def test_unknown_client_and_bad_credentials(cluster: Cluster) -> None:
    stub = fleet_pb2_grpc.FleetStub(grpc.insecure_channel(cluster.address))
    expect(
        grpc.StatusCode.UNAUTHENTICATED,
        "missing session token",
        lambda: stub.PullTask(fleet_pb2.PullTaskRequest(), timeout=10),
    )
    expect(
        grpc.StatusCode.UNAUTHENTICATED,
        "unknown or expired",
        lambda: stub.PullTask(
            fleet_pb2.PullTaskRequest(), metadata=((SESSION_KEY, b"x" * 32),), timeout=10
        ),
    )
    ident = NodeIdentity.generate()
    now = int(time.time() * 1000)

    def challenge() -> bytes:
        return stub.JoinChallenge(fleet_pb2.JoinChallengeRequest(), timeout=10).challenge

    fresh = challenge()
    forged = fleet_pb2.JoinRequest(
        request_id="j",
        public_key=ident.public_key,
        timestamp_ms=now,
        signature=NodeIdentity.generate().sign_join("j", now, 1, fresh),
        num_samples=1,
        challenge=fresh,
    )
    expect(
        grpc.StatusCode.UNAUTHENTICATED,
        "signature does not verify",
        lambda: stub.Join(forged, timeout=10),
    )
    short_key = fleet_pb2.JoinRequest(
        request_id="j", public_key=b"abc", timestamp_ms=now, num_samples=1
    )
    expect(grpc.StatusCode.UNAUTHENTICATED, "32 bytes", lambda: stub.Join(short_key, timeout=10))
    old = now - 3600_000
    stale = fleet_pb2.JoinRequest(
        request_id="j",
        public_key=ident.public_key,
        timestamp_ms=old,
        signature=ident.sign_join("j", old, 1, fresh),
        num_samples=1,
        challenge=fresh,
    )
    expect(grpc.StatusCode.UNAUTHENTICATED, "timestamp", lambda: stub.Join(stale, timeout=10))
    invented = bytes(32)
    unchallenged = fleet_pb2.JoinRequest(
        request_id="j",
        public_key=ident.public_key,
        timestamp_ms=now,
        signature=ident.sign_join("j", now, 1, invented),
        num_samples=1,
        challenge=invented,
    )
    expect(
        grpc.StatusCode.UNAUTHENTICATED,
        "challenge unknown or already used",
        lambda: stub.Join(unchallenged, timeout=10),
    )
    fresh = challenge()  # the forged Join above did not spend it: only a verified Join does
    wrong = fleet_pb2.JoinRequest(
        request_id="j",
        public_key=ident.public_key,
        timestamp_ms=now,
        signature=ident.sign_join("j", now, 1, fresh),
        num_samples=1,
        input_shape=[1, 28, 28],
        challenge=fresh,
    )
    expect(grpc.StatusCode.INVALID_ARGUMENT, "expects", lambda: stub.Join(wrong, timeout=10))


def test_fetch_unknown_model_is_not_found(cluster: Cluster, nodes: tuple[Node, Node]) -> None:
    a, _ = nodes
    with pytest.raises(errors.UnknownEntity):
        a.conn.fetch_model("ab" * 32, 1 << 20)
    short = fleet_pb2.FetchModelRequest(model_sha256=b"\x01\x02")
    expect(
        grpc.StatusCode.INVALID_ARGUMENT,
        "",
        lambda: list(a.stub.FetchModel(short, metadata=a.md, timeout=10)),
    )


def test_bad_forget_messages_are_refused_and_change_nothing(
    cluster: Cluster, nodes: tuple[Node, Node]
) -> None:
    a, b = nodes

    def forget(method: int) -> fleet_pb2.ForgetReply:
        msg = fleet_pb2.ForgetRequest(request_id=uuid.uuid4().hex, forget_method=method)
        return a.stub.ForgetMe(msg, metadata=a.md, timeout=10)

    expect(grpc.StatusCode.INVALID_ARGUMENT, "unknown forget method 42", lambda: forget(42))
    assert cluster.status()["forget_requests"] == []  # nothing recorded

    def report(node: Node, **kw: Any) -> fleet_pb2.ForgetRequestInfo:
        msg = fleet_pb2.ForgetReport(request_id=uuid.uuid4().hex, **kw)
        return node.stub.ReportForget(msg, metadata=node.md, timeout=10)

    expect(
        grpc.StatusCode.NOT_FOUND,
        "unknown forget request",
        lambda: report(a, forget_id="0" * 32, failed=fleet_pb2.ForgetFailure(reason="x")),
    )
    # A request of a's, unlearning (no round is open, so it starts at once; none completes
    # while nobody uploads): bad reports must leave it exactly as it is.
    forget_id = forget(fleet_pb2.FORGET_METHOD_PGA).forget_id
    status = cluster.wait_for(
        lambda s: s["forget_requests"][0]["state"] == "unlearning", 30, "the forget to start"
    )
    before = status["forget_requests"]
    step = fleet_pb2.ForgetStep(gradient_evaluations=1, metrics={"objective": float("nan")})
    nan_evidence = fleet_pb2.ForgetEvidence(mia_auc=float("nan"), forget_acc=1, held_out_acc=1)
    good_evidence = fleet_pb2.ForgetEvidence(mia_auc=0.5, forget_acc=1, held_out_acc=1)
    sha = bytes.fromhex(cluster.status()["model_sha256"])
    for code, match, kw in [
        (grpc.StatusCode.INVALID_ARGUMENT, "must hold progress, done, evidence", {}),
        (grpc.StatusCode.INVALID_ARGUMENT, "objective is nan", {"progress": step}),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "mia_auc is nan",
            {"evidence": nan_evidence, "evidence_model_sha256": sha},
        ),
        (
            grpc.StatusCode.INVALID_ARGUMENT,
            "name the model it was measured on",
            {"evidence": fleet_pb2.ForgetEvidence(mia_auc=0.5)},
        ),
        (
            grpc.StatusCode.FAILED_PRECONDITION,
            "is unlearning, not verifying",
            {"evidence": good_evidence, "evidence_model_sha256": sha},
        ),
    ]:
        expect(code, match, lambda kw=kw: report(a, forget_id=forget_id, **kw))
    expect(
        grpc.StatusCode.PERMISSION_DENIED,
        "belongs to another node",
        lambda: report(b, forget_id=forget_id, failed=fleet_pb2.ForgetFailure(reason="x")),
    )
    assert cluster.status()["forget_requests"] == before
