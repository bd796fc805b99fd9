from forsaken.v1 import common_pb2 as _common_pb2
from forsaken.v1 import secagg_pb2 as _secagg_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_WAIT: _ClassVar[TaskKind]
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_STOP: _ClassVar[TaskKind]
    TASK_KIND_SECAGG: _ClassVar[TaskKind]
    TASK_KIND_VERIFY: _ClassVar[TaskKind]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_WAIT: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_STOP: TaskKind
TASK_KIND_SECAGG: TaskKind
TASK_KIND_VERIFY: TaskKind

class JoinChallengeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JoinChallengeReply(_message.Message):
    __slots__ = ("challenge", "expires_unix_ms")
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    challenge: bytes
    expires_unix_ms: int
    def __init__(self, challenge: _Optional[bytes] = ..., expires_unix_ms: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("request_id", "public_key", "timestamp_ms", "signature", "num_samples", "dataset", "input_shape", "num_classes", "challenge", "model_tensors", "model_digest")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_TENSORS_FIELD_NUMBER: _ClassVar[int]
    MODEL_DIGEST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    public_key: bytes
    timestamp_ms: int
    signature: bytes
    num_samples: int
    dataset: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    challenge: bytes
    model_tensors: _containers.RepeatedCompositeFieldContainer[_common_pb2.TensorSpec]
    model_digest: bytes
    def __init__(self, request_id: _Optional[str] = ..., public_key: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., signature: _Optional[bytes] = ..., num_samples: _Optional[int] = ..., dataset: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ..., challenge: _Optional[bytes] = ..., model_tensors: _Optional[_Iterable[_Union[_common_pb2.TensorSpec, _Mapping]]] = ..., model_digest: _Optional[bytes] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("node_id", "session_token", "model", "poll_timeout_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKEN_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    POLL_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    session_token: bytes
    model: _common_pb2.ModelSpec
    poll_timeout_s: int
    def __init__(self, node_id: _Optional[str] = ..., session_token: _Optional[bytes] = ..., model: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., poll_timeout_s: _Optional[int] = ...) -> None: ...

class PullTaskRequest(_message.Message):
    __slots__ = ("num_samples",)
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    num_samples: int
    def __init__(self, num_samples: _Optional[int] = ...) -> None: ...

class ForgetInstruction(_message.Message):
    __slots__ = ("forget_id", "method", "sample_ids")
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    forget_id: str
    method: str
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, forget_id: _Optional[str] = ..., method: _Optional[str] = ..., sample_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("kind", "task_id", "round", "model_sha256", "train", "deadline_unix_ms", "seed", "retry_after_s", "model", "secagg", "forget", "forget_id", "weight", "total_weight")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    kind: TaskKind
    task_id: str
    round: int
    model_sha256: bytes
    train: _common_pb2.TrainConfig
    deadline_unix_ms: int
    seed: int
    retry_after_s: float
    model: _common_pb2.ModelSpec
    secagg: _secagg_pb2.SecAggServerMessage
    forget: ForgetInstruction
    forget_id: str
    weight: int
    total_weight: int
    def __init__(self, kind: _Optional[_Union[TaskKind, str]] = ..., task_id: _Optional[str] = ..., round: _Optional[int] = ..., model_sha256: _Optional[bytes] = ..., train: _Optional[_Union[_common_pb2.TrainConfig, _Mapping]] = ..., deadline_unix_ms: _Optional[int] = ..., seed: _Optional[int] = ..., retry_after_s: _Optional[float] = ..., model: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., secagg: _Optional[_Union[_secagg_pb2.SecAggServerMessage, _Mapping]] = ..., forget: _Optional[_Union[ForgetInstruction, _Mapping]] = ..., forget_id: _Optional[str] = ..., weight: _Optional[int] = ..., total_weight: _Optional[int] = ...) -> None: ...

class FetchModelRequest(_message.Message):
    __slots__ = ("model_sha256",)
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    model_sha256: bytes
    def __init__(self, model_sha256: _Optional[bytes] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("request_id", "task_id", "round", "base_model_sha256", "num_samples", "metrics", "payload")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    task_id: str
    round: int
    base_model_sha256: bytes
    num_samples: int
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    payload: _common_pb2.PayloadHeader
    def __init__(self, request_id: _Optional[str] = ..., task_id: _Optional[str] = ..., round: _Optional[int] = ..., base_model_sha256: _Optional[bytes] = ..., num_samples: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., payload: _Optional[_Union[_common_pb2.PayloadHeader, _Mapping]] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("accepted", "duplicate", "detail")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    duplicate: bool
    detail: str
    def __init__(self, accepted: _Optional[bool] = ..., duplicate: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ("request_id", "sample_ids", "method", "node_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    method: str
    node_id: str
    def __init__(self, request_id: _Optional[str] = ..., sample_ids: _Optional[_Iterable[int]] = ..., method: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class ForgetReport(_message.Message):
    __slots__ = ("request_id", "forget_id", "kind", "metrics", "reason", "model_sha256")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    forget_id: str
    kind: str
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    reason: str
    model_sha256: bytes
    def __init__(self, request_id: _Optional[str] = ..., forget_id: _Optional[str] = ..., kind: _Optional[str] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ..., reason: _Optional[str] = ..., model_sha256: _Optional[bytes] = ...) -> None: ...

class ForgetReply(_message.Message):
    __slots__ = ("forget_id", "state")
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    forget_id: str
    state: str
    def __init__(self, forget_id: _Optional[str] = ..., state: _Optional[str] = ...) -> None: ...

class ForgetStatusRequest(_message.Message):
    __slots__ = ("forget_id",)
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    forget_id: str
    def __init__(self, forget_id: _Optional[str] = ...) -> None: ...

class ForgetRequestInfo(_message.Message):
    __slots__ = ("forget_id", "node_id", "method", "state", "reason", "created_unix_ms", "updated_unix_ms", "receipt_json", "num_samples", "initiated_by")
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_JSON_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    INITIATED_BY_FIELD_NUMBER: _ClassVar[int]
    forget_id: str
    node_id: str
    method: str
    state: str
    reason: str
    created_unix_ms: int
    updated_unix_ms: int
    receipt_json: str
    num_samples: int
    initiated_by: str
    def __init__(self, forget_id: _Optional[str] = ..., node_id: _Optional[str] = ..., method: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., receipt_json: _Optional[str] = ..., num_samples: _Optional[int] = ..., initiated_by: _Optional[str] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
