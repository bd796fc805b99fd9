"""The global model as the server keeps it: the current vector, where it came from, and resume.

Every model the federation adopts is checkpointed (content-addressed) before the ledger names
it, so on start the last completed round's checkpoint is the model; a fresh state directory
gets the initial model as round 0. The bytes handed to clients are encoded once per model.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np

from forsaken.common.errors import InvalidPayload
from forsaken.common.tensors import TensorSpec, from_bytes, to_bytes
from forsaken.common.types import ModelSpec
from forsaken.server.checkpoints import CheckpointStore
from forsaken.server.ledger import Ledger, RoundRecord, RoundStatus
from forsaken.server.rounds import EvalResult, Evaluator, spec_fingerprint

log = logging.getLogger(__name__)


class GlobalModel:
    def __init__(
        self,
        ledger: Ledger,
        checkpoints: CheckpointStore,
        model_spec: ModelSpec,
        tensors: tuple[TensorSpec, ...],
        evaluator: Evaluator | None,
    ) -> None:
        self.ledger = ledger
        self.checkpoints = checkpoints
        self.model_spec = model_spec
        self.tensors = tensors
        self.evaluator = evaluator
        self.vector = np.zeros(0, np.float32)
        self.sha256 = ""
        self.completed = 0  # the round that produced the current model
        self.last_acc: float | None = None
        self._payload: tuple[str, bytes] = ("", b"")

    def restore(self, initial: Callable[[], np.ndarray]) -> RoundRecord | None:
        """Load the last completed round's model; or checkpoint `initial()` and return the
        round-0 record the caller must write (after the model is durable)."""
        spec_key = spec_fingerprint(self.model_spec, self.tensors)
        stored = self.ledger.get_meta("model_spec")
        if stored is not None and stored != spec_key:
            raise InvalidPayload(
                f"state directory holds a federation for model {stored}, not {spec_key}"
            )
        last = self.ledger.last_completed()
        if last is not None and last.model_sha256:
            self.vector = from_bytes(self.checkpoints.get(last.model_sha256), self.tensors)
            self.sha256, self.completed, self.last_acc = (
                last.model_sha256,
                last.round,
                last.test_acc,
            )
            log.info("resuming after round %d from checkpoint %s", last.round, self.sha256[:12])
            return None
        vector = np.asarray(initial(), dtype=np.float32)
        if vector.size != sum(t.numel for t in self.tensors):
            raise InvalidPayload("initial model does not match the model's tensor specs")
        evaluation = self.evaluate(vector)
        self.vector, self.sha256 = vector, self.checkpoints.put(to_bytes(vector), {"round": 0})
        self.last_acc = evaluation.accuracy if evaluation else None
        self.ledger.set_meta("model_spec", spec_key)
        return RoundRecord(
            round=0,
            attempt=0,
            status=RoundStatus.COMPLETED,
            model_sha256=self.sha256,
            test_acc=evaluation.accuracy if evaluation else None,
            test_loss=evaluation.loss if evaluation else None,
        )

    def evaluate(self, vector: np.ndarray) -> EvalResult | None:
        result = self.evaluator(vector) if self.evaluator else None
        if result is None or not (math.isfinite(result.accuracy) and math.isfinite(result.loss)):
            return None  # a diverged model has no meaningful score; the ledger stores none
        return result

    def store(self, vector: np.ndarray, round_: int) -> str:
        """Checkpoint a candidate model: durable before any ledger row names it."""
        return self.checkpoints.put(to_bytes(vector), {"round": round_})

    def adopt(self, vector: np.ndarray, sha256: str, round_: int, acc: float | None) -> None:
        self.vector, self.sha256, self.completed, self.last_acc = vector, sha256, round_, acc

    def roll_back(self, sha256: str) -> None:
        """Replace the model with an earlier checkpoint (a `retrain` forget); the round count
        stays, since retraining continues the federation's round numbers."""
        self.vector = from_bytes(self.checkpoints.get(sha256), self.tensors)
        self.sha256 = sha256

    def payload(self, sha256: str) -> bytes:
        """Bytes of a stored model (the current one or an earlier checkpoint)."""
        if sha256 != self.sha256:
            return self.checkpoints.get(sha256)
        # Every sampled node fetches the same model: encode it once per model, not per fetch.
        cached_sha, payload = self._payload
        if cached_sha != sha256:
            payload = to_bytes(self.vector)
            self._payload = (sha256, payload)
        return payload


def lineage_accuracies(ledger: Ledger, model_sha: str, count: int) -> list[float]:
    """Validation accuracies of `model_sha` and the models it descends from, oldest first.

    Following base digests rather than round numbers skips what a `retrain` rollback left
    behind, so the regression guard compares a retrained model with its own ancestors.
    """
    by_model = {
        r.model_sha256: r for r in ledger.rounds() if r.status == "completed" and r.model_sha256
    }
    out: list[float] = []
    seen: set[str] = set()
    record = by_model.get(model_sha)
    while record is not None and len(out) < count and record.model_sha256 not in seen:
        seen.add(record.model_sha256 or "")  # a zero update repeats its base's digest
        if record.test_acc is not None:
            out.append(record.test_acc)
        record = by_model.get(record.base_model_sha256 or "")
    return out[::-1]
