"""The transport-free round coordinator.

An event-driven state machine: the daemon (and the tests) call `join`, `poll`, `submit` and
`tick(now)`; the coordinator answers with tasks, outcomes and events. It never sleeps, never
reads a clock and never touches the network. Durable effects go through the injected ledger and
checkpoint store, and happen before a new model is handed to any client.

Round life: WAITING (until `min_clients` are live) -> TRAINING (sampled clients fetch the model,
train and push updates until all delivered or the deadline) -> aggregate -> checkpoint -> ledger
-> WAITING for the next round, or FINISHED after the target number of rounds. A round whose
deadline passes with fewer than `min_completed` updates is recorded as aborted and retried.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from forsaken.common.errors import (
    ConfigError,
    DuplicateRequest,
    InvalidPayload,
    MemberFault,
    PermissionDenied,
    RateLimited,
    StaleRequest,
    UnknownEntity,
    WrongStage,
)
from forsaken.common.fedavg import weighted_average
from forsaken.common.secagg.messages import MaskedInput
from forsaken.common.secagg.messages import Stage as SecAggStage
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.tensors import TensorSpec, from_bytes, require_finite, to_bytes
from forsaken.common.types import ModelSpec, TrainSettings
from forsaken.common.unlearning.negation import negate
from forsaken.common.update_bound import RELATIVE_TOLERANCE, check_aggregate, l2_norm
from forsaken.server.checkpoints import CheckpointStore
from forsaken.server.faults import FaultBook
from forsaken.server.forgetting import ForgetInstruction, ForgetManager, ForgetPolicy
from forsaken.server.ledger import ClientRecord, ForgetRecord, ForgetState, Ledger
from forsaken.server.model_guard import GuardSettings, RegressionGuard
from forsaken.server.policy import RoundPolicy
from forsaken.server.retention import RetentionError, checkpoints_to_keep
from forsaken.server.rounds import (
    AbortCause,
    Accepted,
    EvalResult,
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
    Task,
    TaskKind,
    masked_input_spec,
    mean_metrics,
    round_record,
    spec_fingerprint,
)
from forsaken.server.secure_round import SecureRound, SecureSettings

log = logging.getLogger(__name__)


__all__ = [
    "Coordinator",
    "EvalResult",
    "Event",
    "Finished",
    "Phase",
    "RoundAborted",
    "RoundCompleted",
    "RoundStarted",
    "StatusView",
    "Submission",
    "SubmitOutcome",
    "Task",
    "TaskKind",
    "masked_input_spec",
]


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
        self.secure = secure
        self.forgets = ForgetManager(ledger, forget_policy or ForgetPolicy(), now_ms)
        self.policy = policy
        self.model_spec = model_spec
        self.tensors = tensors
        self.train = train
        self.ledger = ledger
        self.checkpoints = checkpoints
        self.evaluator = evaluator
        self.keep_checkpoints = keep_checkpoints  # 0: keep every checkpoint (server/retention.py)
        self._last_seen: dict[str, int] = {}
        self._samples: dict[str, int] = {}
        self._most_declared: dict[str, int] = {}
        # Liveness forgets a node that left; the forget timer needs its true last contact.
        self._last_contact: dict[str, int] = {}  # bounds how many ids a forget may name
        self._keys: dict[str, bytes] = {}
        self._payload_cache: tuple[str, bytes] = ("", b"")
        self._revoked = {c.node_id for c in ledger.clients() if c.revoked}
        self.faults = FaultBook(ledger, quarantine_after)
        # (node, request id) of what the last finished round accepted, so a late retry of it
        # is told "duplicate" rather than that the round has closed.
        self._answered_last: frozenset[tuple[str, str]] = frozenset()
        self._missed: frozenset[str] = frozenset()  # unanswered in this round's attempts
        self._round: OpenRound | None = None
        self._attempt = 0
        self._last_abort = ""
        self._model, self._model_sha, self._completed, self._last_acc = self._restore(
            initial_model, now_ms
        )
        self._finished = self._is_done()
        guard = guard or GuardSettings()
        self.guard = RegressionGuard(
            guard, lineage_accuracies(ledger, self._model_sha, guard.window)
        )

    # ---- start-up -------------------------------------------------------------------------

    def _restore(
        self, initial_model: Callable[[], np.ndarray], now_ms: int
    ) -> tuple[np.ndarray, str, int, float | None]:
        """Resume from the last completed round in the ledger, or checkpoint a fresh model."""
        spec_key = spec_fingerprint(self.model_spec, self.tensors)
        stored = self.ledger.get_meta("model_spec")
        if stored is not None and stored != spec_key:
            raise InvalidPayload(
                f"state directory holds a federation for model {stored}, not {spec_key}"
            )
        last = self.ledger.last_completed()
        if last is not None and last.model_sha256:
            vector = from_bytes(self.checkpoints.get(last.model_sha256), self.tensors)
            log.info(
                "resuming after round %d from checkpoint %s", last.round, last.model_sha256[:12]
            )
            return vector, last.model_sha256, last.round, last.test_acc
        vector = np.asarray(initial_model(), dtype=np.float32)
        if vector.size != sum(t.numel for t in self.tensors):
            raise InvalidPayload("initial model does not match the model's tensor specs")
        sha = self.checkpoints.put(to_bytes(vector), {"round": 0})
        evaluation = self._evaluate(vector)
        self.ledger.set_meta("model_spec", spec_key)
        initial = OpenRound(0, 0, (), "", now_ms, now_ms)
        self.ledger.record_round(
            round_record(
                initial,
                now_ms,
                status="completed",
                participants=(),
                model_sha256=sha,
                evaluation=evaluation,
            )
        )
        return vector, sha, 0, evaluation.accuracy if evaluation else None

    # ---- queries --------------------------------------------------------------------------

    @property
    def model_sha256(self) -> str:
        return self._model_sha

    @property
    def model(self) -> np.ndarray:
        return self._model

    @property
    def completed_rounds(self) -> int:
        return self._completed

    def progress_key(self) -> tuple[object, ...]:
        """Changes whenever a waiting node may have something new to do."""
        rnd = self._round
        stage = rnd.secure.stage if rnd is not None and rnd.secure is not None else None
        return (
            self._completed,
            self._finished,
            self.forgets.active().state if self.forgets.active() else None,
            rnd.number if rnd else None,
            rnd.attempt if rnd else None,
            stage,
        )

    def live_nodes(self, now_ms: int) -> list[str]:
        horizon = now_ms - int(self.policy.liveness_s * 1000)
        return sorted(n for n, seen in self._last_seen.items() if seen >= horizon)

    def contact(self, node_id: str) -> tuple[int, int | None] | None:
        """(time of its last call, sample count it declared then) for a node heard from since
        this server started; None otherwise (the ledger then has its last join)."""
        seen = self._last_contact.get(node_id)
        return None if seen is None else (seen, self._samples.get(node_id))

    def status(self, now_ms: int) -> StatusView:
        rnd = self._round
        phase = (
            Phase.FINISHED if self._idle() else (Phase.TRAINING if self._round else Phase.WAITING)
        )
        return StatusView(
            phase=phase,
            current_round=self._round.number
            if self._round
            else self._completed + (0 if self._idle() else 1),
            completed_rounds=self._completed,
            target_rounds=self.policy.rounds,
            connected=len(self.live_nodes(now_ms)),
            model_sha256=self._model_sha,
            last_abort_reason=self._last_abort,
            last_test_acc=self._last_acc,
            secagg_stage=str(rnd.secure.stage) if rnd is not None and rnd.secure else "",
        )

    def model_payload(self, sha256: str) -> bytes:
        """Bytes of a stored model (the current one or an earlier checkpoint)."""
        if sha256 != self._model_sha:
            return self.checkpoints.get(sha256)
        # Every sampled node fetches the same model: encode it once per model, not per fetch.
        cached_sha, payload = self._payload_cache
        if cached_sha != sha256:
            payload = to_bytes(self._model)
            self._payload_cache = (sha256, payload)
        return payload

    # ---- inputs ---------------------------------------------------------------------------

    def join(
        self,
        node_id: str,
        public_key: bytes,
        num_samples: int,
        now_ms: int,
        max_clients: int = 1_000_000,
    ) -> None:
        self.check_admitted(node_id)
        existing = self.ledger.client(node_id)
        live = self.live_nodes(now_ms)
        if node_id not in live and len(live) >= max_clients:
            raise RateLimited(f"the server already serves its limit of {max_clients} clients")
        first_seen = existing.first_seen_ms if existing else now_ms
        self.ledger.upsert_client(
            ClientRecord(node_id, public_key, num_samples, first_seen, now_ms)
        )
        self._keys[node_id] = public_key
        self._seen(node_id, num_samples, now_ms)

    def revoke(self, node_id: str, reason: str) -> bool:
        """Mark a node revoked in the ledger; it is never sampled or served again."""
        existing = self.ledger.client(node_id)
        if existing is None:
            raise UnknownEntity(f"no client {node_id} has ever joined")
        self._last_seen.pop(node_id, None)
        if existing.revoked:
            return True
        self.ledger.upsert_client(replace(existing, revoked=True))
        self._revoked.add(node_id)
        log.warning("node %s revoked: %s", node_id, reason or "no reason given")
        return False

    def check_admitted(self, node_id: str) -> None:
        """PermissionDenied for a revoked or quarantined node, saying which and why."""
        if node_id in self._revoked:
            raise PermissionDenied(f"node {node_id} is revoked")
        reason = self.faults.quarantine(node_id)
        if reason:
            raise PermissionDenied(
                f"node {node_id} is quarantined ({reason}); an operator can lift it with "
                f"`forsaken admin release {node_id}`"
            )

    def release(self, node_id: str) -> bool:
        """Lift a node's quarantine; True if it was quarantined."""
        if self.ledger.client(node_id) is None:
            raise UnknownEntity(f"no client {node_id} has ever joined")
        return self.faults.release(node_id)

    def _fault(self, fault: MemberFault, round_: int, now_ms: int) -> None:
        """An attributable fault: keep the node out of this round's retries, maybe for good."""
        if self.faults.record(fault.node_id, round_, fault.reason, now_ms):
            self._last_seen.pop(fault.node_id, None)

    def leave(self, node_id: str) -> None:
        """A node left cleanly: stop sampling it (an open round still waits for its deadline)."""
        self._last_seen.pop(node_id, None)

    def poll(self, node_id: str, num_samples: int, now_ms: int) -> Task | None:
        """The node's next task, or None if it should wait."""
        self._seen(node_id, num_samples, now_ms)
        if self._idle():
            return Task(TaskKind.STOP)
        rnd = self._round
        if rnd is None or node_id not in rnd.selected or node_id in rnd.accepted:
            return self._verify_task(node_id)
        forget = self._forget_instruction(node_id, rnd)
        if rnd.secure is not None:
            message = rnd.secure.message_for(node_id)
            if message is None:
                return None
            return Task(
                kind=TaskKind.SECAGG,
                task_id=rnd.task_id(node_id),
                round=rnd.number,
                model_sha256=rnd.base_sha,
                deadline_ms=rnd.secure.stage_deadline_ms,
                seed=self.policy.seed,
                train=self.train,
                secagg=message,
                forget=forget if isinstance(message, SetupInfo) else None,
            )
        return Task(
            kind=TaskKind.TRAIN,
            task_id=rnd.task_id(node_id),
            round=rnd.number,
            model_sha256=rnd.base_sha,
            deadline_ms=rnd.deadline_ms,
            seed=self.policy.seed,
            train=self.train,
            forget=forget,
        )

    def _forget_instruction(self, node_id: str, rnd: OpenRound) -> ForgetInstruction | None:
        instruction = self.forgets.instruction_for(node_id)
        if instruction is None:
            return None
        return replace(instruction, total_weight=float(max(1, sum(rnd.weights.values()))))

    def _verify_task(self, node_id: str) -> Task | None:
        rec = self.forgets.verify_for(node_id)
        if rec is None:
            return None
        return Task(
            TaskKind.VERIFY,
            task_id=f"verify.{rec.forget_id}",
            round=self._completed,
            model_sha256=self._model_sha,
            forget_id=rec.forget_id,
        )

    # ---- forget requests ----------------------------------------------------------------

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
        self._seen(caller, None, now_ms)
        record = self.ledger.client(caller)
        most = max(self._most_declared.get(caller, 0), record.num_samples if record else 0)
        return self.forgets.request(
            caller, node_id, request_id, sample_ids, method, now_ms, max_samples=most, admit=admit
        )

    def operator_forget(
        self, operator: str, node_id: str, request_id: str, method: str, reason: str, now_ms: int
    ) -> tuple[ForgetRecord, bool]:
        """An operator asks to forget a revoked node, which can no longer ask for itself."""
        if self.ledger.client(node_id) is None:
            raise UnknownEntity(f"no client {node_id} has ever joined")
        if node_id not in self._revoked:
            raise WrongStage(
                f"node {node_id} is not revoked: a live node keeps training on its data, so "
                f"revoke it first (`forsaken admin revoke {node_id}`) or let it ask itself"
            )
        return self.forgets.operator_request(operator, node_id, request_id, method, reason, now_ms)

    def forget_status(self, caller: str, forget_id: str) -> ForgetRecord:
        return self.forgets.get(caller, forget_id)

    def forget_report(
        self,
        caller: str,
        forget_id: str,
        kind: str,
        metrics: Mapping[str, float],
        reason: str,
        model_sha256: str,
        now_ms: int,
    ) -> ForgetRecord:
        self._seen(caller, None, now_ms)
        if kind == "evidence" and model_sha256 != self._model_sha:
            raise StaleRequest("evidence must be measured on the current global model")
        return self.forgets.on_report(
            caller, forget_id, kind, metrics, reason, model_sha256, now_ms
        )

    def _open_round(self, node_id: str, round_: int, task_id: str) -> OpenRound:
        rnd = self._round
        if rnd is None or round_ != rnd.number:
            if round_ > self._completed + 1 or round_ < 1:
                raise UnknownEntity(f"round {round_} does not exist")
            raise StaleRequest(f"round {round_} is not open for updates")
        if node_id not in rnd.selected:
            raise PermissionDenied(f"node {node_id} was not selected for round {rnd.number}")
        if task_id != rnd.task_id(node_id):
            raise StaleRequest(f"task {task_id!r} is not this node's open task")
        return rnd

    def submit(self, node_id: str, sub: Submission, now_ms: int) -> SubmitOutcome:
        """Validate and hold one node's update for the open round. The model is not touched."""
        self._seen(node_id, None, now_ms)
        if (node_id, sub.request_id) in self._answered_last:
            return SubmitOutcome(accepted=True, duplicate=True)
        rnd = self._open_round(node_id, sub.round, sub.task_id)
        try:
            if rnd.secure is not None:
                return self._submit_masked(node_id, rnd, sub)
            return self._submit_plain(node_id, rnd, sub)
        except MemberFault as fault:
            self._fault(fault, rnd.number, now_ms)
            raise

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
        rnd = self._open_round(node_id, round_, task_id)
        self._check_tensors(rnd, tensors)
        return False

    def _check_tensors(self, rnd: OpenRound, tensors: tuple[TensorSpec, ...]) -> None:
        if rnd.secure is None:
            if tuple(tensors) != self.tensors:
                raise InvalidPayload(
                    "update tensors do not match the model's names, shapes or dtype"
                )
            return
        expected = (masked_input_spec(self.tensors),)
        if tuple(tensors) != expected:
            raise InvalidPayload(
                f"a secure round takes one uint32 masked vector of {expected[0].numel} entries"
            )

    def _submit_plain(self, node_id: str, rnd: OpenRound, sub: Submission) -> SubmitOutcome:
        held = rnd.accepted.get(node_id)
        if held is not None:
            if held.request_id == sub.request_id:
                return SubmitOutcome(accepted=True, duplicate=True)
            raise DuplicateRequest(
                f"node {node_id} already pushed an update for round {rnd.number}"
            )
        if sub.base_model_sha256 != rnd.base_sha:
            raise StaleRequest("update was computed from a different model than this round's")
        update = self._validate_update(node_id, rnd, sub)
        rnd.accepted[node_id] = Accepted(sub.request_id, sub.num_samples, dict(sub.metrics), update)
        return SubmitOutcome(accepted=True, duplicate=False)

    def secagg_message(
        self,
        node_id: str,
        round_: int,
        task_id: str,
        request_id: str,
        message: object,
        now_ms: int,
    ) -> SubmitOutcome:
        """A secure-aggregation stage message (keys, shares, signatures, unmask shares)."""
        self._seen(node_id, None, now_ms)
        if (node_id, request_id) in self._answered_last:
            return SubmitOutcome(accepted=True, duplicate=True)
        rnd = self._open_round(node_id, round_, task_id)
        if rnd.secure is None:
            raise WrongStage("this round uses plaintext aggregation")
        try:
            duplicate = rnd.secure.receive(node_id, request_id, message)  # type: ignore[arg-type]
        except MemberFault as fault:
            self._fault(fault, rnd.number, now_ms)
            raise
        return SubmitOutcome(accepted=True, duplicate=duplicate)

    def _submit_masked(self, node_id: str, rnd: OpenRound, sub: Submission) -> SubmitOutcome:
        assert rnd.secure is not None
        if sub.base_model_sha256 != rnd.base_sha:
            raise StaleRequest("update was computed from a different model than this round's")
        self._check_tensors(rnd, sub.tensors)
        vector = from_bytes(sub.payload, sub.tensors)
        duplicate = rnd.secure.receive(node_id, sub.request_id, MaskedInput(vector))
        return SubmitOutcome(accepted=True, duplicate=duplicate)

    def tick(self, now_ms: int) -> list[Event]:
        """Advance time: start, close or abort rounds as due."""
        self.forgets.fail_stale(self._last_contact, now_ms)
        if self._idle():
            return []
        rnd = self._round
        if rnd is None:
            return self._maybe_start(now_ms)
        if rnd.secure is not None:
            return self._tick_secure(rnd, now_ms)
        everyone = len(rnd.accepted) == len(rnd.selected)
        if not everyone and now_ms < rnd.deadline_ms:
            return []
        if len(rnd.accepted) >= self.policy.min_completed:
            return self._complete(rnd, now_ms)
        return [self._abort(rnd, now_ms, self._shortfall(rnd))]

    # ---- transitions ----------------------------------------------------------------------

    def _tick_secure(self, rnd: OpenRound, now_ms: int) -> list[Event]:
        secure = rnd.secure
        assert secure is not None
        if not secure.due(now_ms):
            return []
        secure.close_stage(now_ms)
        if secure.abort_reason is not None:
            reason = f"secure aggregation aborted: {secure.abort_reason}"
            for node in sorted(secure.culprits):  # the evidence names them: keep them out
                self.faults.record(node, rnd.number, secure.abort_reason, now_ms)
            self._missed |= secure.suspects  # cannot be told apart: both sit the retry out
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
            vector = negate(self._model, self.tensors)
            negated = self.checkpoints.put(to_bytes(vector), {"round": self._completed})
        rollback = self.forgets.begin(self._model_sha, self._completed, now_ms, negated)
        if rollback is not None:
            self._roll_back(rollback)
        if self._finished and not self._forget_needs_rounds():
            return []
        number = self._completed + 1
        # Quarantined nodes are refused at the edge; a node that spoiled an attempt of this
        # round sits out its retries, so one faulty member cannot stall the federation.
        excluded = self.forgets.excluded_nodes() | self.faults.spoiled(number)
        everyone = [n for n in self.live_nodes(now_ms) if not self.faults.quarantine(n)]
        # Nodes that left an earlier attempt of this round unanswered sit its retries out
        # while enough others remain: a live but unresponsive node cannot stall the round.
        responsive = [n for n in everyone if n not in self._missed]
        # A node that has no samples left (it forgot all of them) has nothing to train on,
        # and it no longer counts towards the quorum either.
        live = [
            n
            for n in everyone
            if n not in excluded
            and (self._samples.get(n, 1) > 0 or self.forgets.instruction_for(n) is not None)
        ]
        needed = max(
            self.policy.min_completed, self.policy.min_clients - (len(everyone) - len(live))
        )
        if len(live) < needed:
            return []
        without_missed = [n for n in live if n in responsive]
        if len(without_missed) >= needed:
            live = without_missed
        # The node uploading forget steps takes part in every round until it is done.
        forgetter = [n for n in live if self.forgets.instruction_for(n) is not None]
        selected = self.policy.sample(live, number, self._attempt, required=forgetter)
        deadline = now_ms + int(self.policy.round_timeout_s * 1000)
        rnd = OpenRound(number, self._attempt, selected, self._model_sha, now_ms, deadline)
        rnd.weights = {n: max(0, self._samples.get(n, 1)) for n in selected}
        rnd.forget_node = forgetter[0] if forgetter else ""
        self._round = rnd
        log.info(
            "round %d (attempt %d) started with %d of %d live nodes",
            number,
            self._attempt,
            len(selected),
            len(live),
        )
        if self.secure is not None:
            try:
                rnd.secure = SecureRound(
                    selected=selected,
                    vector_len=sum(t.numel for t in self.tensors) + 1,
                    declared_samples=rnd.weights,
                    node_keys=self._keys,
                    settings=self.secure,
                    context=f"forsaken/round/{number}/{rnd.attempt}/{self._model_sha}".encode(),
                    now_ms=now_ms,
                    first_deadline_ms=deadline,
                )
            except ConfigError as exc:
                reason = f"cannot set up secure aggregation: {exc}"
                return [self._abort(rnd, now_ms, reason, AbortCause.SECAGG)]
        return [RoundStarted(number, rnd.attempt, selected)]

    def _idle(self) -> bool:
        """The target rounds are done and no forget request needs anything more."""
        return self._finished and self.forgets.active() is None

    def _forget_needs_rounds(self) -> bool:
        rec = self.forgets.active()
        return rec is not None and rec.state in (ForgetState.UNLEARNING, ForgetState.RECOVERING)

    def _roll_back(self, rec: ForgetRecord) -> None:
        """`retrain`: restart from the last model before the node's first contribution;
        `not`: continue from the negated model."""
        sha = json.loads(rec.progress_json)["rollback_model"]
        self._model = from_bytes(self.checkpoints.get(sha), self.tensors)
        self._model_sha = sha
        # From now on the guard compares retrained models with the rolled-back one.
        self.guard.restart(self._evaluate(self._model))
        log.warning(
            "forget %s: rolled the model back to %s to retrain without node %s",
            rec.forget_id,
            sha[:12],
            rec.node_id,
        )

    def _collect_checkpoints(self) -> None:
        """Delete the checkpoints nothing can need any more (after the round is on record)."""
        if not self.keep_checkpoints:
            return
        # The keep set asks the ledger about every client; every keep_last / 2 rounds is often
        # enough (at most 1.5 x keep_last recent checkpoints on disk) and keeps it off most rounds.
        if self._completed % max(1, self.keep_checkpoints // 2):
            return
        try:
            keep = checkpoints_to_keep(self.ledger, self.keep_checkpoints) | {self._model_sha}
            removed = self.checkpoints.gc(keep)
        except (RetentionError, OSError) as exc:
            # Housekeeping: a failure here must not fail the round that was just recorded.
            log.warning("checkpoint collection skipped: %s", exc)
            return
        if removed:
            log.info("collected %d old checkpoint(s); %d kept", len(removed), len(keep))

    def _complete(self, rnd: OpenRound, now_ms: int) -> list[Event]:
        if sum(a.num_samples for a in rnd.accepted.values()) == 0:
            return [self._abort(rnd, now_ms, "no participant reported any samples")]
        delta = weighted_average([(a.update, a.num_samples) for a in rnd.accepted.values()])
        total = sum(a.num_samples for a in rnd.accepted.values())
        metrics = mean_metrics(rnd.accepted.values())
        return self._finish(rnd, delta, total, tuple(sorted(rnd.accepted)), metrics, now_ms)

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
            norm = check_aggregate(
                delta, self.train.max_update_norm, forget_round=bool(rnd.forget_node), slack=slack
            )
        except InvalidPayload as exc:
            reason = f"refused: {exc}; the previous model is kept"
            return [self._abort(rnd, now_ms, reason, AbortCause.REFUSED)]
        model = (self._model + delta).astype(np.float32)
        evaluation = self._evaluate(model)
        refusal = self.guard.refusal(evaluation, evaluated=self.evaluator is not None)
        if refusal is not None:
            return [self._abort(rnd, now_ms, refusal, AbortCause.REFUSED)]
        metrics = {**metrics, "update_norm": norm}
        # The new model is durable before the ledger names it.
        sha = self.checkpoints.put(to_bytes(model), {"round": rnd.number})
        record = round_record(
            rnd,
            now_ms,
            status="completed",
            participants=participants,
            model_sha256=sha,
            total_samples=total,
            evaluation=evaluation,
            metrics=metrics,
            reason=self._fault_notes(rnd.number),
        )
        # Ledger after checkpoint: a crash in between leaves an orphan blob, never a dangling row.
        self.ledger.record_round(record)
        self._model, self._model_sha, self._completed = model, sha, rnd.number
        self.guard.committed(evaluation)
        self._answered_last = self._answers(rnd)
        self.forgets.on_round_completed(
            participants, now_ms, sha, evaluation.accuracy if evaluation else None
        )
        self._collect_checkpoints()
        self._last_acc = evaluation.accuracy if evaluation else None
        self._round, self._attempt, self._last_abort = None, 0, ""
        self._missed = frozenset()
        events: list[Event] = [RoundCompleted(record)]
        if self._is_done() and not self._finished:
            self._finished = True
            events.append(Finished(self._completed))
        acc = f"{evaluation.accuracy:.4f}" if evaluation else "n/a"
        log.info("round %d completed with %d updates (acc=%s)", rnd.number, len(participants), acc)
        return events

    @staticmethod
    def _unanswered(rnd: OpenRound) -> frozenset[str]:
        if rnd.secure is not None:
            return rnd.secure.missing
        return frozenset(rnd.selected) - frozenset(rnd.accepted)

    @staticmethod
    def _answers(rnd: OpenRound) -> frozenset[tuple[str, str]]:
        if rnd.secure is not None:
            return rnd.secure.answered()
        return frozenset((node, a.request_id) for node, a in rnd.accepted.items())

    def _abort(
        self,
        rnd: OpenRound,
        now_ms: int,
        reason: str,
        cause: AbortCause = AbortCause.SHORTFALL,
    ) -> RoundAborted:
        record = round_record(
            rnd, now_ms, status="aborted", participants=tuple(sorted(rnd.accepted)), reason=reason
        )
        self.ledger.record_round(record)
        self._missed |= self._unanswered(rnd)
        self._round, self._attempt, self._last_abort = None, rnd.attempt + 1, reason
        log.warning("round %d attempt %d aborted: %s", rnd.number, rnd.attempt, reason)
        return RoundAborted(record, cause)

    # ---- helpers --------------------------------------------------------------------------

    def _fault_notes(self, round_: int) -> str:
        """What a completed round's record says about the members it left out, and why."""
        notes = []
        for node in sorted(self.faults.spoiled(round_)):
            fault = self.faults.last(node)
            notes.append(f"left out node {node}: {fault.reason if fault else 'a fault'}")
        return "; ".join(notes)

    def _shortfall(self, rnd: OpenRound) -> str:
        return (
            f"deadline passed with {len(rnd.accepted)} of {len(rnd.selected)} updates; "
            f"{self.policy.min_completed} needed"
        )

    def _validate_update(self, node_id: str, rnd: OpenRound, sub: Submission) -> np.ndarray:
        self._check_tensors(rnd, sub.tensors)
        if sub.num_samples < 0:
            raise InvalidPayload(f"num_samples must be >= 0, got {sub.num_samples}")
        declared = max(rnd.weights.get(node_id, 0), self._samples.get(node_id, 0))
        if sub.num_samples > declared:
            raise MemberFault(
                node_id, f"node {node_id} reports {sub.num_samples} samples; it declared {declared}"
            )
        bad = [k for k, v in sub.metrics.items() if not math.isfinite(v)]
        if bad:
            raise InvalidPayload(f"metrics {sorted(bad)} are NaN or Inf")
        update = from_bytes(sub.payload, sub.tensors)
        require_finite(update)
        # A forget step is scaled by W / w to survive averaging: bound what it adds to the mean.
        share = sub.num_samples / max(1, sum(rnd.weights.values()))
        contribution = node_id == rnd.forget_node
        norm = l2_norm(update) * (share if contribution else 1.0)
        bound = self.train.max_update_norm
        if bound and norm > bound * (1 + RELATIVE_TOLERANCE):
            what = "forget step adds" if contribution else "update has"
            raise MemberFault(
                node_id,
                f"node {node_id}'s {what} norm {norm:.4g}, over --max-update-norm {bound:g}",
            )
        return update

    def _evaluate(self, model: np.ndarray) -> EvalResult | None:
        result = self.evaluator(model) if self.evaluator else None
        if result is None or not (math.isfinite(result.accuracy) and math.isfinite(result.loss)):
            return None  # a diverged model has no meaningful score; the ledger stores none
        return result

    def _seen(self, node_id: str, num_samples: int | None, now_ms: int) -> None:
        self._last_seen[node_id] = now_ms
        self._last_contact[node_id] = now_ms
        if num_samples is not None:
            self._samples[node_id] = num_samples
            self._most_declared[node_id] = max(self._most_declared.get(node_id, 0), num_samples)

    def _is_done(self) -> bool:
        return self.policy.rounds > 0 and self._completed >= self.policy.rounds
