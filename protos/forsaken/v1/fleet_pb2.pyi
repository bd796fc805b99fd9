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

class ForgetMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORGET_METHOD_UNSPECIFIED: _ClassVar[ForgetMethod]
    FORGET_METHOD_FORSAKEN: _ClassVar[ForgetMethod]
    FORGET_METHOD_PGA: _ClassVar[ForgetMethod]
    FORGET_METHOD_FEDQUIT: _ClassVar[ForgetMethod]
    FORGET_METHOD_FINETUNE: _ClassVar[ForgetMethod]
    FORGET_METHOD_NOT: _ClassVar[ForgetMethod]
    FORGET_METHOD_RETRAIN: _ClassVar[ForgetMethod]

class ForgetState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FORGET_STATE_UNSPECIFIED: _ClassVar[ForgetState]
    FORGET_STATE_SUBMITTING: _ClassVar[ForgetState]
    FORGET_STATE_REQUESTED: _ClassVar[ForgetState]
    FORGET_STATE_UNLEARNING: _ClassVar[ForgetState]
    FORGET_STATE_RECOVERING: _ClassVar[ForgetState]
    FORGET_STATE_VERIFYING: _ClassVar[ForgetState]
    FORGET_STATE_COMPLETED: _ClassVar[ForgetState]
    FORGET_STATE_FAILED: _ClassVar[ForgetState]

