"""The server side of SecAgg+ as immutable states (Bonawitz et al. Fig. 4, "Server").

A daemon receives client messages one at a time, in any order. Each collecting state accepts
them with `receive(client_index, message) -> next_state`; the daemon, not the state, decides when
a stage ends (a deadline passed, or `pending` is empty) and calls `close()`, which returns the
next state and the messages to send, keyed by client index. `receive` raises and leaves the
state unchanged when a message does not belong: `WrongStage` (wrong type for this stage),
`UnknownEntity` (a client not expected here), `DuplicateRequest` (already answered) or
`InvalidPayload` (malformed content). `close()` returns `ServerAborted(reason)` when the round
can no longer finish, for example when too few neighbours of some client survive.

One deliberate exception to immutability: Round 2 adds each masked input in place into a
running sum shared by the chain of states, so a Round 2 state is consumed by a successful
`receive` (reusing it raises RuntimeError). Every other state, and every `close()`, is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from forsaken.common.errors import (
    DuplicateRequest,
    InvalidPayload,
    UnknownEntity,
    WrongStage,
)
from forsaken.common.secagg import crypto, shamir
from forsaken.common.secagg.graph import build_graph
from forsaken.common.secagg.messages import (
    AdvertiseKeys,
    AggregateResult,
    ConsistencyRequest,
    ConsistencySignature,
    KeysBroadcast,
    MaskedInput,
    Outbound,
    RelayedShares,
    ShareKeys,
    Stage,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
)
from forsaken.common.secagg.params import SecAggConfig
from forsaken.common.secagg.transcript import (
    advertisement_statement,
    session_id,
    survivors_statement,
)
from forsaken.common.secagg.unmask import (
    Commitments,
    UnmaskFailure,
    collect_unmask_shares,
    commitments_of,
    unmask_sum,
)

__all__ = [
    "ServerAborted",
    "ServerCollectConsistency",
    "ServerCollectKeys",
    "ServerCollectMasked",
    "ServerCollectShares",
    "ServerCollectUnmask",
    "ServerFinished",
    "ServerState",
    "start_server",
]

# A sealed share: 4 + 4 bytes of indices, two 66-byte field elements, a 16-byte GCM tag.
_SEALED_SHARE_BYTES = 8 + 2 * shamir.SHARE_BYTES + 16
_EMPTY: Mapping = MappingProxyType({})


class _RunningSum:
    """The sum of the masked inputs received so far, shared along a chain of Round 2 states.

    Adding 4·D bytes in place instead of allocating a new vector per client saves most of the
    server's per-message cost. The price is that a Round 2 state is consumed once `receive`
    succeeds: the sum records how many inputs it holds, and a stale state that tries to use it
    raises instead of silently double counting.
    """

    __slots__ = ("closed", "count", "vector")

    def __init__(self, first: np.ndarray) -> None:
        self.vector = first.copy()
        self.count = 1
        self.closed = False  # set by close(): later inputs must not reach the unmasked sum

    def check(self, expected: int) -> None:
        if self.count != expected:
            raise RuntimeError("stale server state: a later state already added to this sum")


def _expect(message: object, kind: type, stage: Stage) -> None:
    if not isinstance(message, kind):
        raise WrongStage(f"{stage} expects {kind.__name__}, got {type(message).__name__}")


def _admit(index: int, expected: frozenset[int] | range, received: Mapping[int, object]) -> None:
    if index not in expected:
        raise UnknownEntity(f"client {index} is not part of this stage")
    if index in received:
        raise DuplicateRequest(f"client {index} already sent its message for this stage")


def _with(received: Mapping[int, object], index: int, value: object) -> Mapping:
    return MappingProxyType({**received, index: value})


@dataclass(frozen=True, slots=True)
class ServerAborted:
    """Terminal: the round cannot finish; `reason` says why (safe to show to operators).

    `culprits` are clients the evidence pins the failure on (a dealer whose shares do not open
    or do not fit its commitments); `suspects` are pairs the server cannot tell apart (one
    client's lone complaint about another): neither should take part in a retry.
    """

    reason: str
    culprits: tuple[int, ...] = ()
    suspects: tuple[int, ...] = ()
    stage: ClassVar[Stage] = Stage.ABORTED

    def receive(self, index: int, message: object) -> ServerState:
        raise WrongStage(f"round aborted ({self.reason})")

    def close(self) -> tuple[ServerState, Outbound]:
        raise WrongStage(f"round aborted ({self.reason})")


@dataclass(frozen=True, slots=True)
class ServerFinished:
    """Terminal: the unmasked aggregate of the survivors' inputs."""

    result: AggregateResult
    stage: ClassVar[Stage] = Stage.FINISHED

    def receive(self, index: int, message: object) -> ServerState:
        raise WrongStage("round finished")

    def close(self) -> tuple[ServerState, Outbound]:
        raise WrongStage("round finished")


def start_server(
    config: SecAggConfig, verifying_keys: Mapping[int, bytes] | None = None
) -> ServerCollectKeys:
    """The first server state. In active mode, `verifying_keys` lets the server reject bad
    signatures early; clients check them regardless."""
    return ServerCollectKeys(config, verifying_keys, _EMPTY)


@dataclass(frozen=True, slots=True)
class ServerCollectKeys:
    """Round 0: collecting AdvertiseKeys from the n invited clients."""

    config: SecAggConfig
    verifying_keys: Mapping[int, bytes] | None
    received: Mapping[int, AdvertiseKeys]
    stage: ClassVar[Stage] = Stage.ADVERTISE_KEYS

    @property
    def pending(self) -> frozenset[int]:
        return frozenset(range(1, self.config.params.num_clients + 1)) - set(self.received)

    def receive(self, index: int, message: object) -> ServerCollectKeys:
        _expect(message, AdvertiseKeys, self.stage)
        assert isinstance(message, AdvertiseKeys)
        _admit(index, range(1, self.config.params.num_clients + 1), self.received)
        if message.index != index:
            raise InvalidPayload("advertised index does not match the sender")
        new_keys = (message.cipher_public_key, message.mask_public_key)
        if any(len(k) != crypto.KEY_BYTES for k in new_keys) or new_keys[0] == new_keys[1]:
            raise InvalidPayload(f"public keys must be two distinct {crypto.KEY_BYTES}-byte keys")
        for key in new_keys:
            crypto.check_public_key(key)  # raises InvalidPayload for a low-order point
        seen = {k for a in self.received.values() for k in (a.cipher_public_key, a.mask_public_key)}
        if seen.intersection(new_keys):
            raise InvalidPayload("public key already advertised by another client")
        if self.config.active and self.verifying_keys is not None:
            statement = advertisement_statement(self.config, index, *new_keys)
            vk = self.verifying_keys.get(index)
            if vk is None or not crypto.verify(vk, statement, message.signature):
                raise InvalidPayload("advertisement signature does not verify")
        return replace(self, received=_with(self.received, index, message))

    def close(self) -> tuple[ServerState, Outbound]:
        """End of Round 0: fix U1, the session id and the graph; broadcast the key list."""
        t = self.config.params.threshold
        if len(self.received) < t + 1:
            return ServerAborted(
                f"only {len(self.received)} clients advertised keys; threshold is {t}, "
                f"so at least {t + 1} are needed"
            ), {}
        keys = tuple(self.received[i] for i in sorted(self.received))
        sid = session_id(self.config, keys)
        graph = build_graph(self.received, self.config.params.neighbors, sid)
        broadcast = KeysBroadcast(keys)
        nxt = ServerCollectShares(
            self.config, self.verifying_keys, sid, self.received, graph, _EMPTY
        )
        return nxt, {i: broadcast for i in sorted(self.received)}


@dataclass(frozen=True, slots=True)
class ServerCollectShares:
    """Round 1: collecting ShareKeys from U1 (one sealed share per neighbour)."""

    config: SecAggConfig
    verifying_keys: Mapping[int, bytes] | None
    session: bytes
    keys: Mapping[int, AdvertiseKeys]
    graph: Mapping[int, tuple[int, ...]] = field(repr=False)
    received: Mapping[int, ShareKeys]
    stage: ClassVar[Stage] = Stage.SHARE_KEYS

    @property
    def pending(self) -> frozenset[int]:
        return frozenset(self.keys) - set(self.received)

    def receive(self, index: int, message: object) -> ServerCollectShares:
        _expect(message, ShareKeys, self.stage)
        assert isinstance(message, ShareKeys)
        _admit(index, frozenset(self.keys), self.received)
        if any(s.sender != index for s in message.shares):
            raise InvalidPayload("a share names a sender other than the client")
        if tuple(s.recipient for s in message.shares) != self.graph[index]:
            raise InvalidPayload("shares must address each neighbour once, in index order")
        if any(len(s.ciphertext) != _SEALED_SHARE_BYTES for s in message.shares):
            raise InvalidPayload(f"a sealed share must be {_SEALED_SHARE_BYTES} bytes")
        if any(len(s.commitment) != 2 * crypto.COMMITMENT_BYTES for s in message.shares):
            raise InvalidPayload(f"a share commitment must be {2 * crypto.COMMITMENT_BYTES} bytes")
        if len(message.seed_commitment) != crypto.COMMITMENT_BYTES:
            raise InvalidPayload(f"the seed commitment must be {crypto.COMMITMENT_BYTES} bytes")
        return replace(self, received=_with(self.received, index, message))

    def close(self) -> tuple[ServerState, Outbound]:
        """End of Round 1: fix U2 and relay to each member the shares its neighbours sent it."""
        u2 = frozenset(self.received)
        t = self.config.params.threshold
        if len(u2) < t + 1:
            return ServerAborted(
                f"only {len(u2)} clients shared keys; threshold is {t}, "
                f"so at least {t + 1} are needed"
            ), {}
        for i in sorted(u2):
            live = len(u2.intersection(self.graph[i]))
            if live < t:
                return ServerAborted(
                    f"client {i} has only {live} neighbours that shared keys; threshold is {t}"
                ), {}
        inbox: dict[int, list] = {i: [] for i in u2}
        for i in sorted(u2):
            for share in self.received[i].shares:
                if share.recipient in u2:
                    inbox[share.recipient].append(share)
        outbound = {i: RelayedShares(tuple(inbox[i])) for i in sorted(u2)}
        nxt = ServerCollectMasked(
            self.config,
            self.verifying_keys,
            self.session,
            self.keys,
            self.graph,
            u2,
            None,
            frozenset(),
            commitments_of(self.received),
        )
        return nxt, outbound


@dataclass(frozen=True, slots=True)
class ServerCollectMasked:
    """Round 2: collecting masked inputs from U2 and summing them in place as they arrive."""

    config: SecAggConfig
    verifying_keys: Mapping[int, bytes] | None
    session: bytes
    keys: Mapping[int, AdvertiseKeys]
    graph: Mapping[int, tuple[int, ...]] = field(repr=False)
    shared: frozenset[int]  # U2
    total: _RunningSum | None = field(repr=False)  # the masked inputs so far, or None
    received: frozenset[int] = frozenset()
    commitments: Commitments = field(default_factory=Commitments, repr=False)
    stage: ClassVar[Stage] = Stage.MASKED_INPUT

    @property
    def pending(self) -> frozenset[int]:
        return self.shared - self.received

    def receive(self, index: int, message: object) -> ServerCollectMasked:
        _expect(message, MaskedInput, self.stage)
        assert isinstance(message, MaskedInput)
        if index not in self.shared:
            raise UnknownEntity(f"client {index} is not part of this stage")
        if index in self.received:
            raise DuplicateRequest(f"client {index} already sent its masked input")
        vec = message.vector
        if (
            not isinstance(vec, np.ndarray)
            or vec.dtype != np.uint32
            or vec.shape != (self.config.vector_len,)
        ):
            raise InvalidPayload(f"masked input must be uint32 of length {self.config.vector_len}")
        if self.total is None:
            return replace(self, total=_RunningSum(vec), received=frozenset({index}))
        if self.total.closed:
            raise WrongStage("masked input arrived after the stage was closed")
        self.total.check(len(self.received))
        np.add(self.total.vector, vec, out=self.total.vector)  # wraps: addition mod 2^32
        self.total.count += 1
        return replace(self, received=self.received | {index})

    def close(self) -> tuple[ServerState, Outbound]:
        """End of Round 2: fix U3; ask for signatures (active) or straight for shares."""
        u3, t = self.received, self.config.params.threshold
        if self.total is not None:
            self.total.check(len(u3))
            self.total.closed = True
        if len(u3) < t:
            return ServerAborted(f"only {len(u3)} clients sent masked input; threshold is {t}"), {}
        dropped = tuple(sorted(self.shared - u3))
        for j in sorted(self.shared):
            live = len(u3.intersection(self.graph[j]))
            if live < t:
                return ServerAborted(
                    f"cannot unmask client {j}: only {live} of its neighbours sent masked "
                    f"input; threshold is {t}"
                ), {}
        survivors = tuple(sorted(u3))
        if self.config.active:
            request: ConsistencyRequest | UnmaskRequest = ConsistencyRequest(survivors)
            nxt: ServerState = ServerCollectConsistency(self, survivors, dropped, _EMPTY)
        else:
            request = UnmaskRequest(survivors, dropped)
            nxt = ServerCollectUnmask(self, survivors, dropped, u3, _EMPTY)
        return nxt, {i: request for i in survivors}


@dataclass(frozen=True, slots=True)
class ServerCollectConsistency:
    """Round 3 (active mode): collecting signatures on the survivor list U3."""

    masked: ServerCollectMasked = field(repr=False)
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    received: Mapping[int, bytes]
    stage: ClassVar[Stage] = Stage.CONSISTENCY_CHECK

    @property
    def pending(self) -> frozenset[int]:
        return frozenset(self.survivors) - set(self.received)

    def receive(self, index: int, message: object) -> ServerCollectConsistency:
        _expect(message, ConsistencySignature, self.stage)
        assert isinstance(message, ConsistencySignature)
        _admit(index, frozenset(self.survivors), self.received)
        if len(message.signature) != crypto.SIGNATURE_BYTES:
            raise InvalidPayload(f"signature must be {crypto.SIGNATURE_BYTES} bytes")
        vks = self.masked.verifying_keys
        if vks is not None:
            statement = survivors_statement(self.masked.session, self.survivors)
            if index not in vks or not crypto.verify(vks[index], statement, message.signature):
                raise InvalidPayload("survivor-list signature does not verify")
        return replace(self, received=_with(self.received, index, message.signature))

    def close(self) -> tuple[ServerState, Outbound]:
        """End of Round 3: forward every signature with the unmask request to the signers."""
        signers, t = frozenset(self.received), self.masked.config.params.threshold
        for j in sorted(self.masked.shared):
            live = len(signers.intersection(self.masked.graph[j]))
            if live < t:
                return ServerAborted(
                    f"cannot unmask client {j}: only {live} of its neighbours signed the "
                    f"survivor list; threshold is {t}"
                ), {}
        signatures = tuple(SurvivorSignature(i, self.received[i]) for i in sorted(signers))
        request = UnmaskRequest(self.survivors, self.dropped, signatures)
        nxt = ServerCollectUnmask(self.masked, self.survivors, self.dropped, signers, _EMPTY)
        return nxt, {i: request for i in sorted(signers)}


@dataclass(frozen=True, slots=True)
class ServerCollectUnmask:
    """Round 4: collecting revealed shares, then reconstructing and removing the masks."""

    masked: ServerCollectMasked = field(repr=False)
    survivors: tuple[int, ...]  # U3
    dropped: tuple[int, ...]  # U2 minus U3
    asked: frozenset[int]  # who received an UnmaskRequest
    # responder -> {owner: share as a field element}; secret material, so kept out of repr
    received: Mapping[int, Mapping[int, int]] = field(repr=False)
    # responder -> the owners it complains of
    complaints: Mapping[int, frozenset[int]] = field(default_factory=lambda: _EMPTY)
    stage: ClassVar[Stage] = Stage.UNMASKING

    @property
    def pending(self) -> frozenset[int]:
        return self.asked - set(self.received)

    def receive(self, index: int, message: object) -> ServerCollectUnmask:
        _expect(message, UnmaskResponse, self.stage)
        assert isinstance(message, UnmaskResponse)
        _admit(index, self.asked, self.received)
        m = self.masked
        shares = collect_unmask_shares(
            message,
            index,
            m.graph[index],
            m.shared,
            frozenset(self.survivors),
            m.commitments,
            m.session,
        )
        return replace(
            self,
            received=_with(self.received, index, shares),
            complaints=_with(self.complaints, index, frozenset(message.complaints)),
        )

    def close(
        self, executor: Executor | None = None, workers: int = 1
    ) -> tuple[ServerState, Outbound]:
        """End of Round 4: reconstruct b of survivors and s^SK of the dropped, strip the masks.

        `executor` (a process pool) with `workers` > 1 spreads the mask expansions over
        processes; the result is the same bit for bit.
        """
        m = self.masked
        assert m.total is not None  # close() of Round 2 guarantees t >= 1 inputs arrived
        m.total.check(len(self.survivors))
        outcome = unmask_sum(
            total=m.total.vector,
            session=m.session,
            keys=m.keys,
            graph=m.graph,
            survivors=self.survivors,
            dropped=self.dropped,
            revealed=self.received,
            threshold=m.config.params.threshold,
            commitments=m.commitments,
            complaints=self.complaints,
            executor=executor,
            workers=workers,
        )
        if isinstance(outcome, UnmaskFailure):
            return ServerAborted(outcome.reason, outcome.culprits, outcome.suspects), {}
        return ServerFinished(outcome), {}


ServerState = (
    ServerCollectKeys
    | ServerCollectShares
    | ServerCollectMasked
    | ServerCollectConsistency
    | ServerCollectUnmask
    | ServerFinished
    | ServerAborted
)
