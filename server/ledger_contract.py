"""The ledger's contract: frozen records, the forget state machine, the `Ledger` ABC.

Import these from `forsaken.server.ledger`. The rules that decide what may be recorded
(duplicate rounds, unknown clients, forget transitions) are plain functions here, called by
both `MemoryLedger` and `SqliteLedger`, so the two cannot drift apart; one shared test suite
checks that they behave the same.

Round 0 is the initial model: a completed round with no participants. Contributions, the
rounds a client took part in, are written in the same transaction as their completed round;
they are what lets the retrain baseline roll back to before a client first contributed.
"""

from __future__ import annotations

import json
import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from types import MappingProxyType, TracebackType
from typing import NoReturn, Self, TypedDict, TypeVar, Unpack, overload

from forsaken.common.errors import DuplicateRequest, InvalidPayload, UnknownEntity, WrongStage
from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.forget_states import (
    ForgetState as ForgetState,  # re-exported: the ledger API names it
)
from forsaken.server.checkpoints import check_address


class IllegalTransition(WrongStage):
    """A forget request cannot move from its state to the one asked; it is left unchanged.

    A `WrongStage` so the RPC edge's error table maps it (FAILED_PRECONDITION) unchanged.
    """


class RoundStatus(StrEnum):
    COMPLETED = "completed"
    ABORTED = "aborted"


_F = ForgetState
# The forward chain, plus `failed` from every state that is not yet terminal.
FORGET_TRANSITIONS: Mapping[ForgetState, frozenset[ForgetState]] = MappingProxyType(
    {
        _F.REQUESTED: frozenset({_F.UNLEARNING, _F.FAILED}),
        _F.UNLEARNING: frozenset({_F.RECOVERING, _F.FAILED}),
        _F.RECOVERING: frozenset({_F.VERIFYING, _F.FAILED}),
        _F.VERIFYING: frozenset({_F.COMPLETED, _F.FAILED}),
        _F.COMPLETED: frozenset(),
        _F.FAILED: frozenset(),
    }
)


_E = TypeVar("_E", bound=StrEnum)


