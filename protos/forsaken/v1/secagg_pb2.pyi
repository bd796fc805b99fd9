from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SecAggSetup(_message.Message):
    __slots__ = ("index", "num_clients", "neighbors", "threshold", "bits", "clip", "vector_len", "active", "context", "weight_scale", "verifying_keys", "weight")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    VECTOR_LEN_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_SCALE_FIELD_NUMBER: _ClassVar[int]
    VERIFYING_KEYS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    index: int
    num_clients: int
    neighbors: int
    threshold: int
    bits: int
    clip: float
    vector_len: int
    active: bool
    context: bytes
    weight_scale: float
    verifying_keys: _containers.RepeatedScalarFieldContainer[bytes]
    weight: int
    def __init__(self, index: _Optional[int] = ..., num_clients: _Optional[int] = ..., neighbors: _Optional[int] = ..., threshold: _Optional[int] = ..., bits: _Optional[int] = ..., clip: _Optional[float] = ..., vector_len: _Optional[int] = ..., active: _Optional[bool] = ..., context: _Optional[bytes] = ..., weight_scale: _Optional[float] = ..., verifying_keys: _Optional[_Iterable[bytes]] = ..., weight: _Optional[int] = ...) -> None: ...

class SecAggAdvertiseKeys(_message.Message):
    __slots__ = ("index", "cipher_public_key", "mask_public_key", "signature")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CIPHER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    MASK_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    index: int
    cipher_public_key: bytes
    mask_public_key: bytes
    signature: bytes
    def __init__(self, index: _Optional[int] = ..., cipher_public_key: _Optional[bytes] = ..., mask_public_key: _Optional[bytes] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SecAggKeysBroadcast(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[SecAggAdvertiseKeys]
    def __init__(self, keys: _Optional[_Iterable[_Union[SecAggAdvertiseKeys, _Mapping]]] = ...) -> None: ...

class SecAggEncryptedShare(_message.Message):
    __slots__ = ("sender", "recipient", "ciphertext", "commitment")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    sender: int
    recipient: int
    ciphertext: bytes
    commitment: bytes
    def __init__(self, sender: _Optional[int] = ..., recipient: _Optional[int] = ..., ciphertext: _Optional[bytes] = ..., commitment: _Optional[bytes] = ...) -> None: ...

class SecAggShareKeys(_message.Message):
    __slots__ = ("shares", "seed_commitment")
    SHARES_FIELD_NUMBER: _ClassVar[int]
    SEED_COMMITMENT_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggEncryptedShare]
    seed_commitment: bytes
    def __init__(self, shares: _Optional[_Iterable[_Union[SecAggEncryptedShare, _Mapping]]] = ..., seed_commitment: _Optional[bytes] = ...) -> None: ...

class SecAggRelayedShares(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggEncryptedShare]
    def __init__(self, shares: _Optional[_Iterable[_Union[SecAggEncryptedShare, _Mapping]]] = ...) -> None: ...

class SecAggConsistencyRequest(_message.Message):
    __slots__ = ("survivors",)
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, survivors: _Optional[_Iterable[int]] = ...) -> None: ...

class SecAggConsistencySignature(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    def __init__(self, signature: _Optional[bytes] = ...) -> None: ...

class SecAggSurvivorSignature(_message.Message):
    __slots__ = ("index", "signature")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    index: int
    signature: bytes
    def __init__(self, index: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SecAggUnmaskRequest(_message.Message):
    __slots__ = ("survivors", "dropped", "signatures")
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    survivors: _containers.RepeatedScalarFieldContainer[int]
    dropped: _containers.RepeatedScalarFieldContainer[int]
    signatures: _containers.RepeatedCompositeFieldContainer[SecAggSurvivorSignature]
    def __init__(self, survivors: _Optional[_Iterable[int]] = ..., dropped: _Optional[_Iterable[int]] = ..., signatures: _Optional[_Iterable[_Union[SecAggSurvivorSignature, _Mapping]]] = ...) -> None: ...

class SecAggRevealedShare(_message.Message):
    __slots__ = ("owner", "kind", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: int
    kind: int
    share: bytes
    def __init__(self, owner: _Optional[int] = ..., kind: _Optional[int] = ..., share: _Optional[bytes] = ...) -> None: ...

class SecAggUnmaskResponse(_message.Message):
    __slots__ = ("shares", "complaints")
    SHARES_FIELD_NUMBER: _ClassVar[int]
    COMPLAINTS_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[SecAggRevealedShare]
    complaints: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, shares: _Optional[_Iterable[_Union[SecAggRevealedShare, _Mapping]]] = ..., complaints: _Optional[_Iterable[int]] = ...) -> None: ...

class SecAggServerMessage(_message.Message):
    __slots__ = ("setup", "keys", "shares", "consistency", "unmask")
    SETUP_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    setup: SecAggSetup
    keys: SecAggKeysBroadcast
    shares: SecAggRelayedShares
    consistency: SecAggConsistencyRequest
    unmask: SecAggUnmaskRequest
    def __init__(self, setup: _Optional[_Union[SecAggSetup, _Mapping]] = ..., keys: _Optional[_Union[SecAggKeysBroadcast, _Mapping]] = ..., shares: _Optional[_Union[SecAggRelayedShares, _Mapping]] = ..., consistency: _Optional[_Union[SecAggConsistencyRequest, _Mapping]] = ..., unmask: _Optional[_Union[SecAggUnmaskRequest, _Mapping]] = ...) -> None: ...

class SecAggClientMessage(_message.Message):
    __slots__ = ("request_id", "task_id", "round", "advertise", "share_keys", "consistency", "unmask")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    task_id: str
    round: int
    advertise: SecAggAdvertiseKeys
    share_keys: SecAggShareKeys
    consistency: SecAggConsistencySignature
    unmask: SecAggUnmaskResponse
    def __init__(self, request_id: _Optional[str] = ..., task_id: _Optional[str] = ..., round: _Optional[int] = ..., advertise: _Optional[_Union[SecAggAdvertiseKeys, _Mapping]] = ..., share_keys: _Optional[_Union[SecAggShareKeys, _Mapping]] = ..., consistency: _Optional[_Union[SecAggConsistencySignature, _Mapping]] = ..., unmask: _Optional[_Union[SecAggUnmaskResponse, _Mapping]] = ...) -> None: ...

class SecAggAck(_message.Message):
    __slots__ = ("duplicate",)
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    duplicate: bool
    def __init__(self, duplicate: _Optional[bool] = ...) -> None: ...
