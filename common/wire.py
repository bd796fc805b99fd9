"""Domain <-> protobuf conversion. The only module that builds or reads protobuf messages.

Pairs of `x_to_proto` / `x_from_proto` functions; the core never sees generated classes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping

from forsaken.common.chunking import DEFAULT_CHUNK_BYTES, PayloadHeader, split
from forsaken.common.errors import InvalidPayload
from forsaken.common.identity import NodeIdentity
from forsaken.common.tensors import TensorSpec
from forsaken.common.types import ModelSpec, TrainSettings
from forsaken.v1 import common_pb2, fleet_pb2

# The gRPC metadata key under which a node presents the session token its Join returned.
SESSION_KEY = "x-forsaken-session-bin"


def tensor_spec_to_proto(spec: TensorSpec) -> common_pb2.TensorSpec:
    return common_pb2.TensorSpec(name=spec.name, shape=list(spec.shape), dtype=spec.dtype)


def tensor_spec_from_proto(msg: common_pb2.TensorSpec) -> TensorSpec:
    return TensorSpec(msg.name, tuple(int(d) for d in msg.shape), msg.dtype or "float32")


def payload_header_to_proto(header: PayloadHeader) -> common_pb2.PayloadHeader:
    return common_pb2.PayloadHeader(
        tensors=[tensor_spec_to_proto(t) for t in header.tensors],
        total_bytes=header.total_bytes,
        sha256=header.sha256,
    )


def payload_header_from_proto(msg: common_pb2.PayloadHeader) -> PayloadHeader:
    return PayloadHeader(
        tuple(tensor_spec_from_proto(t) for t in msg.tensors), int(msg.total_bytes), msg.sha256
    )


def model_spec_to_proto(spec: ModelSpec) -> common_pb2.ModelSpec:
    return common_pb2.ModelSpec(
        architecture=spec.architecture,
        input_shape=list(spec.input_shape),
        num_classes=spec.num_classes,
        dataset=spec.dataset,
    )


def model_spec_from_proto(msg: common_pb2.ModelSpec) -> ModelSpec:
    return ModelSpec(
        msg.architecture, tuple(int(d) for d in msg.input_shape), int(msg.num_classes), msg.dataset
    )


def join_request(
    identity: NodeIdentity,
    challenge: bytes,
    num_samples: int,
    dataset: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    model_tensors: tuple[TensorSpec, ...] = (),
    model_digest: bytes = b"",
) -> fleet_pb2.JoinRequest:
    """A signed Join for the server's `challenge`, with a fresh request id and timestamp, and
    this node's model structure for the server's agreement check."""
    request_id = uuid.uuid4().hex
    now_ms = int(time.time() * 1000)
    return fleet_pb2.JoinRequest(
        request_id=request_id,
        public_key=identity.public_key,
        timestamp_ms=now_ms,
        signature=identity.sign_join(request_id, now_ms, num_samples, challenge),
        num_samples=num_samples,
        dataset=dataset,
        input_shape=list(input_shape),
        num_classes=num_classes,
        challenge=challenge,
        model_tensors=[tensor_spec_to_proto(t) for t in model_tensors],
        model_digest=model_digest,
    )


def train_settings_to_proto(cfg: TrainSettings) -> common_pb2.TrainConfig:
    return common_pb2.TrainConfig(
        local_epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        max_update_norm=cfg.max_update_norm,
    )


def train_settings_from_proto(msg: common_pb2.TrainConfig) -> TrainSettings:
    cfg = TrainSettings(
        local_epochs=int(msg.local_epochs),
        batch_size=int(msg.batch_size),
        learning_rate=float(msg.learning_rate),
        momentum=float(msg.momentum),
        weight_decay=float(msg.weight_decay),
        max_update_norm=float(msg.max_update_norm),
    )
    cfg.validate()
    return cfg


def metrics_to_proto(metrics: Mapping[str, float]) -> list[common_pb2.Metric]:
    return [common_pb2.Metric(name=k, value=float(v)) for k, v in sorted(metrics.items())]


def metrics_from_proto(msgs: Iterable[common_pb2.Metric]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in msgs:
        if m.name in out:
            raise InvalidPayload(f"metric {m.name!r} repeated")
        out[m.name] = float(m.value)
    return out


def payload_chunks(
    header: PayloadHeader, data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[common_pb2.Chunk]:
    """A server-streaming payload: one header chunk, then data chunks."""
    yield common_pb2.Chunk(header=payload_header_to_proto(header))
    for piece in split(data, chunk_bytes):
        yield common_pb2.Chunk(data=piece)


def upload_chunks(
    header: fleet_pb2.UploadHeader, data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[fleet_pb2.UploadChunk]:
    """A client-streaming upload: one UploadHeader, then data chunks."""
    yield fleet_pb2.UploadChunk(header=header)
    for piece in split(data, chunk_bytes):
        yield fleet_pb2.UploadChunk(data=piece)
