from forsaken.v1 import common_pb2 as _common_pb2
from forsaken.v1 import fleet_pb2 as _fleet_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReleaseClientRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    def __init__(self, node_id: _Optional[str] = ...) -> None: ...

class ReleaseClientReply(_message.Message):
    __slots__ = ("was_quarantined",)
    WAS_QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    was_quarantined: bool
    def __init__(self, was_quarantined: _Optional[bool] = ...) -> None: ...

class ForgetClientRequest(_message.Message):
    __slots__ = ("node_id", "request_id", "reason", "forget_method")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FORGET_METHOD_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    request_id: str
    reason: str
    forget_method: _fleet_pb2.ForgetMethod
    def __init__(self, node_id: _Optional[str] = ..., request_id: _Optional[str] = ..., reason: _Optional[str] = ..., forget_method: _Optional[_Union[_fleet_pb2.ForgetMethod, str]] = ...) -> None: ...

class RevokeClientRequest(_message.Message):
    __slots__ = ("node_id", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    reason: str
    def __init__(self, node_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeClientReply(_message.Message):
    __slots__ = ("already_revoked",)
    ALREADY_REVOKED_FIELD_NUMBER: _ClassVar[int]
    already_revoked: bool
    def __init__(self, already_revoked: _Optional[bool] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerStatus(_message.Message):
    __slots__ = ("phase", "current_round", "completed_rounds", "target_rounds", "connected_clients", "model_sha256", "model", "last_abort_reason", "last_test_acc", "secure_aggregation", "uptime_s", "secagg_stage")
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    TARGET_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAST_ABORT_REASON_FIELD_NUMBER: _ClassVar[int]
    LAST_TEST_ACC_FIELD_NUMBER: _ClassVar[int]
    SECURE_AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    SECAGG_STAGE_FIELD_NUMBER: _ClassVar[int]
    phase: str
    current_round: int
    completed_rounds: int
    target_rounds: int
    connected_clients: int
    model_sha256: bytes
    model: _common_pb2.ModelSpec
    last_abort_reason: str
    last_test_acc: float
    secure_aggregation: bool
    uptime_s: int
    secagg_stage: str
    def __init__(self, phase: _Optional[str] = ..., current_round: _Optional[int] = ..., completed_rounds: _Optional[int] = ..., target_rounds: _Optional[int] = ..., connected_clients: _Optional[int] = ..., model_sha256: _Optional[bytes] = ..., model: _Optional[_Union[_common_pb2.ModelSpec, _Mapping]] = ..., last_abort_reason: _Optional[str] = ..., last_test_acc: _Optional[float] = ..., secure_aggregation: _Optional[bool] = ..., uptime_s: _Optional[int] = ..., secagg_stage: _Optional[str] = ...) -> None: ...

class ListRoundsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class RoundInfo(_message.Message):
    __slots__ = ("round", "status", "attempt", "participants", "selected", "test_acc", "test_loss", "duration_s", "model_sha256", "reason", "total_samples", "finished_unix_ms", "metrics")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    TEST_ACC_FIELD_NUMBER: _ClassVar[int]
    TEST_LOSS_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    FINISHED_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    round: int
    status: str
    attempt: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    selected: _containers.RepeatedScalarFieldContainer[str]
    test_acc: float
    test_loss: float
    duration_s: float
    model_sha256: bytes
    reason: str
    total_samples: int
    finished_unix_ms: int
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.Metric]
    def __init__(self, round: _Optional[int] = ..., status: _Optional[str] = ..., attempt: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ..., selected: _Optional[_Iterable[str]] = ..., test_acc: _Optional[float] = ..., test_loss: _Optional[float] = ..., duration_s: _Optional[float] = ..., model_sha256: _Optional[bytes] = ..., reason: _Optional[str] = ..., total_samples: _Optional[int] = ..., finished_unix_ms: _Optional[int] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.Metric, _Mapping]]] = ...) -> None: ...

class ListRoundsReply(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundInfo]
    def __init__(self, rounds: _Optional[_Iterable[_Union[RoundInfo, _Mapping]]] = ...) -> None: ...

class ListClientsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClientInfo(_message.Message):
    __slots__ = ("node_id", "connected", "num_samples", "rounds_contributed", "first_round", "last_seen_unix_ms", "revoked", "quarantine", "recent_faults", "last_fault")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_CONTRIBUTED_FIELD_NUMBER: _ClassVar[int]
    FIRST_ROUND_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_FIELD_NUMBER: _ClassVar[int]
    RECENT_FAULTS_FIELD_NUMBER: _ClassVar[int]
    LAST_FAULT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    connected: bool
    num_samples: int
    rounds_contributed: int
    first_round: int
    last_seen_unix_ms: int
    revoked: bool
    quarantine: str
    recent_faults: int
    last_fault: str
    def __init__(self, node_id: _Optional[str] = ..., connected: _Optional[bool] = ..., num_samples: _Optional[int] = ..., rounds_contributed: _Optional[int] = ..., first_round: _Optional[int] = ..., last_seen_unix_ms: _Optional[int] = ..., revoked: _Optional[bool] = ..., quarantine: _Optional[str] = ..., recent_faults: _Optional[int] = ..., last_fault: _Optional[str] = ...) -> None: ...

class ListClientsReply(_message.Message):
    __slots__ = ("clients",)
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    clients: _containers.RepeatedCompositeFieldContainer[ClientInfo]
    def __init__(self, clients: _Optional[_Iterable[_Union[ClientInfo, _Mapping]]] = ...) -> None: ...

class ListForgetRequestsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListForgetRequestsReply(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[_fleet_pb2.ForgetRequestInfo]
    def __init__(self, requests: _Optional[_Iterable[_Union[_fleet_pb2.ForgetRequestInfo, _Mapping]]] = ...) -> None: ...
