"""The client's connection to the server: the only client module that imports grpc.

RPC failures are translated into domain errors so the daemon loop decides what to do
(retry with backoff, re-join, or drop a stale task) without knowing about gRPC.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from forsaken.common import errors, tls, wire, wire_forget, wire_secagg
from forsaken.common.chunking import PayloadAssembler, PayloadHeader, header_for
from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.forget_reports import ForgetReport, ReportBody
from forsaken.common.forget_states import RequestState
from forsaken.common.forget_status import ForgetStatus
from forsaken.common.identity import NodeIdentity
from forsaken.common.round_tasks import AnyTask, SecAggTask, TrainTask
from forsaken.common.tensors import TensorSpec
from forsaken.common.types import ModelSpec
from forsaken.common.wire_round_tasks import task_from_proto
from forsaken.v1 import fleet_pb2, fleet_pb2_grpc

SESSION_KEY = wire.SESSION_KEY
_CHUNK_LIMIT = 8 << 20

# gRPC status -> the domain error the daemon reacts to.
_ERROR_FOR: dict[grpc.StatusCode, type[errors.ForsakenError]] = {
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    grpc.StatusCode.CANCELLED: errors.Unavailable,
    grpc.StatusCode.UNAUTHENTICATED: errors.NotAuthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.FAILED_PRECONDITION: errors.StaleRequest,
    grpc.StatusCode.ALREADY_EXISTS: errors.DuplicateRequest,
    grpc.StatusCode.NOT_FOUND: errors.UnknownEntity,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidPayload,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.PayloadTooLarge,
    grpc.StatusCode.ABORTED: errors.ProtocolAborted,
    grpc.StatusCode.DATA_LOSS: errors.CorruptState,
}

T = TypeVar("T")


class RemoteError(errors.ForsakenError):
    """The server answered with a status this client has no specific reaction to."""


def _translate(exc: grpc.RpcError) -> errors.ForsakenError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    detail = exc.details() if hasattr(exc, "details") else str(exc)
    cls = _ERROR_FOR.get(code, RemoteError)
    return cls(f"{code.name}: {detail}")


class FleetConnection:
    """One channel to the server plus the session obtained by a signed Join."""

    def __init__(
        self,
        target: str,
        identity: NodeIdentity,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        server_name: str | None = None,
    ) -> None:
        self.target = target
        self.identity = identity
        options = [
            ("grpc.max_receive_message_length", _CHUNK_LIMIT),
            ("grpc.max_send_message_length", _CHUNK_LIMIT),
            ("grpc.keepalive_time_ms", 30_000),
        ]
        if credentials is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = tls.secure_channel(
                target, credentials, server_name=server_name, options=options
            )
        self.stub = fleet_pb2_grpc.FleetStub(self.channel)
        self.token: bytes | None = None
        self.node_id: str | None = None
        self.model_spec: ModelSpec | None = None
        self.poll_timeout_s = 10.0

    def close(self) -> None:
        self.channel.close()

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except grpc.RpcError as exc:
            raise _translate(exc) from None
        except ValueError as exc:
            # A signal handler closed the channel to cut a long-poll short; a call started
            # after that is a shutdown, not a bug.
            if "closed channel" not in str(exc):
                raise
            raise errors.Unavailable("the connection was closed (shutting down)") from None

    def _metadata(self) -> tuple[tuple[str, bytes], ...]:
        if self.token is None:
            raise errors.NotAuthenticated("not joined")
        return ((SESSION_KEY, self.token),)

    def join(
        self,
        num_samples: int,
        dataset: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        model_tensors: tuple[TensorSpec, ...] = (),
        model_digest: bytes = b"",
    ) -> str:
        """Join with this node's model structure; ModelMismatch if the server's model differs."""
        challenge = self._call(
            lambda: self.stub.JoinChallenge(fleet_pb2.JoinChallengeRequest(), timeout=30)
        ).challenge
        request = wire.join_request(
            self.identity,
            challenge,
            num_samples,
            dataset,
            input_shape,
            num_classes,
            model_tensors,
            model_digest,
        )
        try:
            reply = self._call(lambda: self.stub.Join(request, timeout=30))
        except errors.StaleRequest as exc:
            # The one precondition a Join can fail: the node's model is not the federation's.
            raise errors.ModelMismatch(str(exc)) from None
        self.token = reply.session_token
        self.node_id = reply.node_id
        self.model_spec = wire.model_spec_from_proto(reply.model)
        self.poll_timeout_s = float(reply.poll_timeout_s or 10)
        return reply.node_id

    def pull(self, num_samples: int) -> AnyTask:
        request = fleet_pb2.PullTaskRequest(num_samples=num_samples)
        task = self._call(
            lambda: self.stub.PullTask(
                request, metadata=self._metadata(), timeout=self.poll_timeout_s + 15
            )
        )
        return task_from_proto(task)

    def fetch_model(self, sha256_hex: str, max_bytes: int) -> tuple[tuple[TensorSpec, ...], bytes]:
        """Download a model and check it is the one asked for."""

        def run() -> tuple[tuple[TensorSpec, ...], bytes]:
            stream = self.stub.FetchModel(
                fleet_pb2.FetchModelRequest(model_sha256=bytes.fromhex(sha256_hex)),
                metadata=self._metadata(),
                timeout=300,
            )
            return _assemble_download(stream, max_bytes)

        specs, payload = self._call(run)
        if hashlib.sha256(payload).hexdigest() != sha256_hex:
            raise errors.InvalidPayload("downloaded model does not have the digest the task named")
        return specs, payload

    def send_secagg(
        self, message: wire_secagg.ClientStage, *, request_id: str, task: SecAggTask
    ) -> bool:
        """Send one stage message; returns True if the server had it already (a retry)."""
        request = wire_secagg.client_message_to_proto(
            message,
            request_id=request_id,
            task_id=task.task_id,
            round_=task.round,
        )
        ack = self._call(
            lambda: self.stub.SendSecAgg(request, metadata=self._metadata(), timeout=60)
        )
        return bool(ack.duplicate)

    def push(
        self,
        *,
        request_id: str,
        task: TrainTask | SecAggTask,
        num_samples: int,
        metrics: dict[str, float],
        tensors: tuple[TensorSpec, ...],
        payload: bytes,
    ) -> fleet_pb2.PushReply:
        header = fleet_pb2.UploadHeader(
            request_id=request_id,
            task_id=task.task_id,
            round=task.round,
            base_model_sha256=bytes.fromhex(task.model_sha256),
            num_samples=num_samples,
            metrics=wire.metrics_to_proto(metrics),
            payload=wire.payload_header_to_proto(header_for(tensors, payload)),
        )
        return self._call(
            lambda: self.stub.PushUpdate(
                wire.upload_chunks(header, payload), metadata=self._metadata(), timeout=300
            )
        )

    def forget_me(
        self,
        request_id: str,
        sample_ids: tuple[int, ...],
        method: ForgetMethod | None,
        node_id: str = "",
    ) -> tuple[str, RequestState]:
        """Ask the server to unlearn (None: by its default method); (forget_id, state).
        Idempotent by request_id."""
        request = fleet_pb2.ForgetRequest(
            request_id=request_id,
            sample_ids=list(sample_ids),
            forget_method=wire_forget.method_to_proto(method),
            node_id=node_id,
        )
        reply = self._call(
            lambda: self.stub.ForgetMe(request, metadata=self._metadata(), timeout=30)
        )
        return reply.forget_id, self._decode(
            lambda: wire_forget.state_from_proto(reply.forget_state)
        )

    def forget_status(self, forget_id: str) -> ForgetStatus:
        request = fleet_pb2.ForgetStatusRequest(forget_id=forget_id)
        info = self._call(
            lambda: self.stub.GetForgetStatus(request, metadata=self._metadata(), timeout=30)
        )
        return self._decode(lambda: wire_forget.status_from_proto(info))

    def report_forget(self, forget_id: str, body: ReportBody) -> ForgetStatus:
        """Report on this node's request; the server's view of it after."""
        report = ForgetReport(uuid.uuid4().hex, forget_id, body)
        request = wire_forget.report_to_proto(report)
        info = self._call(
            lambda: self.stub.ReportForget(request, metadata=self._metadata(), timeout=30)
        )
        return self._decode(lambda: wire_forget.status_from_proto(info))

    @staticmethod
    def _decode(fn: Callable[[], T]) -> T:
        """A server's answer this client cannot read is the server's fault, said as such."""
        try:
            return fn()
        except errors.InvalidPayload as exc:
            raise RemoteError(f"the server's answer is unreadable: {exc}") from None

    def leave(self) -> None:
        self._call(
            lambda: self.stub.Leave(
                fleet_pb2.LeaveRequest(request_id=uuid.uuid4().hex),
                metadata=self._metadata(),
                timeout=5,
            )
        )


def _assemble_download(
    stream: Iterator[Any], max_bytes: int
) -> tuple[tuple[TensorSpec, ...], bytes]:
    first = next(stream, None)
    if first is None or first.WhichOneof("part") != "header":
        raise errors.InvalidPayload("model stream must start with a header")
    header: PayloadHeader = wire.payload_header_from_proto(first.header)
    assembler = PayloadAssembler(header, max_bytes)
    for chunk in stream:
        if chunk.WhichOneof("part") != "data":
            raise errors.InvalidPayload("only data chunks may follow the header")
        assembler.add(chunk.data)
    return header.tensors, assembler.finish()
