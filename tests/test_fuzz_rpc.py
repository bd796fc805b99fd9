"""Property-based fuzzing of every Fleet and Admin RPC of a live server process.

Hypothesis builds random and malformed requests (random protobuf fields, upload chunk
sequences, undecodable bytes, truncated or corrupted encodings) and sends them with no
session, a valid session, an expired one or a random token. After every example:

* the server process is still running;
* the reply is OK or a gRPC status with a non-empty details string, never UNKNOWN, never
  DEADLINE_EXCEEDED (a hung handler) and never INTERNAL: bytes that do not decode get
  INVALID_ARGUMENT from the server's DecodeGuard;
* without a valid session every Fleet call but Join is UNAUTHENTICATED;
* the model (Admin `model_sha256`, `completed_rounds`), every ledger row but those of the
  nodes our own signed Joins created (their client rows, forget requests and request
  records), and the checkpoint files are exactly as before the fuzzing.

The methods come from the service descriptors, so an RPC added later is fuzzed too (with
generic messages built from its descriptor). The server runs secure aggregation with
`--rounds 0 --min-clients 50`: no round can start, so any change is the fuzz input's doing.
A separate test fuzzes a `--min-clients 2` server, then runs a real round on it.
"""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from forsaken.client.transport import SESSION_KEY, FleetConnection
from forsaken.common import errors
from forsaken.common.identity import NodeIdentity
from forsaken.common.rpc_errors import rpc_method
from forsaken.v1 import admin_pb2, admin_pb2_grpc, common_pb2, fleet_pb2, fleet_pb2_grpc, secagg_pb2
from tests.cluster import Cluster
from tests.test_tls_auth import spawn_detached

pytestmark = pytest.mark.slow

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CALL_TIMEOUT_S = 15.0
# grpcio's own answer to a request that does not parse as the method's message.
# How a call's session token is chosen; resolved against the live fuzzer when it is sent.
TOKEN_KINDS = ("none", "valid", "expired", "random32", "random")
# String values that stand for ids known only at run time; replaced when a request is sent.
SELF, OTHER, FORGET, TASK = "@self-node", "@other-node", "@own-forget", "@own-task"


def _service_methods() -> dict[str, tuple[str, type[Message], str]]:
    """name -> (path, request class, cardinality) for every Fleet and Admin method."""
    out = {}
    for module, name in ((fleet_pb2, "Fleet"), (admin_pb2, "Admin")):
        service = module.DESCRIPTOR.services_by_name[name]
        for m in service.methods:
            cardinality = {
                (False, False): "unary",
                (False, True): "server_stream",
                (True, False): "client_stream",
                (True, True): "bidi",
            }[(m.client_streaming, m.server_streaming)]
            cls = message_factory.GetMessageClass(m.input_type)
            out[m.name] = (f"/{service.full_name}/{m.name}", cls, cardinality)
    return out


METHODS = _service_methods()
ADMIN_METHODS = frozenset(m.name for m in admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods)


def _identity(b: bytes) -> bytes:
    return b


# ---- the fuzzer: a live server plus the sessions it needs -------------------------------


@dataclass(frozen=True)
class Snapshot:
    model_sha256: str
    completed_rounds: int
    tables: dict[str, list[tuple[Any, ...]]]
    checkpoints: dict[str, str]


@dataclass(frozen=True)
class Action:
    """One fuzz input: what to send to which method, and with which session token."""

    method: str
    token: str  # one of TOKEN_KINDS
    random_token: bytes = b""
    requests: tuple[Message, ...] = ()  # one, or a stream for client-streaming methods
    raw: tuple[bytes, ...] | None = None  # bytes sent as they are, bypassing the encoder
    join_with: int = -1  # pool identity that signs this Join at send time; -1: none
    join_skew_ms: int = 0  # the signed Join's timestamp, relative to the clock when sent
    join_signed_samples: int | None = None  # what the signature covers; None: num_samples

    def describe(self) -> str:
        kind = "raw" if self.raw is not None else "signed" if self.join_with >= 0 else "proto"
        return f"{self.method}/{kind}/token={self.token}"

    def encoded(self) -> tuple[bytes, ...]:
        if self.raw is not None:
            return self.raw
        return tuple(r.SerializeToString() for r in self.requests)


