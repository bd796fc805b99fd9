"""Every message of a SecAgg+ round, as frozen dataclasses of plain bytes, ints and arrays.

Nothing here holds a `cryptography` object, so each message maps field for field onto a
protobuf message (ints -> uint32, bytes -> bytes, tuples -> repeated, uint32 vectors -> bytes of
little-endian words). `payload_nbytes` counts those fields, which is what the benchmark reports
as traffic. Rounds follow Bonawitz et al. Fig. 4 (rounds 0-4); the consistency check (round 3)
only runs in active mode.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass

import numpy as np

__all__ = [
    "AdvertiseKeys",
    "AggregateResult",
    "ClientMessage",
    "ConsistencyRequest",
    "ConsistencySignature",
    "EncryptedShare",
    "KeysBroadcast",
    "MaskedInput",
    "Outbound",
    "RelayedShares",
    "RevealedShare",
    "ServerMessage",
    "ShareKeys",
    "ShareKind",
    "Stage",
    "SurvivorSignature",
    "UnmaskRequest",
    "UnmaskResponse",
    "payload_nbytes",
]


class Stage(enum.StrEnum):
    """The rounds of Bonawitz et al. Fig. 4, plus the two terminal states."""

    ADVERTISE_KEYS = "advertise_keys"  # round 0
    SHARE_KEYS = "share_keys"  # round 1
    MASKED_INPUT = "masked_input"  # round 2
    CONSISTENCY_CHECK = "consistency_check"  # round 3, active mode only
    UNMASKING = "unmasking"  # round 4
    FINISHED = "finished"
    ABORTED = "aborted"


class ShareKind(enum.IntEnum):
    """Which secret a revealed share belongs to; a client reveals one kind per peer, never both."""

    SELF_MASK_SEED = 1  # b_j of a survivor: lets the server strip its self mask
    MASK_KEY = 2  # s_j^SK of a dropped client: lets the server strip its pairwise masks


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Round 0, client -> server: the public halves of the client's two X25519 key pairs.

    `signature` is empty unless the round is active (Ed25519 over config, index and both keys).
    """

    index: int
    cipher_public_key: bytes  # c_i^PK: agrees share-encryption keys
    mask_public_key: bytes  # s_i^PK: agrees pairwise mask seeds
    signature: bytes = b""


@dataclass(frozen=True, slots=True)
class KeysBroadcast:
    """Round 0, server -> every client in U1: all advertisements, sorted by index."""

    keys: tuple[AdvertiseKeys, ...]


@dataclass(frozen=True, slots=True)
class EncryptedShare:
    """AES-GCM of (sender, recipient, s^SK share, b share) under c_{sender,recipient}.

    `commitment` is H(s^SK share) || H(b share) in the clear (`crypto.commit_share`, 64 bytes):
    the recipient checks what it decrypts against it, and the server every share revealed to
    it, so a share that is wrong can be pinned on the client that dealt it or revealed it.
    """

    sender: int
    recipient: int
    ciphertext: bytes
    commitment: bytes = b""


@dataclass(frozen=True, slots=True)
class ShareKeys:
    """Round 1, client -> server: one encrypted share for each of the sender's neighbours.

    `seed_commitment` is H(b) (`crypto.commit_seed`): the server checks the self-mask seed it
    reconstructs against it, which catches a dealer whose shares do not fit one polynomial.
    """

    shares: tuple[EncryptedShare, ...]
    seed_commitment: bytes = b""


@dataclass(frozen=True, slots=True)
class RelayedShares:
    """Round 1, server -> client in U2: the shares addressed to it by its neighbours in U2."""

    shares: tuple[EncryptedShare, ...]


@dataclass(frozen=True, slots=True, eq=False)
class MaskedInput:
    """Round 2, client -> server: y_i = x_i + PRG(b_i) + sum_j +-PRG(s_ij) mod 2^32 (uint32)."""

    vector: np.ndarray


@dataclass(frozen=True, slots=True)
class ConsistencyRequest:
    """Round 3 (active only), server -> client in U3: the survivor list U3 to sign."""

    survivors: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ConsistencySignature:
    """Round 3 (active only), client -> server: Ed25519 over (session id, U3)."""

    signature: bytes


@dataclass(frozen=True, slots=True)
class SurvivorSignature:
    """One client's signature on the survivor list, forwarded by the server."""

    index: int
    signature: bytes


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Round 4, server -> client in U3 (U4' in active mode): who survived and who dropped.

    `survivors` is U3 (masked input received) and `dropped` is U2 minus U3. In active mode
    `signatures` carries the round-3 signatures on `survivors`.
    """

    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[SurvivorSignature, ...] = ()


@dataclass(frozen=True, slots=True)
class RevealedShare:
    """One decrypted share the client holds for peer `owner`, of the given kind (66 bytes)."""

    owner: int
    kind: ShareKind
    share: bytes = field(repr=False)  # secret: never in logs


@dataclass(frozen=True, slots=True)
class UnmaskResponse:
    """Round 4, client -> server: b-shares of surviving and s^SK-shares of dropped neighbours.

    `complaints` lists neighbours whose share to this client failed to decrypt or did not match
    its commitment: the client holds nothing of theirs, and left them out of its masks.
    """

    shares: tuple[RevealedShare, ...]
    complaints: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class AggregateResult:
    """The server's output: sum over `survivors` of their quantized inputs, mod 2^32.

    The last entry is the survivors' total sample count; decode with `dequantize_sum`.
    """

    vector: np.ndarray
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


ClientMessage = AdvertiseKeys | ShareKeys | MaskedInput | ConsistencySignature | UnmaskResponse
ServerMessage = KeysBroadcast | RelayedShares | ConsistencyRequest | UnmaskRequest
Outbound = Mapping[int, ServerMessage]  # what a server stage sends, keyed by client index


def payload_nbytes(message: object) -> int:
    """Bytes of payload a message carries: 4 per int, len of bytes, 4 per uint32 entry.

    A rough but honest lower bound on the protobuf encoding (which adds a few bytes of tags and
    lengths per field); used for traffic accounting in the runner and the benchmark.
    """
    if isinstance(message, bytes):
        return len(message)
    if isinstance(message, int):  # includes ShareKind and bool
        return 4
    if isinstance(message, np.ndarray):
        return int(message.nbytes)
    if isinstance(message, tuple):
        return sum(payload_nbytes(item) for item in message)
    if not is_dataclass(message):
        raise TypeError(f"not a message: {type(message).__name__}")
    return sum(payload_nbytes(getattr(message, f.name)) for f in fields(message))