class ReceiptVerifier(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RECEIPT_VERIFIER_UNSPECIFIED: _ClassVar[ReceiptVerifier]
    RECEIPT_VERIFIER_NODE: _ClassVar[ReceiptVerifier]
    RECEIPT_VERIFIER_SERVER: _ClassVar[ReceiptVerifier]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_WAIT: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_STOP: TaskKind
TASK_KIND_SECAGG: TaskKind
TASK_KIND_VERIFY: TaskKind
FORGET_METHOD_UNSPECIFIED: ForgetMethod
FORGET_METHOD_FORSAKEN: ForgetMethod
FORGET_METHOD_PGA: ForgetMethod
FORGET_METHOD_FEDQUIT: ForgetMethod
FORGET_METHOD_FINETUNE: ForgetMethod
FORGET_METHOD_NOT: ForgetMethod
FORGET_METHOD_RETRAIN: ForgetMethod
FORGET_STATE_UNSPECIFIED: ForgetState
FORGET_STATE_SUBMITTING: ForgetState
FORGET_STATE_REQUESTED: ForgetState
FORGET_STATE_UNLEARNING: ForgetState
FORGET_STATE_RECOVERING: ForgetState
FORGET_STATE_VERIFYING: ForgetState
FORGET_STATE_COMPLETED: ForgetState
FORGET_STATE_FAILED: ForgetState
RECEIPT_VERIFIER_UNSPECIFIED: ReceiptVerifier
RECEIPT_VERIFIER_NODE: ReceiptVerifier
RECEIPT_VERIFIER_SERVER: ReceiptVerifier

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
    __slots__ = ("forget_id", "sample_ids", "forget_method")
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    FORGET_METHOD_FIELD_NUMBER: _ClassVar[int]
    forget_id: str
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    forget_method: ForgetMethod
    def __init__(self, forget_id: _Optional[str] = ..., sample_ids: _Optional[_Iterable[int]] = ..., forget_method: _Optional[_Union[ForgetMethod, str]] = ...) -> None: ...

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
    __slots__ = ("request_id", "sample_ids", "node_id", "forget_method")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    FORGET_METHOD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    node_id: str
    forget_method: ForgetMethod
    def __init__(self, request_id: _Optional[str] = ..., sample_ids: _Optional[_Iterable[int]] = ..., node_id: _Optional[str] = ..., forget_method: _Optional[_Union[ForgetMethod, str]] = ...) -> None: ...

class ForgetStep(_message.Message):
    __slots__ = ("gradient_evaluations", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    GRADIENT_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    gradient_evaluations: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, gradient_evaluations: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ForgetEvidence(_message.Message):
    __slots__ = ("mia_auc", "forget_acc", "held_out_acc", "conf_auc", "auc_resolution", "excess_confidence_drop", "excess_confidence_drop_ci95", "validation_acc", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MIA_AUC_FIELD_NUMBER: _ClassVar[int]
    FORGET_ACC_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_ACC_FIELD_NUMBER: _ClassVar[int]
    CONF_AUC_FIELD_NUMBER: _ClassVar[int]
    AUC_RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    EXCESS_CONFIDENCE_DROP_FIELD_NUMBER: _ClassVar[int]
    EXCESS_CONFIDENCE_DROP_CI95_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_ACC_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    mia_auc: float
    forget_acc: float
    held_out_acc: float
    conf_auc: float
    auc_resolution: float
    excess_confidence_drop: float
    excess_confidence_drop_ci95: float
    validation_acc: float
    extra: _containers.ScalarMap[str, float]
    def __init__(self, mia_auc: _Optional[float] = ..., forget_acc: _Optional[float] = ..., held_out_acc: _Optional[float] = ..., conf_auc: _Optional[float] = ..., auc_resolution: _Optional[float] = ..., excess_confidence_drop: _Optional[float] = ..., excess_confidence_drop_ci95: _Optional[float] = ..., validation_acc: _Optional[float] = ..., extra: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ForgetFailure(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ForgetReport(_message.Message):
    __slots__ = ("request_id", "forget_id", "progress", "done", "evidence", "failed", "evidence_model_sha256")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    forget_id: str
    progress: ForgetStep
    done: ForgetStep
    evidence: ForgetEvidence
    failed: ForgetFailure
    evidence_model_sha256: bytes
    def __init__(self, request_id: _Optional[str] = ..., forget_id: _Optional[str] = ..., progress: _Optional[_Union[ForgetStep, _Mapping]] = ..., done: _Optional[_Union[ForgetStep, _Mapping]] = ..., evidence: _Optional[_Union[ForgetEvidence, _Mapping]] = ..., failed: _Optional[_Union[ForgetFailure, _Mapping]] = ..., evidence_model_sha256: _Optional[bytes] = ...) -> None: ...

class ForgetReply(_message.Message):
    __slots__ = ("forget_id", "forget_state")
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    FORGET_STATE_FIELD_NUMBER: _ClassVar[int]
    forget_id: str
    forget_state: ForgetState
    def __init__(self, forget_id: _Optional[str] = ..., forget_state: _Optional[_Union[ForgetState, str]] = ...) -> None: ...

class ForgetReceipt(_message.Message):
    __slots__ = ("forget_id", "node_id", "method", "samples", "requested_unix_ms", "completed_unix_ms", "model_sha256_before", "model_sha256_after", "unlearning_rounds", "recovery_rounds", "stopped_by", "client_gradient_evaluations", "client_progress", "evidence", "verified_by", "initiated_by", "reference", "verdict")
    class ClientProgressEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_BEFORE_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_AFTER_FIELD_NUMBER: _ClassVar[int]
    UNLEARNING_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    STOPPED_BY_FIELD_NUMBER: _ClassVar[int]
    CLIENT_GRADIENT_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_BY_FIELD_NUMBER: _ClassVar[int]
    INITIATED_BY_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    forget_id: str
    node_id: str
    method: ForgetMethod
    samples: int
    requested_unix_ms: int
    completed_unix_ms: int
    model_sha256_before: bytes
    model_sha256_after: bytes
    unlearning_rounds: int
    recovery_rounds: int
    stopped_by: str
    client_gradient_evaluations: int
    client_progress: _containers.ScalarMap[str, float]
    evidence: ForgetEvidence
    verified_by: ReceiptVerifier
    initiated_by: str
    reference: str
    verdict: str
    def __init__(self, forget_id: _Optional[str] = ..., node_id: _Optional[str] = ..., method: _Optional[_Union[ForgetMethod, str]] = ..., samples: _Optional[int] = ..., requested_unix_ms: _Optional[int] = ..., completed_unix_ms: _Optional[int] = ..., model_sha256_before: _Optional[bytes] = ..., model_sha256_after: _Optional[bytes] = ..., unlearning_rounds: _Optional[int] = ..., recovery_rounds: _Optional[int] = ..., stopped_by: _Optional[str] = ..., client_gradient_evaluations: _Optional[int] = ..., client_progress: _Optional[_Mapping[str, float]] = ..., evidence: _Optional[_Union[ForgetEvidence, _Mapping]] = ..., verified_by: _Optional[_Union[ReceiptVerifier, str]] = ..., initiated_by: _Optional[str] = ..., reference: _Optional[str] = ..., verdict: _Optional[str] = ...) -> None: ...

class ForgetStatusRequest(_message.Message):
    __slots__ = ("forget_id",)
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    forget_id: str
    def __init__(self, forget_id: _Optional[str] = ...) -> None: ...

class ForgetRequestInfo(_message.Message):
    __slots__ = ("forget_id", "node_id", "reason", "created_unix_ms", "updated_unix_ms", "num_samples", "initiated_by", "forget_method", "forget_state", "receipt")
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    INITIATED_BY_FIELD_NUMBER: _ClassVar[int]
    FORGET_METHOD_FIELD_NUMBER: _ClassVar[int]
    FORGET_STATE_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    forget_id: str
    node_id: str
    reason: str
    created_unix_ms: int
    updated_unix_ms: int
    num_samples: int
    initiated_by: str
    forget_method: ForgetMethod
    forget_state: ForgetState
    receipt: ForgetReceipt
    def __init__(self, forget_id: _Optional[str] = ..., node_id: _Optional[str] = ..., reason: _Optional[str] = ..., created_unix_ms: _Optional[int] = ..., updated_unix_ms: _Optional[int] = ..., num_samples: _Optional[int] = ..., initiated_by: _Optional[str] = ..., forget_method: _Optional[_Union[ForgetMethod, str]] = ..., forget_state: _Optional[_Union[ForgetState, str]] = ..., receipt: _Optional[_Union[ForgetReceipt, _Mapping]] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
