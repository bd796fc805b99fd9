"""The forget-request lifecycle on the server, transport-free (README, "Forgetting").

requested -> unlearning -> recovering -> verifying -> completed (or failed, with a reason).
Requests are served one at a time, oldest first, and every transition is written to the
ledger before anyone is told, so a restarted server resumes exactly where it was.

- unlearning: for `forsaken`, `pga` and `fedquit` the forgetting node's tasks carry a forget
  instruction
  and it uploads dummy gradients through the ordinary (secure) update path while the others
  train; it reports when its local membership oracle says the data looks unseen. `retrain`
  rolls the model back to before the node's first contribution and retrains for as many rounds
  as were lost. `not` replaces the model with its first layers negated (NoT), and recovery
  fine-tunes it. `finetune` does nothing here (the negative control).
- recovering: normal rounds among the remaining clients restore utility.
- verifying: the node measures the evidence on the final model and reports it; the receipt
  records it with both model digests. Nothing completes without that evidence.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from forsaken.common import failpoints
from forsaken.common.errors import InvalidPayload, PermissionDenied, StaleRequest
from forsaken.common.forget_methods import METHOD_NAMES, SERVER_METHODS, ForgetMethod
from forsaken.common.receipts import verdict
from forsaken.common.round_tasks import ForgetOrder
from forsaken.server.ledger import ForgetRecord, ForgetState, Ledger

log = logging.getLogger(__name__)

METHODS = METHOD_NAMES
# Quantities the node must report before a request may complete.
REQUIRED_EVIDENCE = ("mia_auc", "forget_acc", "held_out_acc")


@dataclass(frozen=True, slots=True)
class ForgetPolicy:
    default_method: str = "forsaken"
    recovery_rounds: int = 2
    max_unlearning_rounds: int = 10
    node_timeout_s: float = 600.0  # a needed node silent this long fails the request

    def validate(self) -> None:
        if self.default_method not in METHODS:
            raise InvalidPayload(f"default forget method must be one of {METHODS}")
        if self.recovery_rounds < 0 or self.max_unlearning_rounds < 1:
            raise InvalidPayload("recovery_rounds must be >= 0, max_unlearning_rounds >= 1")


def _progress(rec: ForgetRecord) -> dict[str, object]:
    return json.loads(rec.progress_json or "{}")


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
                f"an operator's forget can use {list(SERVER_METHODS)}, not {method!r}: the "
                "other methods need the node itself to compute its unlearning steps"
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
        if rec.state in (ForgetState.RECOVERING, ForgetState.VERIFYING) or (
            ForgetMethod(rec.method).server_side
        ):
            return frozenset({rec.node_id})
        return frozenset()

    def instruction_for(self, node_id: str) -> ForgetOrder | None:
        rec = self.active()
        if rec is None or rec.node_id != node_id or rec.state is not ForgetState.UNLEARNING:
            return None
        if not ForgetMethod(rec.method).computed_by_node:
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
        return rec is not None and rec.state is ForgetState.REQUESTED and rec.method == "not"

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
        progress = {
            "model_before": model_sha256,
            "started_round": completed_round,
            "unlearning_rounds": 0,
            "recovery_rounds": 0,
            "client": {},
        }
        if rec.method == "not":
            if negated_model is None:
                raise InvalidPayload("NoT needs the negated model's checkpoint to start")
            progress["rollback_model"] = negated_model
            self._set(rec, ForgetState.UNLEARNING, progress, now_ms)
            self._set(self.ledger.forget(rec.forget_id), ForgetState.RECOVERING, progress, now_ms)
            return self.ledger.forget(rec.forget_id)
        if rec.method == "finetune":
            self._set(rec, ForgetState.UNLEARNING, progress, now_ms)
            self._set(self.ledger.forget(rec.forget_id), ForgetState.RECOVERING, progress, now_ms)
            return None
        if rec.method == "retrain":
            first = self.ledger.first_contribution(rec.node_id)
            base = self.ledger.last_checkpoint_before(first) if first is not None else None
            progress["rollback_to_round"] = base.round if base is not None else completed_round
            progress["retrain_rounds_left"] = (
                completed_round - base.round if base is not None else 0
            )
            progress["rollback_model"] = base.model_sha256 if base is not None else model_sha256
            self._set(rec, ForgetState.UNLEARNING, progress, now_ms)
            return self.ledger.forget(rec.forget_id)
        self._set(rec, ForgetState.UNLEARNING, progress, now_ms)
        failpoints.hit("server-after-forget-unlearning")
        return None

    def on_round_completed(
        self,
        participants: tuple[str, ...],
        now_ms: int,
        model_sha256: str = "",
        test_acc: float | None = None,
    ) -> None:
        rec = self.active()
        if rec is None:
            return
        self._advance(rec, participants, now_ms)
        rec = self.active()
        if rec is not None and rec.initiated_by and rec.state is ForgetState.VERIFYING:
            self._complete_by_server(rec, now_ms, model_sha256, test_acc)

    def _advance(self, rec: ForgetRecord, participants: tuple[str, ...], now_ms: int) -> None:
        progress = _progress(rec)
        needs_node = rec.method in ("forsaken", "pga")
        if rec.state is ForgetState.UNLEARNING and needs_node and rec.node_id not in participants:
            # Rounds go on without a node that stopped taking part; after as many rounds as
            # unlearning may take at most, its request fails and the next one can start.
            missed = int(progress.get("rounds_missed", 0)) + 1
            progress["rounds_missed"] = missed
            if missed >= self.policy.max_unlearning_rounds:
                reason = f"node {rec.node_id} took no part in {missed} unlearning rounds"
                self._set(rec, ForgetState.FAILED, progress, now_ms, reason=reason)
                return
        if rec.state is ForgetState.UNLEARNING:
            if rec.method == "retrain":
                left = int(progress.get("retrain_rounds_left", 0)) - 1
                progress["retrain_rounds_left"] = max(0, left)
                progress["unlearning_rounds"] = int(progress["unlearning_rounds"]) + 1
                if left > 0:
                    self._set(rec, rec.state, progress, now_ms)
                    return
                # Retraining is exact: nothing to recover from, straight on to verification.
                self._set(rec, ForgetState.RECOVERING, progress, now_ms)
                self._set(
                    self.ledger.forget(rec.forget_id), ForgetState.VERIFYING, progress, now_ms
                )
                return
            if rec.node_id in participants:
                progress["unlearning_rounds"] = int(progress["unlearning_rounds"]) + 1
            capped = int(progress["unlearning_rounds"]) >= self.policy.max_unlearning_rounds
            if not (progress.get("client_done") or capped):
                self._set(rec, rec.state, progress, now_ms)
                return
            progress["stopped_by"] = "round cap" if not progress.get("client_done") else "oracle"
            self._set(rec, ForgetState.RECOVERING, progress, now_ms)
            if self.policy.recovery_rounds == 0:
                self._set(
                    self.ledger.forget(rec.forget_id), ForgetState.VERIFYING, progress, now_ms
                )
            return
        if rec.state is ForgetState.RECOVERING:
            progress["recovery_rounds"] = int(progress["recovery_rounds"]) + 1
            done = int(progress["recovery_rounds"]) >= self.policy.recovery_rounds
            self._set(rec, ForgetState.VERIFYING if done else rec.state, progress, now_ms)

    def on_report(
        self,
        node_id: str,
        forget_id: str,
        kind: str,
        metrics: Mapping[str, float],
        reason: str,
        model_sha256: str,
        now_ms: int,
    ) -> ForgetRecord:
        """The forgetting node reports progress ("progress", "done"), evidence, or failure."""
        rec = self.get(node_id, forget_id)
        if rec.state.terminal:
            return rec
        progress = _progress(rec)
        if kind == "failed":
            self._set(rec, ForgetState.FAILED, progress, now_ms, reason=reason or "client failed")
            return self.ledger.forget(forget_id)
        if kind in ("progress", "done"):
            if rec.state is not ForgetState.UNLEARNING:
                raise StaleRequest(f"forget {forget_id} is {rec.state}, not unlearning")
            progress["client"] = dict(metrics)
            # Each report covers one step; the receipt's cost is the sum over all of them.
            progress["client_gradient_evaluations"] = int(
                progress.get("client_gradient_evaluations", 0)
            ) + int(metrics.get("gradient_evaluations", 0))
            progress["client_done"] = progress.get("client_done") or kind == "done"
            self._set(rec, rec.state, progress, now_ms)
            return self.ledger.forget(forget_id)
        if kind == "evidence":
            if rec.state is not ForgetState.VERIFYING:
                raise StaleRequest(f"forget {forget_id} is {rec.state}, not verifying")
            missing = [k for k in REQUIRED_EVIDENCE if k not in metrics]
            if missing:
                raise InvalidPayload(f"evidence lacks {missing}")
            receipt = self._receipt(rec, progress, dict(metrics), model_sha256, now_ms)
            receipt["verdict"] = verdict(receipt)
            self.ledger.update_forget(
                forget_id,
                now_ms=now_ms,
                state=ForgetState.COMPLETED,
                receipt_json=json.dumps(receipt, sort_keys=True),
            )
            self._refresh()
            log.info("forget %s completed: %s", forget_id, receipt["evidence"])
            return self.ledger.forget(forget_id)
        raise InvalidPayload(f"unknown report kind {kind!r}")

    def fail_stale(self, last_contact_ms: Mapping[str, int], now_ms: int) -> None:
        """Fail the active request if its node is needed but silent, or will not verify.

        Silence is measured from the node's last real contact with the server (any call), not
        from the request's last write, which every round rewrites. A node that keeps calling
        but never reports its evidence fails once verification has waited as long.
        """
        rec = self.active()
        if rec is None or rec.initiated_by:
            return  # an operator's request needs nothing from the node
        if rec.state not in (ForgetState.UNLEARNING, ForgetState.VERIFYING):
            return
        if ForgetMethod(rec.method).server_side and rec.state is ForgetState.UNLEARNING:
            return  # the node is not needed until verification
        limit = self.policy.node_timeout_s
        contact = max(last_contact_ms.get(rec.node_id, self._started_ms), self._started_ms)
        silent_s = (now_ms - contact) / 1000
        reason = ""
        if silent_s > limit:
            reason = f"node {rec.node_id} silent for {silent_s:.0f}s during {rec.state}"
        elif rec.state is ForgetState.VERIFYING:
            since = int(_progress(rec).get("verifying_since_ms", now_ms))
            waited_s = (now_ms - max(since, self._started_ms)) / 1000
            if waited_s > limit:
                reason = f"node {rec.node_id} reported no evidence in {waited_s:.0f}s"
        if reason:
            self._set(rec, ForgetState.FAILED, _progress(rec), now_ms, reason=reason)

    # ---- helpers ------------------------------------------------------------------------

    def _set(
        self,
        rec: ForgetRecord,
        state: ForgetState,
        progress: Mapping[str, object],
        now_ms: int,
        reason: str = "",
    ) -> None:
        if state is ForgetState.VERIFYING and rec.state is not ForgetState.VERIFYING:
            progress = {**progress, "verifying_since_ms": now_ms}
        changes: dict[str, object] = {"state": state, "progress_json": json.dumps(progress)}
        if reason:
            changes["reason"] = reason
        self.ledger.update_forget(rec.forget_id, now_ms=now_ms, **changes)  # type: ignore[arg-type]
        self._refresh()
        if state != rec.state:
            log.info("forget %s: %s -> %s", rec.forget_id, rec.state, state)

    def _complete_by_server(
        self, rec: ForgetRecord, now_ms: int, model_sha256: str, test_acc: float | None
    ) -> None:
        """An operator's request: the node cannot measure anything, so the receipt states what
        the server did and what that shows."""
        progress = _progress(rec)
        if rec.method == "retrain":
            shows = (
                "exact: the model was rolled back to the checkpoint of round "
                f"{progress.get('rollback_to_round')}, before the node's first contribution, and "
                "retrained without it; nothing the node sent reached the final model"
            )
        else:
            shows = (
                "nothing by itself: the node stopped contributing, but what it taught the model "
                "earlier may remain; use retrain for a removal that can be shown"
            )
        evidence = {} if test_acc is None else {"validation_acc": test_acc}
        receipt = self._receipt(rec, progress, evidence, model_sha256, now_ms)
        receipt["verified_by"] = "server"
        receipt["initiated_by"] = rec.initiated_by
        receipt["reference"] = shows
        receipt["verdict"] = verdict(receipt)
        self.ledger.update_forget(
            rec.forget_id,
            now_ms=now_ms,
            state=ForgetState.COMPLETED,
            receipt_json=json.dumps(receipt, sort_keys=True),
        )
        self._refresh()
        log.info("forget %s (%s) completed by the server", rec.forget_id, rec.initiated_by)

    def _receipt(
        self,
        rec: ForgetRecord,
        progress: Mapping[str, object],
        evidence: dict[str, float],
        model_after: str,
        now_ms: int,
    ) -> dict[str, object]:
        return {
            "forget_id": rec.forget_id,
            "node_id": rec.node_id,
            "method": rec.method,
            "samples": len(rec.sample_ids) if rec.sample_ids else "all",
            "requested_ms": rec.created_ms,
            "completed_ms": now_ms,
            "model_sha256_before": progress.get("model_before"),
            "model_sha256_after": model_after,
            "unlearning_rounds": progress.get("unlearning_rounds"),
            "recovery_rounds": progress.get("recovery_rounds"),
            "stopped_by": progress.get("stopped_by", rec.method),
            "client_progress": progress.get("client", {}),
            "client_gradient_evaluations": progress.get("client_gradient_evaluations", 0),
            "evidence": evidence,
            "reference": (
                "What this evidence shows and what it cannot. mia_auc and conf_auc are "
                "population attacks (a loss and a label-free confidence threshold) on the "
                "forgotten samples against the node's held-out samples, which no model ever "
                "trained on; auc_resolution is the smallest distance from 0.5 that these sample "
                "sizes can tell from chance, so a value within 0.5 +/- auc_resolution says only "
                "that no population-level difference is visible. excess_confidence_drop, where "
                "present, is how much more the forgotten samples' logit confidence fell than the "
                "held-out samples' between the model at the request and this one (95% half-width "
                "beside it). None of this compares the model with one retrained without the "
                "data: per-example memorisation, which a membership attack calibrated on shadow "
                "models (LiRA) can still see when these numbers look clean, is measured only by "
                "an evaluation with retrained references, as `forsaken evaluate` runs it; "
                "docs/unlearning.md reports it for each method. For data unlike the held-out "
                "slice (relabelled or triggered samples) the population numbers are not 0.5 "
                "even for a retrained model"
            ),
        }