class FrozenDict(dict[str, float]):
    """A read-only dict, so records stay immutable (MemoryLedger hands out shared instances).

    A dict subclass rather than a `MappingProxyType` so that `json.dumps`,
    `dataclasses.asdict` and `copy.deepcopy` still work on records.
    """

    def _read_only(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("record fields are read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only
    clear = pop = popitem = setdefault = update = _read_only

    def __reduce__(self) -> tuple[type[FrozenDict], tuple[dict[str, float]]]:
        # The default reduction refills the dict item by item, which _read_only refuses.
        return (FrozenDict, (dict(self),))

    def __deepcopy__(self, memo: dict[int, object]) -> FrozenDict:
        return self


def _set(obj: object, name: str, value: object) -> None:
    # Normalising fields of a frozen dataclass in __post_init__.
    object.__setattr__(obj, name, value)


def _enum(kind: type[_E], value: str, what: str) -> _E:
    try:
        return kind(value)
    except ValueError:
        raise InvalidPayload(f"unknown {what} {value!r}") from None


@overload
def _finite(value: float, what: str) -> float: ...
@overload
def _finite(value: float | None, what: str) -> float | None: ...
def _finite(value: float | None, what: str) -> float | None:
    # SQLite stores NaN as NULL; refusing non-finite values keeps both ledgers identical.
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidPayload(f"{what} must be a finite number, got {value!r}")
    return float(value)


def _ints(obj: object, *names: str) -> None:
    # Accepts numpy integers too, stored as plain ints: sqlite3 cannot bind numpy scalars.
    for name in names:
        value = getattr(obj, name)
        try:
            _set(obj, name, operator.index(value))
        except TypeError:
            raise InvalidPayload(f"{name} must be an integer, got {value!r}") from None


def _json_text(text: str, what: str) -> str:
    try:
        json.loads(text)
    except (TypeError, ValueError):
        raise InvalidPayload(f"{what} is not valid JSON") from None
    return text


@dataclass(frozen=True, slots=True)
class RoundRecord:
    """One attempt at a round. `participants` are the clients whose updates were aggregated."""

    round: int
    attempt: int
    status: RoundStatus
    selected: tuple[str, ...] = ()
    participants: tuple[str, ...] = ()
    model_sha256: str | None = None
    base_model_sha256: str | None = None
    total_samples: int = 0
    test_acc: float | None = None
    test_loss: float | None = None
    duration_s: float = 0.0
    reason: str = ""
    started_ms: int = 0
    finished_ms: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _set(self, "status", _enum(RoundStatus, self.status, "round status"))
        _set(self, "selected", tuple(self.selected))
        _set(self, "participants", tuple(self.participants))
        _set(self, "test_acc", _finite(self.test_acc, "test_acc"))
        _set(self, "test_loss", _finite(self.test_loss, "test_loss"))
        _set(self, "duration_s", _finite(self.duration_s, "duration_s"))
        metrics = {str(k): _finite(v, f"metric {k}") for k, v in self.metrics.items()}
        _set(self, "metrics", FrozenDict(metrics))
        _ints(self, "round", "attempt", "total_samples", "started_ms", "finished_ms")
        for sha in (self.model_sha256, self.base_model_sha256):
            if sha is not None:
                check_address(sha)
        if self.round < 0 or self.attempt < 0:
            raise InvalidPayload(f"round {self.round} attempt {self.attempt} is negative")
        if len(set(self.participants)) != len(self.participants):
            raise InvalidPayload(f"round {self.round} lists a participant twice")
        if self.status is RoundStatus.COMPLETED and not self.model_sha256:
            raise InvalidPayload(f"completed round {self.round} has no model_sha256")


@dataclass(frozen=True, slots=True)
class ClientRecord:
    node_id: str
    public_key: bytes
    num_samples: int = 0
    first_seen_ms: int = 0
    last_seen_ms: int = 0
    revoked: bool = False
    quarantine: str = ""  # why the node is quarantined (server/faults.py); empty: it is not

    def __post_init__(self) -> None:
        if not self.node_id:
            raise InvalidPayload("a client needs a node_id")
        _ints(self, "num_samples", "first_seen_ms", "last_seen_ms")
        _set(self, "public_key", bytes(self.public_key))
        _set(self, "revoked", bool(self.revoked))
        _set(self, "quarantine", str(self.quarantine))


@dataclass(frozen=True, slots=True)
class ForgetRecord:
    """A forget request. Empty `sample_ids` means all of the client's data.

    `method` and `state` are enums whose values are the strings the ledger stores.
    """

    forget_id: str
    node_id: str
    request_id: str
    method: ForgetMethod
    sample_ids: tuple[int, ...] = ()
    state: ForgetState = ForgetState.REQUESTED
    reason: str = ""
    created_ms: int = 0
    updated_ms: int = 0
    receipt_json: str = "{}"
    progress_json: str = "{}"
    # Who asked: empty for the node itself, "operator:<name>" for an operator's forget of a
    # node that can no longer take part (a revoked one); the server then verifies alone.
    initiated_by: str = ""

    def __post_init__(self) -> None:
        _set(self, "state", _enum(ForgetState, self.state, "forget state"))
        _set(self, "method", _enum(ForgetMethod, self.method, "forget method"))
        try:
            ids = tuple(operator.index(i) for i in self.sample_ids)
        except TypeError:
            raise InvalidPayload("sample_ids must be integers") from None
        if any(i < 0 for i in ids):
            raise InvalidPayload("sample_ids must be non-negative")
        _set(self, "sample_ids", ids)
        _ints(self, "created_ms", "updated_ms")
        _json_text(self.receipt_json, "receipt_json")
        _json_text(self.progress_json, "progress_json")
        if not (self.forget_id and self.node_id and self.request_id):
            raise InvalidPayload("a forget request needs forget_id, node_id and request_id")


def check_new_round(
    rec: RoundRecord,
    *,
    attempt_exists: bool,
    completed_exists: bool,
    unknown_participants: Sequence[str],
) -> None:
    """The rules for recording a round, shared by every ledger."""
    if rec.status is RoundStatus.COMPLETED and completed_exists:
        raise DuplicateRequest(f"round {rec.round} is already completed")
    if attempt_exists:
        raise DuplicateRequest(f"round {rec.round} attempt {rec.attempt} is already recorded")
    if rec.status is RoundStatus.COMPLETED and unknown_participants:
        unknown = sorted(unknown_participants)
        raise UnknownEntity(f"round {rec.round} names unknown clients {unknown}")


class ForgetChanges(TypedDict, total=False):
    """The fields of a forget request that `update_forget` may change."""

    state: ForgetState | str
    reason: str
    receipt_json: str
    progress_json: str


def advance_forget(
    cur: ForgetRecord, now_ms: int, **changes: Unpack[ForgetChanges]
) -> ForgetRecord:
    """The updated record, or `IllegalTransition` (terminal records never change)."""
    target = _enum(ForgetState, changes.get("state", cur.state), "forget state")
    if cur.state.terminal:
        raise IllegalTransition(
            f"forget {cur.forget_id} is {cur.state}; it cannot move to {target} or change"
        )
    if target != cur.state and target not in FORGET_TRANSITIONS[cur.state]:
        raise IllegalTransition(f"forget {cur.forget_id}: {cur.state} -> {target} is not allowed")
    return replace(
        cur,
        state=target,
        reason=changes.get("reason", cur.reason),
        receipt_json=changes.get("receipt_json", cur.receipt_json),
        progress_json=changes.get("progress_json", cur.progress_json),
        updated_ms=now_ms,
    )


def check_new_forget(rec: ForgetRecord, *, client_known: bool, id_taken: bool) -> None:
    if rec.state is not ForgetState.REQUESTED:
        raise InvalidPayload(f"a new forget request starts as requested, not {rec.state}")
    if not client_known:
        raise UnknownEntity(f"forget request from unknown client {rec.node_id!r}")
    if id_taken:
        raise DuplicateRequest(f"forget id {rec.forget_id} is already used by another request")


class Ledger(ABC):
    """Rounds, contributions, clients, forget requests, idempotency records, metadata."""

    # Rounds -----------------------------------------------------------------------------------
    @abstractmethod
    def record_round(self, rec: RoundRecord) -> None:
        """Append a round attempt; a completed one also records its contributions.

        `DuplicateRequest` if the round is already completed or this attempt already recorded;
        `UnknownEntity` if a participant of a completed round is not a known client.
        """

    @abstractmethod
    def rounds(self, limit: int | None = None) -> list[RoundRecord]:
        """All attempts ordered by (round, attempt); with `limit`, only the latest `limit`."""

    @abstractmethod
    def last_completed(self) -> RoundRecord | None:
        """The completed round with the highest number."""

    @abstractmethod
    def completed_round(self, n: int) -> RoundRecord:
        """The completed attempt of round `n`, or `UnknownEntity`."""

    @abstractmethod
    def last_checkpoint_before(self, n: int) -> RoundRecord | None:
        """The latest completed round strictly before round `n`."""

    @abstractmethod
    def contributions(self, node_id: str) -> list[int]:
        """Completed rounds the client took part in, ascending."""

    def first_contribution(self, node_id: str) -> int | None:
        rounds = self.contributions(node_id)
        return rounds[0] if rounds else None

    # Clients ----------------------------------------------------------------------------------
    @abstractmethod
    def upsert_client(self, rec: ClientRecord) -> ClientRecord:
        """Insert, or overwrite every field but `first_seen_ms`; returns the stored record."""

    @abstractmethod
    def client(self, node_id: str) -> ClientRecord | None:
        """The client, or None for a node never seen (the join path asks this routinely)."""

    @abstractmethod
    def clients(self) -> list[ClientRecord]:
        """Every client, ordered by node_id."""

    @abstractmethod
    def touch_client(
        self, node_id: str, now_ms: int, num_samples: int | None = None
    ) -> ClientRecord:
        """Note that a client was seen and, if given, its sample count; `UnknownEntity` if absent.

        `last_seen_ms` never moves back, so heartbeats handled out of order are harmless.
        """

    # Forget requests --------------------------------------------------------------------------
    @abstractmethod
    def create_forget(self, rec: ForgetRecord) -> tuple[ForgetRecord, bool]:
        """Store a new request, idempotent by (node_id, request_id).

        A retry returns the stored record and False, whatever else it carries.
        """

    @abstractmethod
    def update_forget(
        self, forget_id: str, *, now_ms: int, **changes: Unpack[ForgetChanges]
    ) -> ForgetRecord:
        """Apply `advance_forget` durably and return the new record."""

    @abstractmethod
    def forget(self, forget_id: str) -> ForgetRecord:
        """The request, or `UnknownEntity`."""

    @abstractmethod
    def forgets(self, node_id: str | None = None) -> list[ForgetRecord]:
        """Requests (of one client, or all) ordered by (created_ms, forget_id)."""

    def pending_forgets(self) -> list[ForgetRecord]:
        """Requests not yet completed or failed: the work to resume after a restart."""
        return [f for f in self.forgets() if not f.state.terminal]

    # Idempotency and metadata -----------------------------------------------------------------
    @abstractmethod
    def remember_request(self, kind: str, node_id: str, request_id: str, response_json: str) -> str:
        """The response stored for this (kind, node_id, request_id), storing ours if none."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    @abstractmethod
    def get_meta(self, key: str) -> str | None: ...

    @abstractmethod
    def close(self) -> None:
        """Release the ledger; later calls raise `Unavailable`. Safe to call twice."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def check_limit(limit: int | None, total: int) -> int:
    """How many of `total` records a `limit` keeps."""
    if limit is None:
        return total
    if limit < 0:
        raise InvalidPayload(f"limit must be >= 0, got {limit}")
    return min(limit, total)
