from forsaken.v1 import fleet_pb2 as _fleet_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OwnerForgetRequest(_message.Message):
    __slots__ = ("request_id", "sample_ids", "forget_method")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    FORGET_METHOD_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    sample_ids: _containers.RepeatedScalarFieldContainer[int]
    forget_method: _fleet_pb2.ForgetMethod
    def __init__(self, request_id: _Optional[str] = ..., sample_ids: _Optional[_Iterable[int]] = ..., forget_method: _Optional[_Union[_fleet_pb2.ForgetMethod, str]] = ...) -> None: ...

class OwnerForgetReply(_message.Message):
    __slots__ = ("forget_id", "forget_state")
    FORGET_ID_FIELD_NUMBER: _ClassVar[int]
    FORGET_STATE_FIELD_NUMBER: _ClassVar[int]
    forget_id: str
    forget_state: _fleet_pb2.ForgetState
    def __init__(self, forget_id: _Optional[str] = ..., forget_state: _Optional[_Union[_fleet_pb2.ForgetState, str]] = ...) -> None: ...

class OwnerStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OwnerStatus(_message.Message):
    __slots__ = ("node_id", "server", "connected", "num_samples", "held_out_samples", "excluded_samples", "rounds_participated", "last_round", "forget_requests")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HELD_OUT_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_PARTICIPATED_FIELD_NUMBER: _ClassVar[int]
    LAST_ROUND_FIELD_NUMBER: _ClassVar[int]
    FORGET_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    server: str
    connected: bool
    num_samples: int
    held_out_samples: int
    excluded_samples: int
    rounds_participated: int
    last_round: int
    forget_requests: _containers.RepeatedCompositeFieldContainer[_fleet_pb2.ForgetRequestInfo]
    def __init__(self, node_id: _Optional[str] = ..., server: _Optional[str] = ..., connected: _Optional[bool] = ..., num_samples: _Optional[int] = ..., held_out_samples: _Optional[int] = ..., excluded_samples: _Optional[int] = ..., rounds_participated: _Optional[int] = ..., last_round: _Optional[int] = ..., forget_requests: _Optional[_Iterable[_Union[_fleet_pb2.ForgetRequestInfo, _Mapping]]] = ...) -> None: ...
