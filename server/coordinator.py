"""The transport-free round coordinator: the round lifecycle, composed of smaller parts.

An event-driven state machine: the runtime (and the tests) call `poll`, `submit`,
`secagg_message` and `tick(now)`; the coordinator answers with tasks, outcomes and events. It
never sleeps, never reads a clock and never touches the network. Its parts each own one
concern: `registry` (members, liveness, faults), `model` (the global model, checkpoints,
resume), `forgets` (the forget lifecycle), `guard` (refusing a collapsing round); the update
checks live in `update_checks`, secure sessions in `secure_round`.

Round life: WAITING (until `min_clients` are live) -> TRAINING (sampled clients fetch the
model, train and push updates, in plaintext or through the secure stages, until all delivered
or the deadline) -> bound, apply, judge -> checkpoint -> ledger -> WAITING for the next round,
or FINISHED after the target number of rounds. A round that cannot complete is recorded as
aborted, with its reason, and retried.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from forsaken.common.errors import (
    ConfigError,
    DuplicateRequest,
    InvalidPayload,
    MemberFault,
    PermissionDenied,
    StaleRequest,
    UnknownEntity,
    WrongStage,
)
from forsaken.common.fedavg import weighted_average
from forsaken.common.forget_reports import EvidenceReport, ForgetReport
from forsaken.common.round_tasks import AnyTask, SecAggTask, StopTask, TrainTask, VerifyTask
from forsaken.common.secagg.messages import MaskedInput
from forsaken.common.secagg.messages import Stage as SecAggStage
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.tensors import TensorSpec, from_bytes
from forsaken.common.types import ModelSpec, TrainSettings
from forsaken.common.unlearning.negation import negate
from forsaken.common.update_bound import check_aggregate
from forsaken.server import retention, update_checks
from forsaken.server.checkpoints import CheckpointStore
from forsaken.server.forgetting import ForgetManager, ForgetPolicy
from forsaken.server.global_model import GlobalModel, lineage_accuracies
from forsaken.server.ledger import ForgetRecord, ForgetState, Ledger, RoundStatus
from forsaken.server.model_guard import GuardSettings, RegressionGuard
from forsaken.server.policy import RoundPolicy
from forsaken.server.registry import ClientRegistry
from forsaken.server.rounds import (
    AbortCause,
    Accepted,
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
    mean_metrics,
    round_record,
)
from forsaken.server.secure_round import ClientStageMessage, SecureRound, SecureSettings

log = logging.getLogger(__name__)

MAX_VERIFY_MODELS = 16  # models a verification may still be measured on


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
        self.ledger, self.checkpoints = ledger, checkpoints
        self.keep_checkpoints = keep_checkpoints  # 0: keep every checkpoint (server/retention.py)
        self.registry = ClientRegistry(ledger, policy.liveness_s, quarantine_after)
        self.forgets = ForgetManager(ledger, forget_policy or ForgetPolicy(), now_ms)
        self.model = GlobalModel(ledger, checkpoints, model_spec, tensors, evaluator)
        initial = self.model.restore(initial_model)
        if initial is not None:
            ledger.record_round(replace(initial, started_ms=now_ms, finished_ms=now_ms))
        guard = guard or GuardSettings()
        history = lineage_accuracies(ledger, self.model.sha256, guard.window)
        self.guard = RegressionGuard(guard, history)
        self._round: OpenRound | None = None
        self._attempt = 0
        self._last_abort = ""
        self._missed: frozenset[str] = frozenset()  # unanswered in this round's attempts
        # forget id -> the models sent to its node to verify on (newest last; memory only: after
        # a restart the node is simply sent the current model again)
        self._verify_models: dict[str, list[str]] = {}
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
            rec = self.forgets.verify_for(node_id)
            if rec is None:
                return None
            # Remembered so that evidence measured on this model still counts after later
            # rounds move on: a node verifying a large model can take longer than a round.
            issued = self._verify_models.setdefault(rec.forget_id, [])
            if self.model.sha256 not in issued:
                issued[:] = [*issued[-(MAX_VERIFY_MODELS - 1) :], self.model.sha256]
            return VerifyTask(rec.forget_id, self.model.sha256, self.model.completed)
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

    # ---- forget requests that need more than the forget lifecycle ------------------------

    def forget_request(
        self,
        caller: str,
        node_id: str,
        request_id: str,
        sample_ids: tuple[int, ...],
        method: str,
        now_ms: int,
        admit: Callable[[], None] | None = None,
    ) -> tuple[ForgetRecord, bool]:
        self.registry.seen(caller, None, now_ms)
        most = self.registry.most_declared(caller)
        return self.forgets.request(
            caller, node_id, request_id, sample_ids, method, now_ms, max_samples=most, admit=admit
        )

    def operator_forget(
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

    def forget_report(self, caller: str, report: ForgetReport, now_ms: int) -> ForgetRecord:
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

    # ---- what a node sends ---------------------------------------------------------------

    def _open_round(self, node_id: str, round_: int, task_id: str) -> OpenRound:
        rnd = self._round
        if rnd is None or round_ != rnd.number:
            if round_ > self.model.completed + 1 or round_ < 1:
                raise UnknownEntity(f"round {round_} does not exist")
            raise StaleRequest(f"round {round_} is not open for updates")
        if node_id not in rnd.selected:
            raise PermissionDenied(f"node {node_id} was not selected for round {rnd.number}")
        if task_id != rnd.task_id(node_id):
            raise StaleRequest(f"task {task_id!r} is not this node's open task")
        return rnd

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
        try:
            if rnd.secure is not None:
                update_checks.check_base(rnd, sub)
                update_checks.check_tensors(rnd, sub.tensors, self.tensors)
                masked = MaskedInput(from_bytes(sub.payload, sub.tensors))
                return SubmitOutcome(True, rnd.secure.receive(node_id, sub.request_id, masked))
            held = rnd.accepted.get(node_id)
            if held is not None:
                if held.request_id == sub.request_id:
                    return SubmitOutcome(accepted=True, duplicate=True)
                raise DuplicateRequest(
                    f"node {node_id} already pushed an update for round {rnd.number}"
                )
            update_checks.check_base(rnd, sub)
            declared = max(rnd.weights.get(node_id, 0), self.registry.samples(node_id, 0))
            update = update_checks.plain_update(
                node_id, rnd, sub, self.tensors, declared, self.train.max_update_norm
            )
        except MemberFault as fault:
            self.registry.fault(fault, rnd.number, now_ms)
            raise
        rnd.accepted[node_id] = Accepted(sub.request_id, sub.num_samples, dict(sub.metrics), update)
        return SubmitOutcome(accepted=True, duplicate=False)

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
        if rnd.secure is None:
            raise WrongStage("this round uses plaintext aggregation")
        try:
            duplicate = rnd.secure.receive(node_id, request_id, message)
        except MemberFault as fault:
            self.registry.fault(fault, rnd.number, now_ms)
            raise
        return SubmitOutcome(accepted=True, duplicate=duplicate)

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
        if len(rnd.accepted) < len(rnd.selected) and now_ms < rnd.deadline_ms:
            return []
        if len(rnd.accepted) < self.policy.min_completed:
            shortfall = (
                f"deadline passed with {len(rnd.accepted)} of {len(rnd.selected)} updates; "
                f"{self.policy.min_completed} needed"
            )
            return [self._abort(rnd, now_ms, shortfall)]
        accepted = rnd.accepted.values()
        total = sum(a.num_samples for a in accepted)
        if total == 0:
            return [self._abort(rnd, now_ms, "no participant reported any samples")]
        delta = weighted_average([(a.update, a.num_samples) for a in accepted])
        return self._finish(
            rnd, delta, total, tuple(sorted(rnd.accepted)), mean_metrics(accepted), now_ms
        )

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
        return self._finish(
            rnd, res.delta, res.total_weight, res.survivors, {}, now_ms, res.quantization_slack
        )

    def _maybe_start(self, now_ms: int) -> list[Event]:
        negated = None
        if self.forgets.needs_negated_model():
            # NoT: the ledger names the negated model's checkpoint before anything uses it.
            negated = self.model.store(
                negate(self.model.vector, self.tensors), self.model.completed
            )
        rollback = self.forgets.begin(self.model.sha256, self.model.completed, now_ms, negated)
        if rollback is not None:
            self._roll_back(rollback)
        if self._finished and not self._forget_needs_rounds():
            return []
        number = self.model.completed + 1
        selected = self._select(number, now_ms)
        if selected is None:
            return []
        deadline = now_ms + int(self.policy.round_timeout_s * 1000)
        rnd = OpenRound(number, self._attempt, selected, self.model.sha256, now_ms, deadline)
        rnd.forget_node = next((n for n in selected if self.forgets.instruction_for(n)), "")
        rnd.weights = {n: self._weight(n, rnd.forget_node) for n in selected}
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

    def _select(self, number: int, now_ms: int) -> tuple[str, ...] | None:
        """The round's participants, or None while too few nodes can take part."""
        everyone = self.registry.live(now_ms)
        # A node that spoiled an attempt of this round sits out its retries; one that has no
        # samples left (it forgot them all) has nothing to train on and no longer counts
        # towards the quorum either.
        excluded = self.forgets.excluded_nodes() | self.registry.faults.spoiled(number)
        live = [
            n
            for n in everyone
            if n not in excluded
            and (self.registry.samples(n) > 0 or self.forgets.instruction_for(n) is not None)
        ]
        needed = max(
            self.policy.min_completed, self.policy.min_clients - (len(everyone) - len(live))
        )
        if len(live) < needed:
            return None
        # Nodes that left an earlier attempt unanswered sit its retries out while enough others
        # remain: a live but unresponsive node cannot stall the round.
        responsive = [n for n in live if n not in self._missed]
        if len(responsive) >= needed:
            live = responsive
        # The node uploading forget steps takes part in every round until it is done.
        forgetter = [n for n in live if self.forgets.instruction_for(n) is not None]
        return self.policy.sample(live, number, self._attempt, required=forgetter)

    def _weight(self, node_id: str, forget_node: str) -> int:
        """The FedAvg weight this round announces for a node: the count it declares, except
        that the node uploading forget steps keeps the most it ever declared (its weight from
        before the request), so its steps land with the share its training had. After a
        server restart mid-request only the ledger's count is known; at least 1 keeps the
        step's scale W / w consistent, whatever w is."""
        if node_id == forget_node:
            return max(1, self.registry.most_declared(node_id))
        return max(0, self.registry.samples(node_id))

    def _finish(
        self,
        rnd: OpenRound,
        delta: np.ndarray,
        total: int,
        participants: tuple[str, ...],
        metrics: Mapping[str, float],
        now_ms: int,
        slack: float = 0.0,
    ) -> list[Event]:
        """Bound, apply and judge the aggregate; then checkpoint, then record."""
        try:
            bound, forgetting = self.train.max_update_norm, bool(rnd.forget_node)
            norm = check_aggregate(delta, bound, forget_round=forgetting, slack=slack)
        except InvalidPayload as exc:
            reason = f"refused: {exc}; the previous model is kept"
            return [self._abort(rnd, now_ms, reason, AbortCause.REFUSED)]
        vector = (self.model.vector + delta).astype(np.float32)
        evaluation = self.model.evaluate(vector)
        refusal = self.guard.refusal(evaluation, evaluated=self.model.evaluator is not None)
        if refusal is not None:
            return [self._abort(rnd, now_ms, refusal, AbortCause.REFUSED)]
        sha = self.model.store(vector, rnd.number)
        record = round_record(
            rnd,
            now_ms,
            status=RoundStatus.COMPLETED,
            participants=participants,
            model_sha256=sha,
            total_samples=total,
            evaluation=evaluation,
            metrics={**metrics, "update_norm": norm},
            reason=self.registry.faults.notes(rnd.number),
        )
        # Ledger after checkpoint: a crash in between leaves an orphan blob, never a dangling row.
        self.ledger.record_round(record)
        acc = evaluation.accuracy if evaluation else None
        self.model.adopt(vector, sha, rnd.number, acc)
        self.guard.committed(evaluation)
        self._answered_last = (
            rnd.secure.answered()
            if rnd.secure
            else frozenset((node, a.request_id) for node, a in rnd.accepted.items())
        )
        self.forgets.on_round_completed(participants, now_ms, sha, acc)
        retention.collect(
            self.ledger, self.checkpoints, self.keep_checkpoints, rnd.number, self.model.sha256
        )
        self._round, self._attempt, self._last_abort, self._missed = None, 0, "", frozenset()
        events: list[Event] = [RoundCompleted(record)]
        if self._is_done() and not self._finished:
            self._finished = True
            events.append(Finished(self.model.completed))
        shown = "n/a" if acc is None else f"{acc:.4f}"
        log.info(
            "round %d completed with %d updates (acc=%s)", rnd.number, len(participants), shown
        )
        return events

    def _abort(
        self, rnd: OpenRound, now_ms: int, reason: str, cause: AbortCause = AbortCause.SHORTFALL
    ) -> RoundAborted:
        record = round_record(
            rnd,
            now_ms,
            status=RoundStatus.ABORTED,
            participants=tuple(sorted(rnd.accepted)),
            reason=reason,
        )
        self.ledger.record_round(record)
        unanswered = frozenset(rnd.selected) - frozenset(rnd.accepted)
        self._missed |= rnd.secure.missing if rnd.secure is not None else unanswered
        self._round, self._attempt, self._last_abort = None, rnd.attempt + 1, reason
        log.warning("round %d attempt %d aborted: %s", rnd.number, rnd.attempt, reason)
        return RoundAborted(record, cause)

    # ---- helpers --------------------------------------------------------------------------

    def _idle(self) -> bool:
        """The target rounds are done and no forget request needs anything more."""
        return self._finished and self.forgets.active() is None

    def _is_done(self) -> bool:
        return self.policy.rounds > 0 and self.model.completed >= self.policy.rounds

    def _forget_needs_rounds(self) -> bool:
        rec = self.forgets.active()
        return rec is not None and rec.state in (ForgetState.UNLEARNING, ForgetState.RECOVERING)

    def _roll_back(self, rec: ForgetRecord) -> None:
        """`retrain`: restart from the last model before the node's first contribution;
        `not`: continue from the negated model."""
        sha = json.loads(rec.progress_json)["rollback_model"]
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
