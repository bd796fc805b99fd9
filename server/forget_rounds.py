"""Where the forget lifecycle meets the round machinery.

`ForgetManager` knows requests and the ledger; this knows what they ask of the global model
and of rounds: starting the oldest request before a round (NoT's negated model, `retrain`'s
rollback), whether rounds must still run for it after the target is reached, which models
its node may measure evidence on, and which nodes an operator may forget.
"""

from __future__ import annotations

import logging

from forsaken.common.errors import StaleRequest, UnknownEntity, WrongStage
from forsaken.common.forget_reports import EvidenceReport, ForgetReport
from forsaken.common.round_tasks import VerifyTask
from forsaken.common.unlearning.negation import negate
from forsaken.server.forget_state import ForgetProgress
from forsaken.server.forgetting import ForgetManager
from forsaken.server.global_model import GlobalModel
from forsaken.server.ledger import ForgetRecord, ForgetState, Ledger
from forsaken.server.model_guard import RegressionGuard
from forsaken.server.registry import ClientRegistry

log = logging.getLogger(__name__)

MAX_VERIFY_MODELS = 16  # models a verification may still be measured on


class ForgetRounds:
    """Not thread-safe: the coordinator's callers serialise."""

    def __init__(
        self,
        forgets: ForgetManager,
        model: GlobalModel,
        guard: RegressionGuard,
        registry: ClientRegistry,
        ledger: Ledger,
    ) -> None:
        self.forgets, self.model, self.guard = forgets, model, guard
        self.registry, self.ledger = registry, ledger
        # forget id -> the models sent to its node to verify on (newest last; memory only:
        # after a restart the node is simply sent the current model again)
        self._verify_models: dict[str, list[str]] = {}

    def start_next(self, now_ms: int) -> None:
        """Start the oldest queued request, if any (called only while no round is open)."""
        negated = None
        if self.forgets.needs_negated_model():
            # NoT: the ledger names the negated model's checkpoint before anything uses it.
            vector = negate(self.model.vector, self.model.tensors)
            negated = self.model.store(vector, self.model.completed)
        rollback = self.forgets.begin(self.model.sha256, self.model.completed, now_ms, negated)
        if rollback is not None:
            self._roll_back(rollback)

    def needs_rounds(self) -> bool:
        """Rounds must run for the active request, even once the target rounds are done."""
        rec = self.forgets.active()
        return rec is not None and rec.state in (ForgetState.UNLEARNING, ForgetState.RECOVERING)

    def verify_task(self, node_id: str) -> VerifyTask | None:
        """The node's verification, if its request waits for its evidence."""
        rec = self.forgets.verify_for(node_id)
        if rec is None:
            return None
        # Remembered so that evidence measured on this model still counts after later rounds
        # move on: a node verifying a large model can take longer than a round.
        issued = self._verify_models.setdefault(rec.forget_id, [])
        if self.model.sha256 not in issued:
            issued[:] = [*issued[-(MAX_VERIFY_MODELS - 1) :], self.model.sha256]
        return VerifyTask(rec.forget_id, self.model.sha256, self.model.completed)

    def report(self, caller: str, report: ForgetReport, now_ms: int) -> ForgetRecord:
        """The forgetting node's report; evidence counts only on a model it was sent."""
        self.registry.seen(caller, None, now_ms)
        forget_id, body = report.forget_id, report.body
        sent = self._verify_models.get(forget_id, ())
        if isinstance(body, EvidenceReport) and body.model_sha256 not in (self.model.sha256, *sent):
            raise StaleRequest(
                "evidence must be measured on the current global model or on one this server "
                "sent for this request's verification"
            )
        rec = self.forgets.on_report(caller, report, now_ms)
        if rec.state.terminal:
            self._verify_models.pop(forget_id, None)
        return rec

    def operator_request(
        self, operator: str, node_id: str, request_id: str, method: str, reason: str, now_ms: int
    ) -> tuple[ForgetRecord, bool]:
        """An operator asks to forget a revoked node, which can no longer ask for itself."""
        if self.ledger.client(node_id) is None:
            raise UnknownEntity(f"no client {node_id} has ever joined")
        if not self.registry.is_revoked(node_id):
            raise WrongStage(
                f"node {node_id} is not revoked: a live node keeps training on its data, so "
                f"revoke it first (`forsaken admin revoke {node_id}`) or let it ask itself"
            )
        return self.forgets.operator_request(operator, node_id, request_id, method, reason, now_ms)

    def _roll_back(self, rec: ForgetRecord) -> None:
        """`retrain`: restart from the last model before the node's first contribution;
        `not`: continue from the negated model."""
        sha = ForgetProgress.from_json(rec.progress_json).rollback_model
        self.model.roll_back(sha)
        # From now on the guard compares retrained models with the rolled-back one.
        self.guard.restart(self.model.evaluate(self.model.vector))
        log.warning(
            "forget %s (%s): the model is now %s; training continues without node %s",
            rec.forget_id,
            rec.method,
            sha[:12],
            rec.node_id,
        )
