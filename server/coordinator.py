"""The transport-free round coordinator: the round lifecycle, composed of smaller parts.

An event-driven state machine: the runtime (and the tests) call `poll`, `submit`,
`secagg_message` and `tick(now)`; the coordinator answers with tasks, outcomes and events. It
never sleeps, never reads a clock and never touches the network. Its parts each own one
concern: `registry` (members, liveness, faults), `model` (the global model, checkpoints,
resume), `forgets` (the forget lifecycle) and `forget_rounds` (where it meets rounds: starting
a request, verification models, an operator's forget), `guard` (refusing a collapsing round),
`closer` (from an aggregate to a recorded round, `round_close`). Who takes part and with what
weight is `selection`; what a node sends is checked by `submissions` and `update_checks`;
secure sessions live in `secure_round`. The RPC edge calls these parts directly, under the
runtime's one lock, where a call is only theirs (a forget request, a revocation).

Round life: WAITING (until `min_clients` are live) -> TRAINING (sampled clients fetch the
model, train and push updates, in plaintext or through the secure stages, until all delivered
or the deadline) -> bound, apply, judge -> checkpoint -> ledger -> WAITING for the next round,
or FINISHED after the target number of rounds. A round that cannot complete is recorded as
aborted, with its reason, and retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from forsaken.common.errors import ConfigError
from forsaken.common.round_tasks import AnyTask, SecAggTask, StopTask, TrainTask
from forsaken.common.secagg.messages import Stage as SecAggStage
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.tensors import TensorSpec
from forsaken.common.types import ModelSpec, TrainSettings
from forsaken.server import update_checks
from forsaken.server.checkpoints import CheckpointStore
from forsaken.server.forget_rounds import ForgetRounds
from forsaken.server.forgetting import ForgetManager, ForgetPolicy
from forsaken.server.global_model import GlobalModel, lineage_accuracies
from forsaken.server.ledger import Ledger
from forsaken.server.model_guard import GuardSettings, RegressionGuard
from forsaken.server.policy import RoundPolicy
from forsaken.server.registry import ClientRegistry
from forsaken.server.round_close import Aggregate, Refused, RoundCloser, plain_aggregate
from forsaken.server.rounds import (
    AbortCause,
    Evaluator,
    Event,
    Finished,
    OpenRound,
    Phase,
    RoundAborted,
    RoundCompleted,
    RoundStarted,
    StatusView,
    Submission,
    SubmitOutcome,
)
from forsaken.server.secure_round import ClientStageMessage, SecureRound, SecureSettings
from forsaken.server.selection import round_weight, select_participants
from forsaken.server.submissions import open_round_for, take_secagg, take_update

log = logging.getLogger(__name__)


class Coordinator:
    """Runs FedAvg rounds over whatever nodes poll it. Not thread-safe: callers serialise."""

    def __init__(
        self,
        *,
        policy: RoundPolicy,
        model_spec: ModelSpec,
        tensors: tuple[TensorSpec, ...],
        initial_model: Callable[[], np.ndarray],
        ledger: Ledger,
        checkpoints: CheckpointStore,
        train: TrainSettings,
        evaluator: Evaluator | None = None,
        secure: SecureSettings | None = None,
        forget_policy: ForgetPolicy | None = None,
        keep_checkpoints: int = 0,
        guard: GuardSettings | None = None,
        quarantine_after: int = 3,
        now_ms: int = 0,
    ) -> None:
        policy.validate()
        if secure is not None:
            secure.validate()
        self.policy, self.train, self.secure = policy, train, secure
        self.ledger = ledger
        self.registry = ClientRegistry(ledger, policy.liveness_s, quarantine_after)
        self.forgets = ForgetManager(ledger, forget_policy or ForgetPolicy(), now_ms)
        self.model = GlobalModel(ledger, checkpoints, model_spec, tensors, evaluator)
        initial = self.model.restore(initial_model)
        if initial is not None:
            ledger.record_round(replace(initial, started_ms=now_ms, finished_ms=now_ms))
        guard = guard or GuardSettings()
        history = lineage_accuracies(ledger, self.model.sha256, guard.window)
        self.guard = RegressionGuard(guard, history)
        self.forget_rounds = ForgetRounds(
            self.forgets, self.model, self.guard, self.registry, ledger
        )
        self.closer = RoundCloser(
            self.model,
            self.guard,
            ledger,
            checkpoints,
            self.registry,
            self.forgets,
            train.max_update_norm,
            keep_checkpoints,
        )
        self._round: OpenRound | None = None
        self._attempt = 0
        self._last_abort = ""
        self._missed: frozenset[str] = frozenset()  # unanswered in this round's attempts
        # (node, request id) of what the last finished round accepted, so a late retry of it
        # is told "duplicate" rather than that the round has closed.
        self._answered_last: frozenset[tuple[str, str]] = frozenset()
        self._finished = self._is_done()

    @property
    def tensors(self) -> tuple[TensorSpec, ...]:
        return self.model.tensors

    @property
    def completed_rounds(self) -> int:
        return self.model.completed

    def progress_key(self) -> tuple[object, ...]:
        """Changes whenever a waiting node may have something new to do."""
        rnd, active = self._round, self.forgets.active()
        return (
            self.model.completed,
            self._finished,
            active.state if active else None,
            rnd.number if rnd else None,
            rnd.attempt if rnd else None,
            rnd.secure.stage if rnd is not None and rnd.secure is not None else None,
        )

    def status(self, now_ms: int) -> StatusView:
        rnd, idle = self._round, self._idle()
        return StatusView(
            phase=Phase.FINISHED if idle else (Phase.TRAINING if rnd else Phase.WAITING),
            current_round=rnd.number if rnd else self.model.completed + (0 if idle else 1),
            completed_rounds=self.model.completed,
            target_rounds=self.policy.rounds,
            connected=len(self.registry.live(now_ms)),
            model_sha256=self.model.sha256,
            last_abort_reason=self._last_abort,
            last_test_acc=self.model.last_acc,
            secagg_stage=str(rnd.secure.stage) if rnd is not None and rnd.secure else "",
        )

    # ---- what a node is told -----------------------------------------------------------

    def poll(self, node_id: str, num_samples: int, now_ms: int) -> AnyTask | None:
        """The node's next task, or None if it should wait."""
        self.registry.seen(node_id, num_samples, now_ms)
        if self._idle():
            return StopTask()
        rnd = self._round
        if rnd is None or node_id not in rnd.selected or node_id in rnd.accepted:
            return self.forget_rounds.verify_task(node_id)
        head = (rnd.task_id(node_id), rnd.number, rnd.base_sha, self.train)
        weight, total = rnd.weights[node_id], sum(rnd.weights.values())
        forget = self.forgets.instruction_for(node_id)
        if rnd.secure is None:
            return TrainTask(
                *head,
                rnd.deadline_ms,
                self.policy.seed,
                forget=forget,
                weight=weight,
                total_weight=total,
            )
        message = rnd.secure.message_for(node_id)
        if message is None:
            return None
        if not isinstance(message, SetupInfo):
            forget = None  # the order rides with the round's first stage only
        deadline = rnd.secure.stage_deadline_ms
        return SecAggTask(
            *head,
            deadline,
            self.policy.seed,
            message,
            forget=forget,
            weight=weight,
            total_weight=total,
        )

    # ---- what a node sends ---------------------------------------------------------------

    def _open_round(self, node_id: str, round_: int, task_id: str) -> OpenRound:
        return open_round_for(self._round, self.model.completed, node_id, round_, task_id)

    def admit_upload(
        self,
        node_id: str,
        round_: int,
        task_id: str,
        request_id: str,
        tensors: tuple[TensorSpec, ...],
    ) -> bool:
        """Check an upload's header against the node's open task before any of its bytes are
        buffered, so memory per upload is bounded by what the task expects. True when it is a
        retry of an upload already accepted (nothing more needs reading)."""
        if (node_id, request_id) in self._answered_last:
            return True
        update_checks.check_tensors(
            self._open_round(node_id, round_, task_id), tensors, self.tensors
        )
        return False

    def submit(self, node_id: str, sub: Submission, now_ms: int) -> SubmitOutcome:
        """Validate and hold one node's update for the open round. The model is not touched."""
        self.registry.seen(node_id, None, now_ms)
        if (node_id, sub.request_id) in self._answered_last:
            return SubmitOutcome(accepted=True, duplicate=True)
        rnd = self._open_round(node_id, sub.round, sub.task_id)
        return take_update(rnd, node_id, sub, self.tensors, self.registry, self.train, now_ms)

    def secagg_message(
        self,
        node_id: str,
        round_: int,
        task_id: str,
        request_id: str,
        message: ClientStageMessage,
        now_ms: int,
    ) -> SubmitOutcome:
        """A secure-aggregation stage message (keys, shares, signatures, unmask shares)."""
        self.registry.seen(node_id, None, now_ms)
        if (node_id, request_id) in self._answered_last:
            return SubmitOutcome(accepted=True, duplicate=True)
        rnd = self._open_round(node_id, round_, task_id)
        return take_secagg(rnd, node_id, request_id, message, self.registry, now_ms)

    # ---- the round lifecycle -------------------------------------------------------------

    def tick(self, now_ms: int) -> list[Event]:
        """Advance time: start, close or abort rounds as due."""
        self.forgets.fail_stale(self.registry.last_contact(), now_ms)
        if self._idle():
            return []
        rnd = self._round
        if rnd is None:
            return self._maybe_start(now_ms)
        if rnd.secure is not None:
            return self._tick_secure(rnd, now_ms)
        outcome = plain_aggregate(rnd, self.policy.min_completed, now_ms)
        if outcome is None:
            return []
        if isinstance(outcome, str):
            return [self._abort(rnd, now_ms, outcome)]
        return self._finish(rnd, outcome, now_ms)

    def _tick_secure(self, rnd: OpenRound, now_ms: int) -> list[Event]:
        secure = rnd.secure
        assert secure is not None
        if not secure.due(now_ms):
            return []
        secure.close_stage(now_ms)
        if secure.abort_reason is not None:
            for node in sorted(secure.culprits):  # the evidence names them: keep them out
                self.registry.faults.record(node, rnd.number, secure.abort_reason, now_ms)
            self._missed |= secure.suspects  # cannot be told apart: both sit the retry out
            reason = f"secure aggregation aborted: {secure.abort_reason}"
            return [self._abort(rnd, now_ms, reason, AbortCause.SECAGG)]
        if secure.stage is not SecAggStage.FINISHED:
            return []
        try:
            res = secure.result()
        except ValueError as exc:  # e.g. every survivor had weight 0
            return [
                self._abort(rnd, now_ms, f"secure aggregate unusable: {exc}", AbortCause.SECAGG)
            ]
        if len(res.survivors) < self.policy.min_completed:
            reason = f"only {len(res.survivors)} survivors; {self.policy.min_completed} needed"
            return [self._abort(rnd, now_ms, reason)]
        agg = Aggregate(res.delta, res.total_weight, res.survivors, {}, res.quantization_slack)
        return self._finish(rnd, agg, now_ms)

    def _maybe_start(self, now_ms: int) -> list[Event]:
        self.forget_rounds.start_next(now_ms)
        if self._finished and not self.forget_rounds.needs_rounds():
            return []
        number = self.model.completed + 1
        selected = select_participants(
            self.policy, self.registry, self.forgets, self._missed, number, self._attempt, now_ms
        )
        if selected is None:
            return []
        deadline = now_ms + int(self.policy.round_timeout_s * 1000)
        rnd = OpenRound(number, self._attempt, selected, self.model.sha256, now_ms, deadline)
        rnd.forget_node = next((n for n in selected if self.forgets.instruction_for(n)), "")
        rnd.weights = {n: round_weight(self.registry, n, rnd.forget_node) for n in selected}
        self._round = rnd
        log.info("round %d (attempt %d) started with %d nodes", number, rnd.attempt, len(selected))
        if self.secure is not None:
            try:
                rnd.secure = SecureRound(
                    selected=selected,
                    vector_len=sum(t.numel for t in self.tensors) + 1,
                    weights=rnd.weights,
                    node_keys=self.registry.keys(),
                    settings=self.secure,
                    context=f"forsaken/round/{number}/{rnd.attempt}/{self.model.sha256}".encode(),
                    now_ms=now_ms,
                    first_deadline_ms=deadline,
                )
            except ConfigError as exc:
                reason = f"cannot set up secure aggregation: {exc}"
                return [self._abort(rnd, now_ms, reason, AbortCause.SECAGG)]
        return [RoundStarted(number, rnd.attempt, selected)]

    def _finish(self, rnd: OpenRound, agg: Aggregate, now_ms: int) -> list[Event]:
        outcome = self.closer.commit(rnd, agg, now_ms)
        if isinstance(outcome, Refused):
            return [self._abort(rnd, now_ms, outcome.reason, AbortCause.REFUSED)]
        self._answered_last = (
            rnd.secure.answered()
            if rnd.secure
            else frozenset((node, a.request_id) for node, a in rnd.accepted.items())
        )
        self._round, self._attempt, self._last_abort, self._missed = None, 0, "", frozenset()
        events: list[Event] = [RoundCompleted(outcome)]
        if self._is_done() and not self._finished:
            self._finished = True
            events.append(Finished(self.model.completed))
        return events

    def _abort(
        self, rnd: OpenRound, now_ms: int, reason: str, cause: AbortCause = AbortCause.SHORTFALL
    ) -> RoundAborted:
        record = self.closer.record_abort(rnd, reason, now_ms)
        unanswered = frozenset(rnd.selected) - frozenset(rnd.accepted)
        self._missed |= rnd.secure.missing if rnd.secure is not None else unanswered
        self._round, self._attempt, self._last_abort = None, rnd.attempt + 1, reason
        return RoundAborted(record, cause)

    # ---- helpers --------------------------------------------------------------------------

    def _idle(self) -> bool:
        """The target rounds are done and no forget request needs anything more."""
        return self._finished and self.forgets.active() is None

    def _is_done(self) -> bool:
        return self.policy.rounds > 0 and self.model.completed >= self.policy.rounds
