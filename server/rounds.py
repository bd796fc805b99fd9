"""The round's vocabulary: tasks, submissions, events and the in-progress round.

Plain data shared by the coordinator and the RPC edge; no I/O and no transport types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from forsaken.common.tensors import TensorSpec
from forsaken.common.types import ModelSpec
from forsaken.server.ledger import RoundRecord, RoundStatus
from forsaken.server.secure_round import SecureRound


class Phase(StrEnum):
    WAITING = "waiting"
    TRAINING = "training"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class Submission:
    request_id: str
    task_id: str
    round: int
    base_model_sha256: str
    num_samples: int
    metrics: Mapping[str, float]
    tensors: tuple[TensorSpec, ...]
    payload: bytes


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    accepted: bool
    duplicate: bool


@dataclass(frozen=True, slots=True)
class EvalResult:
    accuracy: float
    loss: float


@dataclass(frozen=True, slots=True)
class RoundStarted:
    round: int
    attempt: int
    selected: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoundCompleted:
    record: RoundRecord


class AbortCause(StrEnum):
    SHORTFALL = "shortfall"  # too few updates by the deadline
    SECAGG = "secagg"  # the secure-aggregation session could not finish
    REFUSED = "refused"  # an aggregate the server would not apply (norm bound, regression)


@dataclass(frozen=True, slots=True)
class RoundAborted:
    record: RoundRecord
    cause: AbortCause = AbortCause.SHORTFALL


@dataclass(frozen=True, slots=True)
class Finished:
    completed_rounds: int


Event = RoundStarted | RoundCompleted | RoundAborted | Finished
Evaluator = Callable[[np.ndarray], EvalResult | None]


@dataclass
class Accepted:
    request_id: str
    num_samples: int
    metrics: Mapping[str, float]
    update: np.ndarray


@dataclass
class OpenRound:
    number: int
    attempt: int
    selected: tuple[str, ...]
    base_sha: str
    started_ms: int
    deadline_ms: int
    accepted: dict[str, Accepted] = field(default_factory=dict)
    secure: SecureRound | None = None
    # Each selected node's declared sample count when the round started: its FedAvg weight.
    weights: dict[str, int] = field(default_factory=dict)
    forget_node: str = ""  # the node uploading a forget step in this round, if any

    def task_id(self, node_id: str) -> str:
        return f"r{self.number}.a{self.attempt}.{node_id[:12]}"


@dataclass(frozen=True, slots=True)
class StatusView:
    phase: Phase
    current_round: int
    completed_rounds: int
    target_rounds: int
    connected: int
    model_sha256: str
    last_abort_reason: str
    last_test_acc: float | None
    secagg_stage: str = ""


def masked_input_spec(tensors: tuple[TensorSpec, ...]) -> TensorSpec:
    """The one tensor of a secure upload: the masked, quantized update plus its sample count."""
    return TensorSpec("masked_input", (sum(t.numel for t in tensors) + 1,), "uint32")


def spec_fingerprint(spec: ModelSpec, tensors: tuple[TensorSpec, ...]) -> str:
    shape = "x".join(str(d) for d in spec.input_shape)
    return f"{spec.architecture}/{shape}/{spec.num_classes}/{sum(t.numel for t in tensors)}"


def mean_metrics(accepted: Iterable[Accepted]) -> dict[str, float]:
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for a in accepted:
        for k, v in a.metrics.items():
            sums[k] = sums.get(k, 0.0) + v
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


def round_record(
    rnd: OpenRound,
    now_ms: int,
    *,
    status: RoundStatus,
    participants: tuple[str, ...],
    model_sha256: str | None = None,
    total_samples: int = 0,
    evaluation: EvalResult | None = None,
    reason: str = "",
    metrics: Mapping[str, float] | None = None,
) -> RoundRecord:
    return RoundRecord(
        round=rnd.number,
        attempt=rnd.attempt,
        status=status,
        selected=rnd.selected,
        participants=participants,
        model_sha256=model_sha256,
        base_model_sha256=rnd.base_sha or None,
        total_samples=total_samples,
        test_acc=evaluation.accuracy if evaluation else None,
        test_loss=evaluation.loss if evaluation else None,
        duration_s=(now_ms - rnd.started_ms) / 1000.0,
        reason=reason,
        started_ms=rnd.started_ms,
        finished_ms=now_ms,
        metrics=dict(metrics or {}),
    )