@dataclass
class Fuzzer:
    cluster: Cluster
    pool: tuple[NodeIdentity, ...] = ()
    legit: set[str] = field(default_factory=set)  # node ids our own signed Joins created
    expired_token: bytes = b""
    conn: FleetConnection | None = None
    needs_rejoin: bool = False
    other_node: str = ""  # a node that exists but is not ours to use: the expired one
    forget_ids: list[str] = field(default_factory=list)  # our own forget requests
    outcomes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, cluster: Cluster) -> Fuzzer:
        cluster.start_server()
        fz = cls(cluster, pool=tuple(NodeIdentity.generate() for _ in range(3)))
        fz.conn = FleetConnection(cluster.address, NodeIdentity.generate())
        fz.join()
        # A token that was valid once: join a throwaway node, then leave.
        gone = FleetConnection(cluster.address, NodeIdentity.generate())
        try:
            gone.join(10, "digits", (1, 8, 8), 10)
            assert gone.token is not None and gone.node_id is not None
            fz.legit.add(gone.node_id)
            fz.other_node = gone.node_id
            fz.expired_token = gone.token
            gone.leave()
        finally:
            gone.close()
        return fz

    def join(self) -> None:
        assert self.conn is not None
        self.legit.add(self.conn.join(100, "digits", (1, 8, 8), 10))
        self.needs_rejoin = False

    @property
    def channel(self) -> grpc.Channel:
        assert self.conn is not None
        return self.conn.channel

    def valid_token(self) -> bytes:
        if self.needs_rejoin:
            self.join()
        assert self.conn is not None and self.conn.token is not None
        return self.conn.token

    def token(self, action: Action) -> bytes | None:
        return {
            "none": lambda: None,
            "valid": self.valid_token,
            "expired": lambda: self.expired_token,
        }.get(action.token, lambda: action.random_token)()

    # ---- the state that fuzz input must not change --------------------------------------

    def snapshot(self) -> Snapshot:
        status = admin_pb2_grpc.AdminStub(self.channel).GetStatus(
            admin_pb2.StatusRequest(), timeout=CALL_TIMEOUT_S
        )
        state = self.cluster.root / "server"
        db = sqlite3.connect(f"file:{state / 'ledger.sqlite'}?mode=ro", uri=True, timeout=10)
        try:
            tables = {}
            names = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
            for (table,) in names:
                columns = [c[1] for c in db.execute(f"PRAGMA table_info({table})")]
                rows = db.execute(f"SELECT * FROM {table}").fetchall()
                if "node_id" in columns:  # rows of our own nodes may change legitimately
                    at = columns.index("node_id")
                    rows = [r for r in rows if r[at] not in self.legit]
                tables[table] = sorted(rows, key=repr)
        finally:
            db.close()
        checkpoints = {
            str(p.relative_to(state)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((state / "checkpoints").rglob("*"))
            if p.is_file()
        }
        return Snapshot(status.model_sha256.hex(), status.completed_rounds, tables, checkpoints)

    def assert_unchanged(self, before: Snapshot, action: object) -> None:
        after = self.snapshot()
        assert after.model_sha256 == before.model_sha256, action
        assert after.completed_rounds == before.completed_rounds, action
        assert set(after.tables) == set(before.tables), action
        for table, rows in before.tables.items():
            assert after.tables[table] == rows, (table, action)
        assert after.checkpoints == before.checkpoints, ("checkpoints", action)

    def alive(self) -> None:
        server = self.cluster.server
        assert server is not None
        assert server.poll() is None, (
            f"server died with code {server.returncode}\n{self.cluster.logs()}"
        )

    # ---- sending ------------------------------------------------------------------------

    def run(self, action: Action) -> tuple[grpc.StatusCode, str]:
        if action.join_with >= 0:
            action = self._sign(action)
        token = self.token(action)
        action = replace(action, requests=tuple(self._resolve(r) for r in action.requests))
        metadata = () if token is None else ((SESSION_KEY, token),)
        try:
            reply = self._send(action, metadata)
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        if code is grpc.StatusCode.OK:
            if action.join_with >= 0:
                self.legit.add(self.pool[action.join_with].node_id)
            # Raw bytes too: an empty or mangled message can still decode to a LeaveRequest.
            if action.method == "Leave" and action.token == "valid":
                self.needs_rejoin = True
            if action.method == "ForgetMe" and action.token == "valid":
                forget_id = fleet_pb2.ForgetReply.FromString(reply or b"").forget_id
                self.forget_ids.append(forget_id)
        key = f"{action.method} {code.name}"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        event(f"{action.describe()} -> {code.name}")
        self.alive()
        check_reply(action, code, details)
        return code, details

    def _resolve(self, msg: Message) -> Message:
        """A copy of `msg` with the run-time ids put in for their placeholders."""
        assert self.conn is not None and self.conn.node_id is not None
        own = self.conn.node_id
        values = {
            SELF: own,
            OTHER: self.other_node,
            FORGET: self.forget_ids[-1] if self.forget_ids else "0" * 32,
            TASK: f"r1.a0.{own[:12]}",
        }
        out = type(msg)()
        out.CopyFrom(msg)
        _substitute(out, values)
        return out

    def _sign(self, action: Action) -> Action:
        """A `signed_joins` action signed with its pool key at the moment it is sent."""
        (template,) = action.requests
        req = fleet_pb2.JoinRequest()
        req.CopyFrom(template)
        ident = self.pool[action.join_with]
        req.public_key = ident.public_key
        req.timestamp_ms = int(time.time() * 1000) + action.join_skew_ms
        signed = action.join_signed_samples
        stub = fleet_pb2_grpc.FleetStub(self.channel)
        req.challenge = stub.JoinChallenge(
            fleet_pb2.JoinChallengeRequest(), timeout=CALL_TIMEOUT_S
        ).challenge
        req.signature = ident.sign_join(
            req.request_id,
            req.timestamp_ms,
            req.num_samples if signed is None else signed,
            req.challenge,
        )
        return replace(action, requests=(req,))

    def _send(self, action: Action, metadata: tuple[tuple[str, bytes], ...]) -> bytes | None:
        """Send the action; the reply's bytes for a unary reply, else None."""
        path, _, cardinality = METHODS[action.method]
        messages = action.encoded()
        codec = {"request_serializer": _identity, "response_deserializer": _identity}
        kw: dict[str, Any] = {"metadata": metadata, "timeout": CALL_TIMEOUT_S}
        if cardinality == "client_stream":
            return self.channel.stream_unary(path, **codec)(iter(messages), **kw)
        if cardinality == "server_stream":
            list(self.channel.unary_stream(path, **codec)(messages[0], **kw))
            return None
        if cardinality == "bidi":
            list(self.channel.stream_stream(path, **codec)(iter(messages), **kw))
            return None
        return self.channel.unary_unary(path, **codec)(messages[0], **kw)

    def leave_all(self) -> None:
        """Every node our Joins created leaves, so that none of them is sampled for a round."""
        conn = FleetConnection(self.cluster.address, NodeIdentity.generate())
        try:
            for ident in self.pool:
                if ident.node_id in self.legit:
                    conn.identity = ident
                    conn.join(10, "digits", (1, 8, 8), 10)
                    conn.leave()
        finally:
            conn.close()
        assert self.conn is not None
        if not self.needs_rejoin:
            self.conn.leave()
            self.needs_rejoin = True

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.cluster.stop()


def _is_map(f: FieldDescriptor) -> bool:
    return f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def _substitute(msg: Message, values: dict[str, str]) -> None:
    for f, value in msg.ListFields():
        if _is_map(f):
            continue  # metric names: nothing there names a node, task or request
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            for sub in value if f.is_repeated else [value]:
                _substitute(sub, values)
        elif f.type == FieldDescriptor.TYPE_STRING:
            if f.is_repeated:
                value[:] = [values.get(v, v) for v in value]
            elif value in values:
                setattr(msg, f.name, values[value])


def check_reply(action: Action, code: grpc.StatusCode, details: str) -> None:
    what = f"{action.describe()}: {code.name} {details!r}\n{action!r}"
    if code is grpc.StatusCode.OK:
        return
    assert details, f"status without details: {what}"
    assert code is not grpc.StatusCode.UNKNOWN, what
    assert code is not grpc.StatusCode.DEADLINE_EXCEEDED, f"server hung: {what}"
    assert code is not grpc.StatusCode.INTERNAL, f"INTERNAL: {what}: {details}"
    undecodable = code is grpc.StatusCode.INVALID_ARGUMENT and "not a valid message" in details
    if undecodable:
        # Bytes that are no protobuf at all are refused by the edge before any handler runs.
        assert action.raw is not None, what
    elif action.token != "valid" and action.method not in ADMIN_METHODS | {"Join"}:
        # Authentication comes before anything else looks at the request.
        assert code is grpc.StatusCode.UNAUTHENTICATED, what


# ---- strategies -------------------------------------------------------------------------


def hex_id(n: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=n // 2, max_size=n // 2).map(bytes.hex)


ints64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ints32 = st.integers(min_value=-(2**31), max_value=2**31 - 1)
uints64 = st.integers(min_value=0, max_value=2**64 - 1)
uints32 = st.integers(min_value=0, max_value=2**32 - 1)
small_text = st.text(max_size=40)
# Random text, and ids that look right but name nothing: node ids, uuids, task ids.
ids = st.one_of(small_text, hex_id(32), st.uuids().map(lambda u: u.hex))
task_ids = st.one_of(
    small_text,
    st.just(TASK),
    st.builds(lambda r, a, n: f"r{r}.a{a}.{n}", st.integers(0, 5), st.integers(0, 3), hex_id(12)),
)
sha_bytes = st.one_of(st.binary(max_size=40), st.binary(min_size=32, max_size=32))
# About half the calls carry our valid session, so the fuzz gets past the session check.
token_kinds = st.one_of(st.just("valid"), st.sampled_from(TOKEN_KINDS))
random_tokens = st.one_of(st.binary(max_size=64), st.binary(min_size=32, max_size=32))
dims = st.one_of(st.integers(-3, 70), ints64)
now_ms = st.builds(lambda: int(time.time() * 1000))

_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
    FieldDescriptor.TYPE_INT64: ints64,
    FieldDescriptor.TYPE_SINT64: ints64,
    FieldDescriptor.TYPE_SFIXED64: ints64,
    FieldDescriptor.TYPE_UINT64: uints64,
    FieldDescriptor.TYPE_FIXED64: uints64,
    FieldDescriptor.TYPE_INT32: ints32,
    FieldDescriptor.TYPE_SINT32: ints32,
    FieldDescriptor.TYPE_SFIXED32: ints32,
    FieldDescriptor.TYPE_UINT32: uints32,
    FieldDescriptor.TYPE_FIXED32: uints32,
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_STRING: ids,
    FieldDescriptor.TYPE_BYTES: sha_bytes,
    FieldDescriptor.TYPE_ENUM: st.one_of(st.integers(0, 6), ints32),
}


def generic_message(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of a type, from its descriptor: a random subset of fields, random values."""
    cls = message_factory.GetMessageClass(descriptor)
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for f in descriptor.fields:
        if _is_map(f):  # a map is set from a dict of its key and value types
            key, val = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            optional[f.name] = st.dictionaries(_SCALARS[key.type], _SCALARS[val.type], max_size=3)
            continue
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            value: st.SearchStrategy[Any] = st.deferred(
                lambda f=f: generic_message(f.message_type, depth + 1)
            )
        else:
            value = _SCALARS[f.type]
        optional[f.name] = st.lists(value, max_size=4) if f.is_repeated else value
    return st.fixed_dictionaries({}, optional=optional).map(lambda kw: cls(**kw))


def tensor_specs() -> st.SearchStrategy[common_pb2.TensorSpec]:
    return st.builds(
        common_pb2.TensorSpec,
        name=st.one_of(st.sampled_from(["", "weight", "masked_input"]), small_text),
        shape=st.lists(dims, max_size=4),
        dtype=st.one_of(
            st.sampled_from(["", "float32", "float64", "uint32", "int64", "int8"]), small_text
        ),
    )


@st.composite
def upload_header(draw: st.DrawFn, data: bytes) -> fleet_pb2.UploadHeader:
    consistent = draw(st.booleans())  # the declared length and digest match the data
    metrics = st.builds(
        common_pb2.Metric, name=st.sampled_from(["", "loss", "acc"]), value=st.floats()
    )
    return fleet_pb2.UploadHeader(
        request_id=draw(ids),
        task_id=draw(task_ids),
        round=draw(st.one_of(st.integers(-2, 5), ints64)),
        base_model_sha256=draw(sha_bytes),
        num_samples=draw(ints64),
        metrics=draw(st.lists(metrics, max_size=4)),
        payload=common_pb2.PayloadHeader(
            tensors=draw(st.lists(tensor_specs(), max_size=3)),
            total_bytes=len(data) if consistent else draw(st.one_of(st.integers(0, 4096), uints64)),
            sha256=hashlib.sha256(data).digest() if consistent else draw(sha_bytes),
        ),
    )


@st.composite
def push_chunks(draw: st.DrawFn) -> tuple[fleet_pb2.UploadChunk, ...]:
    """Upload streams: nothing, data only, a header and its data, many headers, mixtures."""
    data = draw(st.binary(max_size=2048))
    parts: list[fleet_pb2.UploadChunk] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            parts.append(fleet_pb2.UploadChunk(header=draw(upload_header(data))))
        else:
            piece = draw(st.one_of(st.just(data), st.binary(max_size=1024)))
            parts.append(fleet_pb2.UploadChunk(data=piece))
    if draw(st.booleans()):  # the well-formed shape: one header, then the payload in pieces
        cut = draw(st.integers(0, len(data)))
        head = [fleet_pb2.UploadChunk(header=draw(upload_header(data)))]
        pieces = [fleet_pb2.UploadChunk(data=p) for p in (data[:cut], data[cut:]) if p]
        parts = [*head, *pieces, *parts]
    return tuple(parts)


def join_requests() -> st.SearchStrategy[fleet_pb2.JoinRequest]:
    return st.builds(
        fleet_pb2.JoinRequest,
        request_id=ids,
        public_key=st.one_of(st.binary(max_size=40), st.binary(min_size=32, max_size=32)),
        timestamp_ms=st.one_of(ints64, now_ms),
        signature=st.one_of(st.binary(max_size=80), st.binary(min_size=64, max_size=64)),
        num_samples=ints64,
        dataset=small_text,
        input_shape=st.lists(dims, max_size=4),
        num_classes=ints32,
    )


def secagg_messages() -> st.SearchStrategy[secagg_pb2.SecAggClientMessage]:
    keys32 = st.one_of(st.binary(max_size=40), st.binary(min_size=32, max_size=32))
    advertise = st.builds(
        secagg_pb2.SecAggAdvertiseKeys,
        index=uints32,
        cipher_public_key=keys32,
        mask_public_key=keys32,
        signature=st.binary(max_size=70),
    )
    share = st.builds(
        secagg_pb2.SecAggEncryptedShare,
        sender=uints32,
        recipient=uints32,
        ciphertext=st.binary(max_size=120),
    )
    revealed = st.builds(
        secagg_pb2.SecAggRevealedShare,
        owner=uints32,
        kind=st.one_of(st.integers(0, 3), uints32),
        share=st.binary(max_size=80),
    )
    stage = {
        "request_id": ids,
        "task_id": task_ids,
        "round": st.one_of(st.integers(-1, 3), ints64),
    }
    msg = secagg_pb2.SecAggClientMessage
    return st.one_of(
        st.builds(msg, **stage),
        st.builds(msg, advertise=advertise, **stage),
        st.builds(
            msg,
            share_keys=st.builds(secagg_pb2.SecAggShareKeys, shares=st.lists(share, max_size=5)),
            **stage,
        ),
        st.builds(
            msg,
            consistency=st.builds(
                secagg_pb2.SecAggConsistencySignature, signature=st.binary(max_size=80)
            ),
            **stage,
        ),
        st.builds(
            msg,
            unmask=st.builds(
                secagg_pb2.SecAggUnmaskResponse, shares=st.lists(revealed, max_size=5)
            ),
            **stage,
        ),
    )


forget_methods = st.integers(-1, len(fleet_pb2.ForgetMethod.values()) + 1)


def forget_reports(forget_ids: st.SearchStrategy[str]) -> st.SearchStrategy[Message]:
    """Each body the oneof may hold, and none; metrics with NaNs, infinities and odd names."""
    metrics = st.dictionaries(
        st.one_of(st.sampled_from(["objective", "gradient_evaluations"]), small_text),
        st.floats(),
        max_size=3,
    )
    step = st.builds(fleet_pb2.ForgetStep, gradient_evaluations=ints64, metrics=metrics)
    measured = st.one_of(st.none(), st.floats())
    evidence = st.builds(
        fleet_pb2.ForgetEvidence,
        mia_auc=measured,
        forget_acc=measured,
        held_out_acc=measured,
        extra=metrics,
    )
    head = {"request_id": ids, "forget_id": forget_ids}
    cls = fleet_pb2.ForgetReport
    return st.one_of(
        st.builds(cls, **head),
        st.builds(cls, **head, progress=step),
        st.builds(cls, **head, done=step),
        st.builds(cls, **head, evidence=evidence, evidence_model_sha256=sha_bytes),
        st.builds(cls, **head, failed=st.builds(fleet_pb2.ForgetFailure, reason=small_text)),
    )


def builds(cls: type[Message], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Message]:
    """st.builds over the fields the message type has: a crafted strategy naming a field that
    the proto no longer has degrades instead of breaking the run (the generic one covers)."""
    known = set(cls.DESCRIPTOR.fields_by_name)
    return st.builds(cls, **{k: v for k, v in fields.items() if k in known})


def _crafted(method: str) -> st.SearchStrategy[Message] | None:
    """Requests shaped by what each handler checks; None where the generic one suffices."""
    own_ids = st.one_of(ids, st.sampled_from(["", SELF, OTHER]))
    forget_ids = st.one_of(ids, st.just(FORGET))
    crafted: dict[str, Callable[[], st.SearchStrategy[Message]]] = {
        "Join": join_requests,
        "PullTask": lambda: st.builds(fleet_pb2.PullTaskRequest, num_samples=ints64),
        "FetchModel": lambda: st.builds(fleet_pb2.FetchModelRequest, model_sha256=sha_bytes),
        "ForgetMe": lambda: builds(
            fleet_pb2.ForgetRequest,
            request_id=ids,
            sample_ids=st.lists(st.one_of(st.integers(-2, 50), ints64), max_size=6),
            forget_method=forget_methods,  # beyond the last: a value this server does not know
            node_id=own_ids,
        ),
        "GetForgetStatus": lambda: builds(fleet_pb2.ForgetStatusRequest, forget_id=forget_ids),
        "ReportForget": lambda: forget_reports(forget_ids),
        "SendSecAgg": secagg_messages,
        "Leave": lambda: st.builds(fleet_pb2.LeaveRequest, request_id=ids),
        "ListRounds": lambda: st.builds(admin_pb2.ListRoundsRequest, limit=ints64),
        # Random and valid-looking ids, never a node our Joins created: revoking one of
        # those would be a legitimate change.
        "RevokeClient": lambda: st.builds(
            admin_pb2.RevokeClientRequest,
            node_id=st.one_of(ids, st.just(""), st.just("operator:admin")),
            reason=small_text,
        ),
        # Likewise never a joined node: releasing or forgetting one would be legitimate.
        "ReleaseClient": lambda: st.builds(
            admin_pb2.ReleaseClientRequest, node_id=st.one_of(ids, st.just(""))
        ),
        "ForgetClient": lambda: st.builds(
            admin_pb2.ForgetClientRequest,
            node_id=st.one_of(ids, st.just("")),
            request_id=ids,
            forget_method=forget_methods,
            reason=small_text,
        ),
    }
    make = crafted.get(method)
    return None if make is None else make()


def _with_short_node_id(message: Message) -> Message:
    """Node ids are 32 hex characters: 31 can never name a node our Joins created."""
    message.node_id = message.node_id[:31]  # type: ignore[attr-defined]
    return message


def requests_for(method: str) -> st.SearchStrategy[Message]:
    _, cls, _ = METHODS[method]
    generic = generic_message(cls.DESCRIPTOR)
    if method in ("RevokeClient", "ReleaseClient", "ForgetClient"):  # random ids (see _crafted)
        generic = generic.map(lambda m: _with_short_node_id(m))
    crafted = _crafted(method)
    return generic if crafted is None else st.one_of(crafted, generic)


def proto_actions(method: str) -> st.SearchStrategy[Action]:
    if method == "PushUpdate":
        requests: st.SearchStrategy[tuple[Message, ...]] = push_chunks()
    elif METHODS[method][2] in ("client_stream", "bidi"):
        requests = st.lists(requests_for(method), max_size=4).map(tuple)
    else:
        requests = requests_for(method).map(lambda r: (r,))
    return st.builds(
        Action,
        method=st.just(method),
        token=token_kinds,
        random_token=random_tokens,
        requests=requests,
    )


@st.composite
def signed_joins(draw: st.DrawFn, pool_size: int = 3) -> Action:
    """A Join that one of the pool's keys signs when it is sent, with random other fields;
    some signatures cover another sample count than the request states, some clocks are off."""
    request = fleet_pb2.JoinRequest(
        request_id=draw(st.one_of(st.uuids().map(lambda u: u.hex), small_text)),
        num_samples=draw(ints64),
        dataset=draw(st.sampled_from(["digits", "", "mnist5k"])),
        input_shape=draw(st.one_of(st.just([1, 8, 8]), st.lists(dims, max_size=3))),
        num_classes=draw(st.one_of(st.integers(-1, 12), ints32)),
    )
    return Action(
        method="Join",
        token=draw(token_kinds),
        random_token=draw(random_tokens),
        requests=(request,),
        join_with=draw(st.integers(0, pool_size - 1)),
        join_skew_ms=draw(st.one_of(st.integers(-1000, 1000), st.integers(-(10**9), 10**9))),
        join_signed_samples=draw(st.one_of(st.none(), ints64)),
    )


@st.composite
def raw_actions(draw: st.DrawFn) -> Action:
    """Bytes that bypass the encoder: random, or a valid encoding truncated or corrupted."""
    method = draw(st.sampled_from(sorted(METHODS)))
    _, _, cardinality = METHODS[method]

    def one_message() -> bytes:
        if draw(st.booleans()):
            return draw(st.binary(max_size=300))
        if method == "PushUpdate":
            encoded = b"".join(c.SerializeToString() for c in draw(push_chunks())[:1])
        else:
            encoded = draw(requests_for(method)).SerializeToString()
        edit = draw(st.sampled_from(["truncate", "flip", "insert", "as-is"]))
        if edit == "truncate" and encoded:
            return encoded[: draw(st.integers(0, len(encoded) - 1))]
        if edit == "flip" and encoded:
            i = draw(st.integers(0, len(encoded) - 1))
            return encoded[:i] + bytes([encoded[i] ^ draw(st.integers(1, 255))]) + encoded[i + 1 :]
        if edit == "insert":
            i = draw(st.integers(0, len(encoded)))
            return encoded[:i] + draw(st.binary(min_size=1, max_size=8)) + encoded[i:]
        return encoded

    streaming = cardinality in ("client_stream", "bidi")
    count = draw(st.integers(0, 5)) if streaming else 1
    return Action(
        method=method,
        token=draw(token_kinds),
        random_token=draw(random_tokens),
        raw=tuple(one_message() for _ in range(count)),
    )


def any_action(with_signed_joins: bool = True) -> st.SearchStrategy[Action]:
    return st.one_of(
        *(proto_actions(m) for m in sorted(METHODS)),
        *([signed_joins()] if with_signed_joins else []),
        raw_actions(),
    )


# ---- fixtures and the fuzz runs ---------------------------------------------------------


class SafeCluster(Cluster):
    """The Cluster helper, its daemons started without forsaken.launch.spawn's preexec_fn
    (see `spawn_detached`): this process is full of gRPC channels when it starts them."""

    def start_server(self) -> subprocess.Popen[bytes]:
        with mock.patch("forsaken.launch.spawn", spawn_detached):
            return super().start_server()

    def start_client(self, index: int, count: int, **opts: Any) -> subprocess.Popen[bytes]:
        with mock.patch("forsaken.launch.spawn", spawn_detached):
            return super().start_client(index, count, **opts)


def fuzz_cluster(root: Path, **opts: Any) -> Cluster:
    # Rate limits are not under test here; the fuzzer re-joins after each fuzzed Leave.
    limits = {"join-rate-per-min": 100_000, "forget-rate-per-min": 100_000}
    return SafeCluster(root, **{**limits, "poll-timeout-s": 0.2, **opts})


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    cluster = fuzz_cluster(
        tmp_path_factory.mktemp("fuzz"),
        aggregation="secure",
        rounds=0,
        # A short long-poll: no task ever comes here, and each valid PullTask waits it out.
        **{"min-clients": 50, "min-completed": 2, "poll-timeout-s": 0.05},
    )
    fz = Fuzzer.start(cluster)
    try:
        yield fz
    finally:
        fz.close()


@pytest.fixture(scope="module")
def baseline(fuzzer: Fuzzer) -> Snapshot:
    snap = fuzzer.snapshot()
    assert snap.completed_rounds == 0
    assert len(snap.model_sha256) == 64
    assert snap.checkpoints, "the server should have checkpointed its initial model"
    assert {"rounds", "clients", "forgets"} <= set(snap.tables)
    return snap


def fuzz(fz: Fuzzer, before: Snapshot, strategy: st.SearchStrategy[Action]) -> None:
    @FUZZ
    @given(action=strategy)
    def one(action: Action) -> None:
        fz.run(action)
        fz.assert_unchanged(before, action)

    one()


def test_every_rpc_is_fuzzed() -> None:
    """A guard against a service that silently loses methods from the descriptors."""
    assert {"Join", "PullTask", "FetchModel", "PushUpdate", "ForgetMe", "GetForgetStatus"} <= set(
        METHODS
    )
    assert {"SendSecAgg", "Leave"} <= set(METHODS)
    assert {
        "GetStatus",
        "ListRounds",
        "ListClients",
        "ListForgetRequests",
        "RevokeClient",
        "ReleaseClient",
        "ForgetClient",
    } == (ADMIN_METHODS & set(METHODS))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_fuzz_well_encoded_requests(method: str, fuzzer: Fuzzer, baseline: Snapshot) -> None:
    strategy = proto_actions(method)
    if method == "Join":
        strategy = st.one_of(strategy, signed_joins())
    fuzz(fuzzer, baseline, strategy)
    seen = {k.split()[1] for k in fuzzer.outcomes if k.split()[0] == method}
    if method == "Join":
        # Signed Joins got in, forged ones were refused, and bad shapes too.
        assert {"OK", "UNAUTHENTICATED", "INVALID_ARGUMENT"} <= seen, seen
    elif method == "JoinChallenge":
        assert seen == {"OK"}, seen  # anyone may ask; a challenge changes no state
    elif method not in ADMIN_METHODS:
        # The fuzz reached past the session check, not only into it.
        assert "UNAUTHENTICATED" in seen and len(seen) >= 2, seen


def test_fuzz_raw_bytes(fuzzer: Fuzzer, baseline: Snapshot) -> None:
    fuzz(fuzzer, baseline, raw_actions())


def test_server_still_serves_after_fuzzing(fuzzer: Fuzzer, baseline: Snapshot) -> None:
    fuzzer.alive()
    conn = FleetConnection(fuzzer.cluster.address, NodeIdentity.generate())
    try:
        fuzzer.legit.add(conn.join(10, "digits", (1, 8, 8), 10))
        specs, payload = conn.fetch_model(baseline.model_sha256, 1 << 24)
        assert hashlib.sha256(payload).hexdigest() == baseline.model_sha256 and specs
    finally:
        conn.close()
    fuzzer.assert_unchanged(baseline, "after the fuzz runs")
    log = (fuzzer.cluster.root / "logs" / "server.log").read_text()
    assert "unexpected error in" not in log


# ---- fuzzing, then a real round on the same server ----------------------------------------


def test_round_completes_after_fuzzing(tmp_path: Path) -> None:
    cluster = fuzz_cluster(
        tmp_path,
        aggregation="secure",
        rounds=1,
        **{"min-clients": 2, "min-completed": 2, "local-epochs": 1},
    )
    fz = Fuzzer.start(cluster)
    try:
        before = fz.snapshot()

        # Without Joins of other nodes: a second live node would start the round early.
        @settings(FUZZ, max_examples=80)
        @given(action=any_action(with_signed_joins=False))
        def burst(action: Action) -> None:
            fz.run(action)
            fz.assert_unchanged(before, action)

        burst()
        fz.leave_all()  # only the two real clients make up the round
        status = cluster.wait_for(lambda s: s["connected_clients"] == 0, 30, "fuzz nodes gone")
        assert status["completed_rounds"] == 0 and status["model_sha256"] == before.model_sha256
        for i in range(2):
            cluster.start_client(i, 2)
        # Completed rounds, not the phase: a forget request the fuzz legitimately made for our
        # node would keep the federation from "finished".
        status = cluster.wait_for(lambda s: s["completed_rounds"] >= 1, 120, "round 1")
        done = cluster.completed(status)[0]
        assert done["round"] == 1 and len(done["participants"]) == 2
        assert not set(done["participants"]) & fz.legit
        assert done["model_sha256"] != before.model_sha256
        fz.alive()
    finally:
        fz.close()


# ---- bugs, pinned ---------------------------------------------------------------------------


def _status_of(fn: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def test_undecodable_request_is_invalid_argument(fuzzer: Fuzzer) -> None:
    path, _, _ = METHODS["Join"]
    join = fuzzer.channel.unary_unary(
        path, request_serializer=_identity, response_deserializer=_identity
    )
    err = _status_of(lambda: join(b"\xff", timeout=10))
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())


class _Aborting:
    """A servicer method that rejects its request the way gRPC documents: context.abort."""

    @rpc_method
    def Call(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"domain":
            raise errors.InvalidPayload("a domain error")
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this release")
        return b""


def test_a_handlers_own_abort_keeps_its_status() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(_Aborting().Call)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("forsaken.test.Aborting", {"Call": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/forsaken.test.Aborting/Call")
            domain = _status_of(lambda: call(b"domain", timeout=10))
            assert domain.code() is grpc.StatusCode.INVALID_ARGUMENT  # this part works
            err = _status_of(lambda: call(b"other", timeout=10))
            assert err.code() is grpc.StatusCode.UNIMPLEMENTED, (err.code(), err.details())
    finally:
        server.stop(0).wait()
