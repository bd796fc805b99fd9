"""gRPC servicers: thin adapters that decode, call the runtime, and encode.

The upload assembler lives here at the edge, so only a whole payload whose length and SHA-256
match reach the coordinator.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import grpc

from forsaken.common import tls, wire, wire_forget, wire_secagg
from forsaken.common.certs import Role, role_of
from forsaken.common.chunking import PayloadAssembler, PayloadHeader
from forsaken.common.errors import InvalidPayload, NotAuthenticated, PermissionDenied
from forsaken.common.forget_receipt import Receipt
from forsaken.common.forget_status import ForgetStatus
from forsaken.common.identity import verify_join
from forsaken.common.rpc_errors import rpc_method, stream_method
from forsaken.common.structure import check_agreement
from forsaken.common.tensors import TensorSpec
from forsaken.common.types import ModelSpec
from forsaken.common.wire_round_tasks import task_to_proto
from forsaken.server.coordinator import Coordinator
from forsaken.server.join_challenges import ChallengeBook
from forsaken.server.ledger import ForgetRecord, Ledger, RoundRecord
from forsaken.server.limits import CallQuota, RateLimiter
from forsaken.server.metrics import ServerMetrics
from forsaken.server.rounds import Submission
from forsaken.server.runtime import ServerRuntime
from forsaken.server.stream_watchdog import StreamWatchdog
from forsaken.v1 import admin_pb2, admin_pb2_grpc, fleet_pb2, fleet_pb2_grpc, secagg_pb2

log = logging.getLogger(__name__)

SESSION_KEY = wire.SESSION_KEY
MAX_JOIN_SKEW_MS = 5 * 60 * 1000


def session_token(context: grpc.ServicerContext) -> bytes | None:
    for key, value in context.invocation_metadata():
        if key == SESSION_KEY:
            return value if isinstance(value, bytes) else value.encode()
    return None


class FleetServicer(fleet_pb2_grpc.FleetServicer):
    def __init__(
        self,
        runtime: ServerRuntime,
        model_spec: ModelSpec,
        *,
        poll_timeout_s: float,
        max_payload_bytes: int,
        mtls: bool = False,
        metrics: ServerMetrics | None = None,
        join_limit: RateLimiter | None = None,
        forget_limit: RateLimiter | None = None,
        max_clients: int = 1_000_000,
        quota: CallQuota | None = None,
        watchdog: StreamWatchdog | None = None,
        challenges: ChallengeBook | None = None,
        enrolled: frozenset[str] | None = None,
        structure: tuple[TensorSpec, ...] = (),
    ) -> None:
        self.runtime = runtime
        self.model_spec = model_spec
        # The federation's model tensors with real dtypes; empty: Joins are not checked.
        self.structure = structure
        self.poll_timeout_s = poll_timeout_s
        self.max_payload_bytes = max_payload_bytes
        self.mtls = mtls
        self.metrics = metrics
        self.join_limit = join_limit
        self.forget_limit = forget_limit
        self.max_clients = max_clients
        self.quota = quota
        self.watchdog = watchdog
        self.challenges = challenges or ChallengeBook(time.time)
        self.enrolled = enrolled  # None: any node with a valid Join (and certificate) may join

    @contextmanager
    def _long_call(
        self, node: str, kind: str, context: grpc.ServicerContext
    ) -> Iterator[Callable[[], None]]:
        """Hold a quota slot for a long call and, for streams, an idle deadline; yields the
        `touch` to call whenever the stream moves."""
        with self.quota.hold(node, kind) if self.quota else nullcontext():
            if self.watchdog is None or kind == "poll":
                yield lambda: None
                return
            with self.watchdog.watch(context, f"{kind} of node {node}") as touch:
                yield touch

    def _node(self, context: grpc.ServicerContext) -> str:
        node = self.runtime.sessions.authenticate(session_token(context))
        self.runtime.read(lambda c, _: c.registry.check_admitted(node))
        if self.mtls:
            # A session token is only good from the TLS identity that opened it.
            peer = tls.peer_common_name(context)
            if peer != node:
                raise PermissionDenied(f"TLS certificate {peer!r} does not belong to node {node}")
        return node

    @rpc_method
    def JoinChallenge(
        self, request: fleet_pb2.JoinChallengeRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.JoinChallengeReply:
        challenge, expires = self.challenges.issue()
        return fleet_pb2.JoinChallengeReply(
            challenge=challenge, expires_unix_ms=int(expires * 1000)
        )

    @rpc_method
    def Join(
        self, request: fleet_pb2.JoinRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.JoinReply:
        if abs(request.timestamp_ms - self.runtime.now_ms()) > MAX_JOIN_SKEW_MS:
            raise NotAuthenticated("join timestamp is more than 5 minutes from the server's clock")
        if not request.request_id:
            raise InvalidPayload("request_id is required")
        node_id = verify_join(
            request.public_key,
            request.signature,
            request.request_id,
            request.timestamp_ms,
            request.num_samples,
            request.challenge,
        )
        # Spent only by a Join that verifies: nobody can burn another node's challenge.
        self.challenges.redeem(request.challenge)
        if self.mtls and (peer := tls.peer_common_name(context)) != node_id:
            raise PermissionDenied(f"TLS certificate {peer!r} does not belong to node {node_id}")
        if self.enrolled is not None and node_id not in self.enrolled:
            raise PermissionDenied(
                f"node {node_id} is not enrolled in this federation (see the server's "
                "--allow-nodes file)"
            )
        self._check_shape(request)
        if self.structure:
            check_agreement(
                self.structure,
                tuple(wire.tensor_spec_from_proto(t) for t in request.model_tensors),
                request.model_digest,
            )
        if self.join_limit is not None:
            self.join_limit.check(node_id)
        samples, limit = max(0, request.num_samples), self.max_clients
        self.runtime.call(
            lambda c, now: c.registry.join(node_id, request.public_key, samples, now, limit)
        )
        session = self.runtime.sessions.open(node_id, request.request_id)
        return fleet_pb2.JoinReply(
            node_id=node_id,
            session_token=session.token,
            model=wire.model_spec_to_proto(self.model_spec),
            poll_timeout_s=int(self.poll_timeout_s),
        )

    def _check_shape(self, request: fleet_pb2.JoinRequest) -> None:
        shape = tuple(request.input_shape)
        if shape and shape != self.model_spec.input_shape:
            raise InvalidPayload(
                f"node data has shape {shape}; the federation's model expects "
                f"{self.model_spec.input_shape}"
            )
        if request.num_classes and request.num_classes > self.model_spec.num_classes:
            raise InvalidPayload(
                f"node data has {request.num_classes} classes; the model has "
                f"{self.model_spec.num_classes}"
            )

    @rpc_method
    def PullTask(
        self, request: fleet_pb2.PullTaskRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.Task:
        node = self._node(context)
        remaining = context.time_remaining()
        timeout = (
            self.poll_timeout_s
            if remaining is None
            else max(0.0, min(self.poll_timeout_s, remaining - 1.0))
        )
        with self._long_call(node, "poll", context):
            task = self.runtime.poll(node, max(0, request.num_samples), timeout)
        return task_to_proto(task, self.model_spec)

    @stream_method
    def FetchModel(
        self, request: fleet_pb2.FetchModelRequest, context: grpc.ServicerContext
    ) -> Iterator:
        node = self._node(context)
        sha = request.model_sha256.hex()
        with self._long_call(node, "download", context) as touch:
            # The payload is content-addressed by `sha` (checkpoints verify it on read), so the
            # digest is known without hashing tens of MB again for every fetch.
            payload = self.runtime.read(lambda c, _: c.model.payload(sha))
            tensors = self.runtime.coordinator.tensors
            header = PayloadHeader(tensors, len(payload), bytes.fromhex(sha))
            if self.metrics is not None:
                self.metrics.bytes_sent.inc(len(payload))
            for chunk in wire.payload_chunks(header, payload):
                yield chunk
                touch()  # the peer took the chunk: flow control let it through

    @rpc_method
    def PushUpdate(
        self, request_iterator: Iterator[fleet_pb2.UploadChunk], context: grpc.ServicerContext
    ) -> fleet_pb2.PushReply:
        node = self._node(context)
        with self._long_call(node, "upload", context) as touch:
            header, payload = self._assemble(node, request_iterator, touch)
        if payload is None:  # a retry of an upload the server already has
            return fleet_pb2.PushReply(accepted=True, duplicate=True)
        if self.metrics is not None:
            self.metrics.bytes_received.inc(len(payload))
        submission = Submission(
            request_id=header.request_id,
            task_id=header.task_id,
            round=header.round,
            base_model_sha256=header.base_model_sha256.hex(),
            num_samples=header.num_samples,
            metrics=wire.metrics_from_proto(header.metrics),
            tensors=wire.payload_header_from_proto(header.payload).tensors,
            payload=payload,
        )
        outcome = self.runtime.call(lambda c, now: c.submit(node, submission, now), then_tick=True)
        return fleet_pb2.PushReply(accepted=outcome.accepted, duplicate=outcome.duplicate)

    def _assemble(
        self, node: str, chunks: Iterator[fleet_pb2.UploadChunk], touch: Callable[[], None]
    ) -> tuple[fleet_pb2.UploadHeader, bytes | None]:
        first = next(chunks, None)
        if first is None or first.WhichOneof("part") != "header":
            raise InvalidPayload("upload stream must start with an UploadHeader")
        header = first.header
        if not header.request_id:
            raise InvalidPayload("request_id is required")
        payload_header = wire.payload_header_from_proto(header.payload)
        assembler = PayloadAssembler(payload_header, self.max_payload_bytes)  # checks the size
        # Before a byte is buffered: the node must have this open task, and the header must
        # describe exactly what that task expects, so an upload can never buffer more.
        duplicate = self.runtime.read(
            lambda c, _: c.admit_upload(
                node, header.round, header.task_id, header.request_id, payload_header.tensors
            )
        )
        if duplicate:
            return header, None
        for chunk in chunks:
            touch()
            if chunk.WhichOneof("part") != "data":
                raise InvalidPayload("only data chunks may follow the upload header")
            assembler.add(chunk.data)
        return header, assembler.finish()

    @rpc_method
    def ForgetMe(
        self, request: fleet_pb2.ForgetRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.ForgetReply:
        node = self._node(context)
        limit = self.forget_limit
        # A rate-limit token is spent only on a valid, new request: refusals and retries cost none.
        admit = None if limit is None else lambda: limit.check(node)
        ids = tuple(request.sample_ids)
        method = wire_forget.optional_method_from_proto(request.forget_method) or ""

        def ask(c: Coordinator, now: int) -> tuple[ForgetRecord, bool]:
            c.registry.seen(node, None, now)
            most = c.registry.most_declared(node)  # a node cannot forget more than it had
            return c.forgets.request(
                node,
                request.node_id,
                request.request_id,
                ids,
                method,
                now,
                max_samples=most,
                admit=admit,
            )

        record, _ = self.runtime.call(ask)
        return fleet_pb2.ForgetReply(
            forget_id=record.forget_id, forget_state=wire_forget.state_to_proto(record.state)
        )

    @rpc_method
    def GetForgetStatus(
        self, request: fleet_pb2.ForgetStatusRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.ForgetRequestInfo:
        node = self._node(context)
        record = self.runtime.read(lambda c, _: c.forgets.get(node, request.forget_id))
        return forget_to_proto(record)

    @rpc_method
    def ReportForget(
        self, request: fleet_pb2.ForgetReport, context: grpc.ServicerContext
    ) -> fleet_pb2.ForgetRequestInfo:
        node = self._node(context)
        report = wire_forget.report_from_proto(request)
        record = self.runtime.call(lambda c, now: c.forget_rounds.report(node, report, now))
        return forget_to_proto(record)

    @rpc_method
    def SendSecAgg(
        self, request: secagg_pb2.SecAggClientMessage, context: grpc.ServicerContext
    ) -> secagg_pb2.SecAggAck:
        node = self._node(context)
        if not request.request_id:
            raise InvalidPayload("request_id is required")
        if self.metrics is not None:
            self.metrics.bytes_received.inc(request.ByteSize())
        message = wire_secagg.client_message_from_proto(request)
        outcome = self.runtime.call(
            lambda c, now: c.secagg_message(
                node, request.round, request.task_id, request.request_id, message, now
            ),
            then_tick=True,
        )
        return secagg_pb2.SecAggAck(duplicate=outcome.duplicate)

    @rpc_method
    def Leave(
        self, request: fleet_pb2.LeaveRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.LeaveReply:
        node = self._node(context)
        self.runtime.leave(node)
        return fleet_pb2.LeaveReply()


def round_to_proto(r: RoundRecord) -> admin_pb2.RoundInfo:
    return admin_pb2.RoundInfo(
        round=r.round,
        status=r.status,
        attempt=r.attempt,
        participants=list(r.participants),
        selected=list(r.selected),
        test_acc=r.test_acc if r.test_acc is not None else float("nan"),
        test_loss=r.test_loss if r.test_loss is not None else float("nan"),
        duration_s=r.duration_s,
        model_sha256=bytes.fromhex(r.model_sha256) if r.model_sha256 else b"",
        reason=r.reason,
        total_samples=r.total_samples,
        finished_unix_ms=r.finished_ms,
        metrics=wire.metrics_to_proto(r.metrics),
    )


def forget_to_proto(f: ForgetRecord) -> fleet_pb2.ForgetRequestInfo:
    status = ForgetStatus(
        forget_id=f.forget_id,
        node_id=f.node_id,
        method=f.method,
        state=f.state,
        reason=f.reason,
        created_ms=f.created_ms,
        updated_ms=f.updated_ms,
        num_samples=len(f.sample_ids),
        initiated_by=f.initiated_by,
        receipt=Receipt.from_json(f.receipt_json),  # the ledger stores it as JSON
    )
    return wire_forget.status_to_proto(status)


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(
        self,
        runtime: ServerRuntime,
        ledger: Ledger,
        *,
        secure_aggregation: bool,
        require_operator: bool = False,
    ) -> None:
        self.runtime = runtime
        self.ledger = ledger
        self.secure_aggregation = secure_aggregation
        self.require_operator = require_operator

    def _operator(self, context: grpc.ServicerContext) -> str:
        """Only operators use the Admin API: holders of an operator certificate under mutual
        TLS; without TLS, only callers on the server's own machine (loopback), so a server
        started with --insecure never exposes it to the network."""
        if not self.require_operator:
            if not tls.is_loopback(context.peer()):
                raise PermissionDenied(
                    "without TLS the Admin API answers only on loopback; start the server "
                    "with --tls-* and use an operator certificate"
                )
            return "loopback"
        peer = tls.peer_common_name(context)
        if peer is None or role_of(peer) is not Role.OPERATOR:
            raise PermissionDenied(f"the Admin API needs an operator certificate, not {peer!r}")
        return peer

    @rpc_method
    def GetStatus(
        self, request: admin_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ServerStatus:
        self._operator(context)
        view = self.runtime.read(lambda c, now: c.status(now))
        return admin_pb2.ServerStatus(
            phase=view.phase.value,
            current_round=view.current_round,
            completed_rounds=view.completed_rounds,
            target_rounds=view.target_rounds,
            connected_clients=view.connected,
            model_sha256=bytes.fromhex(view.model_sha256),
            model=wire.model_spec_to_proto(self.runtime.coordinator.model.model_spec),
            last_abort_reason=view.last_abort_reason,
            last_test_acc=view.last_test_acc if view.last_test_acc is not None else float("nan"),
            secure_aggregation=self.secure_aggregation,
            uptime_s=int(time.time() - self.runtime.started),
            secagg_stage=view.secagg_stage,
        )

    @rpc_method
    def ListRounds(
        self, request: admin_pb2.ListRoundsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListRoundsReply:
        self._operator(context)
        records = self.ledger.rounds(limit=request.limit or None)
        return admin_pb2.ListRoundsReply(rounds=[round_to_proto(r) for r in records])

    @rpc_method
    def ListClients(
        self, request: admin_pb2.ListClientsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListClientsReply:
        self._operator(context)
        faults = self.runtime.coordinator.registry.faults
        clients = self.ledger.clients()
        # The ledger holds what a node declared at its last Join; the registry, in memory,
        # its last call and what it declared then (a node that forgot all its data declares 0).
        live, contacts = self.runtime.read(
            lambda c, now: (set(c.registry.live(now)), c.registry.contacts())
        )
        infos = []
        for c in clients:
            rounds = self.ledger.contributions(c.node_id)
            last = faults.last(c.node_id)
            seen_ms, samples = contacts.get(c.node_id, (c.last_seen_ms, c.num_samples))
            infos.append(
                admin_pb2.ClientInfo(
                    node_id=c.node_id,
                    connected=c.node_id in live,
                    num_samples=c.num_samples if samples is None else samples,
                    rounds_contributed=len(rounds),
                    first_round=rounds[0] if rounds else 0,
                    last_seen_unix_ms=seen_ms,
                    revoked=c.revoked,
                    quarantine=c.quarantine,
                    recent_faults=faults.count(c.node_id),
                    last_fault=last.reason if last else "",
                )
            )
        return admin_pb2.ListClientsReply(clients=infos)

    @rpc_method
    def RevokeClient(
        self, request: admin_pb2.RevokeClientRequest, context: grpc.ServicerContext
    ) -> admin_pb2.RevokeClientReply:
        self._operator(context)
        already = self.runtime.call(lambda c, _: c.registry.revoke(request.node_id, request.reason))
        return admin_pb2.RevokeClientReply(already_revoked=already)

    @rpc_method
    def ReleaseClient(
        self, request: admin_pb2.ReleaseClientRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ReleaseClientReply:
        self._operator(context)
        released = self.runtime.call(lambda c, _: c.registry.release(request.node_id))
        return admin_pb2.ReleaseClientReply(was_quarantined=released)

    @rpc_method
    def ForgetClient(
        self, request: admin_pb2.ForgetClientRequest, context: grpc.ServicerContext
    ) -> fleet_pb2.ForgetRequestInfo:
        operator = self._operator(context)
        method = wire_forget.optional_method_from_proto(request.forget_method) or ""
        record, _ = self.runtime.call(
            lambda c, now: c.forget_rounds.operator_request(
                operator, request.node_id, request.request_id, method, request.reason, now
            )
        )
        return forget_to_proto(record)

    @rpc_method
    def ListForgetRequests(
        self, request: admin_pb2.ListForgetRequestsRequest, context: grpc.ServicerContext
    ) -> admin_pb2.ListForgetRequestsReply:
        self._operator(context)
        return admin_pb2.ListForgetRequestsReply(
            requests=[forget_to_proto(f) for f in self.ledger.forgets()]
        )
