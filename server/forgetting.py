"""Forget requests on the server: the ledger's side of the lifecycle (README, "Forgetting").

Requests are served one at a time, oldest first. `ForgetManager` accepts new requests, answers
what rounds look like while one is active, and turns what happens (a round completed, a report,
a silent node) into lifecycle events: it loads the active request from the ledger, asks the
pure `transition` (forget_lifecycle.py) what follows, and writes each resulting action to the
ledger before anyone is told, so a restarted server resumes exactly where it was.

- unlearning: for `forsaken`, `pga` and `fedquit` the forgetting node's tasks carry a forget
  instruction and it uploads its unlearning steps through the ordinary (secure) update path
  while the others train; it reports when its local membership oracle says the data looks
  unseen. `retrain` rolls the model back to before the node's first contribution and retrains
  for as many rounds as were lost. `not` replaces the model with its first layers negated
  (NoT), and recovery fine-tunes it. `finetune` does nothing here (the negative control).
- recovering: normal rounds among the remaining clients restore utility.
- verifying: the node measures the evidence on the final model and reports it; the receipt
  records it with both model digests. Nothing completes without that evidence.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping

from forsaken.common import failpoints
from forsaken.common.errors import InvalidPayload, PermissionDenied
from forsaken.common.forget_methods import SERVER_METHODS, ForgetMethod
from forsaken.common.forget_reports import ForgetReport
from forsaken.common.round_tasks import ForgetOrder
from forsaken.server.forget_lifecycle import (
    Begin,
    Fail,
    ForgetAction,
    ForgetEvent,
    LivenessCheck,
    Report,
    RollBack,
    RoundCompleted,
    SetStage,
    WriteReceipt,
    transition,
)
from forsaken.server.forget_receipts import REQUIRED_EVIDENCE
from forsaken.server.forget_state import Checkpoint, ForgetCase, ForgetPolicy
from forsaken.server.forget_strategies import STRATEGIES, StartFacts
from forsaken.server.ledger import ForgetRecord, ForgetState, Ledger

log = logging.getLogger(__name__)

__all__ = ["REQUIRED_EVIDENCE", "ForgetManager", "ForgetPolicy"]


class ForgetManager:
    def __init__(self, ledger: Ledger, policy: ForgetPolicy, now_ms: int = 0) -> None:
        policy.validate()
        self.ledger = ledger
        self.policy = policy
        # A node not heard from since this server started counts as heard from at the start.
        self._started_ms = now_ms
        self._active: ForgetRecord | None = None
        self._refresh()

    def _refresh(self) -> None:
        # Every write goes through this manager, so a cached view of the oldest open request
        # stays exact and polls need no database read.
        pending = self.ledger.pending_forgets()
        self._active = min(pending, key=lambda r: (r.created_ms, r.forget_id)) if pending else None

    # ---- requests ---------------------------------------------------------------------

    def request(
        self,
        caller: str,
        node_id: str,
        request_id: str,
        sample_ids: tuple[int, ...],
        method: str,
        now_ms: int,
        *,
        max_samples: int | None = None,
        admit: Callable[[], None] | None = None,
    ) -> tuple[ForgetRecord, bool]:
        """Record a request durably; (record, created). Only a node may forget its own data.

        Sample ids are deduplicated and may not outnumber `max_samples`, the most the node
        ever declared holding (the coordinator always passes it). `admit` runs once the
        request is valid and new (a rate limit's token is spent only then); it may raise.
        """
        owner = node_id or caller
        if owner != caller:
            raise PermissionDenied(f"node {caller} may not ask to forget node {owner}'s data")
        if not request_id:
            raise InvalidPayload("request_id is required")
        method = ForgetMethod.parse(method or self.policy.default_method)
        ids = tuple(sorted(set(sample_ids)))
        if max_samples is not None and len(ids) > max_samples:
            raise InvalidPayload(
                f"{len(ids)} distinct sample ids, but node {owner} declared at most "
                f"{max_samples} samples"
            )
        record = ForgetRecord(
            forget_id=uuid.uuid4().hex,
            node_id=owner,
            request_id=request_id,
            method=method,
            sample_ids=ids,
            created_ms=now_ms,
            updated_ms=now_ms,
        )
        return self._create(record, admit)

    def operator_request(
        self, operator: str, node_id: str, request_id: str, method: str, reason: str, now_ms: int
    ) -> tuple[ForgetRecord, bool]:
        """An operator's forget of all of a revoked node's data; the server verifies alone.

        Only methods that need nothing from the node can serve it: `retrain` (exact) and
        `finetune` (the node simply stops contributing, which proves nothing by itself).
        """
        if not request_id:
            raise InvalidPayload("request_id is required")
        method = ForgetMethod.parse(method or ForgetMethod.RETRAIN)
        if not method.server_side:
            raise InvalidPayload(
                f"an operator's forget can use {[m.value for m in SERVER_METHODS]}, not "
                f"{method.value!r}: the other methods need the node itself to compute its "
                "unlearning steps"
            )
        record = ForgetRecord(
            forget_id=uuid.uuid4().hex,
            node_id=node_id,
            request_id=request_id,
            method=method,
            reason=reason,
            created_ms=now_ms,
            updated_ms=now_ms,
            initiated_by=f"operator:{operator}",
        )
        return self._create(record, None)

    def _create(
        self, record: ForgetRecord, admit: Callable[[], None] | None
    ) -> tuple[ForgetRecord, bool]:
        existing = [
            f for f in self.ledger.forgets(record.node_id) if f.request_id == record.request_id
        ]
        if existing:
            return existing[0], False  # a retry: same request, same answer, no token spent
        if admit is not None:
            admit()
        owner, method, sample_ids = record.node_id, record.method, record.sample_ids
        stored, created = self.ledger.create_forget(record)
        self._refresh()
        if created:
            log.info(
                "forget request %s from node %s (%s, %s samples)",
                stored.forget_id,
                owner,
                method,
                len(sample_ids) or "all",
            )
        return stored, created

    def get(self, caller: str, forget_id: str) -> ForgetRecord:
        rec = self.ledger.forget(forget_id)
        if rec.node_id != caller:
            raise PermissionDenied(f"forget request {forget_id} belongs to another node")
        return rec

    def active(self) -> ForgetRecord | None:
        return self._active

    # ---- what rounds look like while a request is active -------------------------------

    def excluded_nodes(self) -> frozenset[str]:
        """Nodes not to sample: a node forgetting all its data has nothing left to train on,
        so from recovery on it only verifies."""
        rec = self.active()
        if rec is None or rec.sample_ids:
            return frozenset()
        if rec.state in (ForgetState.RECOVERING, ForgetState.VERIFYING) or rec.method.server_side:
            return frozenset({rec.node_id})
        return frozenset()

    def instruction_for(self, node_id: str) -> ForgetOrder | None:
        rec = self.active()
        if rec is None or rec.node_id != node_id or rec.state is not ForgetState.UNLEARNING:
            return None
        if not rec.method.computed_by_node:
            return None
        return ForgetOrder(rec.forget_id, rec.method, rec.sample_ids)

    def verify_for(self, node_id: str) -> ForgetRecord | None:
        rec = self.active()
        if (
            rec is not None
            and rec.node_id == node_id
            and rec.state is ForgetState.VERIFYING
            and not rec.initiated_by
        ):
            return rec
        return None

    # ---- transitions --------------------------------------------------------------------

    def needs_negated_model(self) -> bool:
        """The next request to start is NoT: the caller must checkpoint the negated model and
        pass its digest to `begin` (the ledger names it before anything depends on it)."""
        rec = self.active()
        return (
            rec is not None
            and rec.state is ForgetState.REQUESTED
            and STRATEGIES[rec.method].needs_negated_model
        )

    def begin(
        self,
        model_sha256: str,
        completed_round: int,
        now_ms: int,
        negated_model: str | None = None,
    ) -> ForgetRecord | None:
        """Start the oldest requested forget; returns it if its method replaces the model
        (`retrain`'s rollback, `not`'s negated model: `rollback_model` in its progress)."""
        rec = self.active()
        if rec is None or rec.state is not ForgetState.REQUESTED:
            return None
        before_node = None
        if STRATEGIES[rec.method].needs_checkpoint_before_node:
            first = self.ledger.first_contribution(rec.node_id)
            base = self.ledger.last_checkpoint_before(first) if first is not None else None
            if base is not None and base.model_sha256:
                before_node = Checkpoint(base.round, base.model_sha256)
        facts = StartFacts(model_sha256, completed_round, negated_model, before_node)
        case, rollback = self._apply(rec, Begin(facts, now_ms))
        if case.stage is ForgetState.UNLEARNING and case.method.computed_by_node:
            failpoints.hit("server-after-forget-unlearning")
        return self.ledger.forget(rec.forget_id) if rollback else None

    def on_round_completed(
        self,
        participants: tuple[str, ...],
        now_ms: int,
        model_sha256: str = "",
        test_acc: float | None = None,
    ) -> None:
        rec = self.active()
        if rec is not None:
            event = RoundCompleted(frozenset(participants), now_ms, model_sha256, test_acc)
            self._apply(rec, event)

    def on_report(self, node_id: str, report: ForgetReport, now_ms: int) -> ForgetRecord:
        """The forgetting node reports a step, its evidence, or that it failed."""
        rec = self.get(node_id, report.forget_id)
        if rec.state.terminal:
            return rec  # a retry of the report that ended it
        self._apply(rec, Report(report.body, now_ms))
        return self.ledger.forget(report.forget_id)

    def fail_stale(self, last_contact_ms: Mapping[str, int], now_ms: int) -> None:
        """Fail the active request if its node is needed but silent, or will not verify."""
        rec = self.active()
        if rec is not None:
            contact = last_contact_ms.get(rec.node_id)
            self._apply(rec, LivenessCheck(now_ms, contact, self._started_ms))

    # ---- applying the lifecycle's actions ------------------------------------------------

    def _apply(self, rec: ForgetRecord, event: ForgetEvent) -> tuple[ForgetCase, str | None]:
        """Run `event` through the lifecycle and record its actions in order; the new case
        and the model to roll back to, if any. Nothing is written when the event is refused."""
        case, actions = transition(ForgetCase.of(rec), event, self.policy)
        rollback = None
        try:
            for action in actions:
                rollback = self._record(rec.forget_id, action, event) or rollback
        finally:
            self._refresh()
        return case, rollback

    def _record(self, forget_id: str, action: ForgetAction, event: ForgetEvent) -> str | None:
        now_ms = event.now_ms
        before = self.ledger.forget(forget_id).state
        match action:
            case SetStage(stage, progress):
                self.ledger.update_forget(
                    forget_id, now_ms=now_ms, state=stage, progress_json=progress.to_json()
                )
                if stage is not before:
                    log.info("forget %s: %s -> %s", forget_id, before, stage)
            case Fail(reason, progress):
                self.ledger.update_forget(
                    forget_id,
                    now_ms=now_ms,
                    state=ForgetState.FAILED,
                    progress_json=progress.to_json(),
                    reason=reason,
                )
                log.info("forget %s: %s -> failed: %s", forget_id, before, reason)
            case WriteReceipt(receipt):
                self.ledger.update_forget(
                    forget_id,
                    now_ms=now_ms,
                    state=ForgetState.COMPLETED,
                    receipt_json=receipt.to_json(),
                )
                who = "the server" if isinstance(event, RoundCompleted) else "its node"
                log.info("forget %s completed, verified by %s", forget_id, who)
            case RollBack(model_sha256):
                return model_sha256
        return None
