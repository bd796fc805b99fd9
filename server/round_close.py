"""Closing a round: from its aggregate to a new global model, or a refusal with the reason.

The aggregate is bounded (`check_aggregate`), applied, judged by the regression guard,
checkpointed and then recorded in the ledger (a crash in between leaves an orphan blob, never
a row naming a missing model); the forget lifecycle and checkpoint retention hear of it last.
The coordinator keeps what belongs to the round in progress (attempts, who missed it).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from forsaken.common.errors import InvalidPayload
from forsaken.common.fedavg import weighted_average
from forsaken.common.update_bound import check_aggregate
from forsaken.server import retention
from forsaken.server.checkpoints import CheckpointStore
from forsaken.server.forgetting import ForgetManager
from forsaken.server.global_model import GlobalModel
from forsaken.server.ledger import Ledger, RoundRecord, RoundStatus
from forsaken.server.model_guard import RegressionGuard
from forsaken.server.registry import ClientRegistry
from forsaken.server.rounds import OpenRound, mean_metrics, round_record

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Aggregate:
    """What a round produced: the weighted mean update and who is in it."""

    delta: np.ndarray
    total_weight: int
    participants: tuple[str, ...]
    metrics: Mapping[str, float] = field(default_factory=dict)
    slack: float = 0.0  # secure rounds: the quantisation's share of the norm bound


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str


def plain_aggregate(rnd: OpenRound, min_completed: int, now_ms: int) -> Aggregate | str | None:
    """A plaintext round's aggregate once every update arrived or the deadline passed; the
    reason it must abort instead; or None while it is still waiting."""
    if len(rnd.accepted) < len(rnd.selected) and now_ms < rnd.deadline_ms:
        return None
    if len(rnd.accepted) < min_completed:
        return (
            f"deadline passed with {len(rnd.accepted)} of {len(rnd.selected)} updates; "
            f"{min_completed} needed"
        )
    accepted = rnd.accepted.values()
    total = sum(a.num_samples for a in accepted)
    if total == 0:
        return "no participant reported any samples"
    delta = weighted_average([(a.update, a.num_samples) for a in accepted])
    return Aggregate(delta, total, tuple(sorted(rnd.accepted)), mean_metrics(accepted))


@dataclass
class RoundCloser:
    model: GlobalModel
    guard: RegressionGuard
    ledger: Ledger
    checkpoints: CheckpointStore
    registry: ClientRegistry
    forgets: ForgetManager
    max_update_norm: float
    keep_checkpoints: int  # 0: keep every checkpoint (server/retention.py)

    def commit(self, rnd: OpenRound, agg: Aggregate, now_ms: int) -> RoundRecord | Refused:
        """Bound, apply and judge the aggregate; then checkpoint, then record."""
        try:
            norm = check_aggregate(
                agg.delta,
                self.max_update_norm,
                forget_round=bool(rnd.forget_node),
                slack=agg.slack,
            )
        except InvalidPayload as exc:
            return Refused(f"refused: {exc}; the previous model is kept")
        vector = (self.model.vector + agg.delta).astype(np.float32)
        evaluation = self.model.evaluate(vector)
        refusal = self.guard.refusal(evaluation, evaluated=self.model.evaluator is not None)
        if refusal is not None:
            return Refused(refusal)
        sha = self.model.store(vector, rnd.number)
        record = round_record(
            rnd,
            now_ms,
            status=RoundStatus.COMPLETED,
            participants=agg.participants,
            model_sha256=sha,
            total_samples=agg.total_weight,
            evaluation=evaluation,
            metrics={**agg.metrics, "update_norm": norm},
            reason=self.registry.faults.notes(rnd.number),
        )
        self.ledger.record_round(record)
        acc = evaluation.accuracy if evaluation else None
        self.model.adopt(vector, sha, rnd.number, acc)
        self.guard.committed(evaluation)
        self.forgets.on_round_completed(agg.participants, now_ms, sha, acc)
        retention.collect(
            self.ledger, self.checkpoints, self.keep_checkpoints, rnd.number, self.model.sha256
        )
        shown = "n/a" if acc is None else f"{acc:.4f}"
        log.info(
            "round %d completed with %d updates (acc=%s)", rnd.number, len(agg.participants), shown
        )
        return record

    def record_abort(self, rnd: OpenRound, reason: str, now_ms: int) -> RoundRecord:
        record = round_record(
            rnd,
            now_ms,
            status=RoundStatus.ABORTED,
            participants=tuple(sorted(rnd.accepted)),
            reason=reason,
        )
        self.ledger.record_round(record)
        log.warning("round %d attempt %d aborted: %s", rnd.number, rnd.attempt, reason)
        return record
