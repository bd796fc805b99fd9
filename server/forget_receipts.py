"""The receipt a completed forget request ends with: the evidence, both model digests, the
cost, what the evidence shows and what it cannot, and a verdict computed from those alone."""

from __future__ import annotations

from forsaken.common.forget_receipt import REQUIRED_EVIDENCE, Evidence, Receipt, Verifier
from forsaken.server.forget_state import ForgetCase

__all__ = ["NODE_EVIDENCE_REFERENCE", "REQUIRED_EVIDENCE", "node_receipt", "server_receipt"]

NODE_EVIDENCE_REFERENCE = (
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
)


def node_receipt(case: ForgetCase, evidence: Evidence, model_after: str, now_ms: int) -> Receipt:
    """The receipt of a request its node verified."""
    return _receipt(case, evidence, model_after, now_ms, NODE_EVIDENCE_REFERENCE)


def server_receipt(
    case: ForgetCase, shows: str, test_acc: float | None, model_after: str, now_ms: int
) -> Receipt:
    """The receipt of an operator's request: the node cannot measure anything, so it states
    what the server did (`shows`) and the validation accuracy after."""
    evidence = Evidence(validation_acc=test_acc)
    return _receipt(case, evidence, model_after, now_ms, shows, Verifier.SERVER, case.initiated_by)


def _receipt(
    case: ForgetCase,
    evidence: Evidence,
    model_after: str,
    now_ms: int,
    reference: str,
    verified_by: Verifier = Verifier.NODE,
    initiated_by: str = "",
) -> Receipt:
    p = case.progress
    return Receipt(
        forget_id=case.forget_id,
        node_id=case.node_id,
        method=case.method,
        samples=case.samples,
        requested_ms=case.created_ms,
        completed_ms=now_ms,
        model_sha256_before=p.model_before,
        model_sha256_after=model_after,
        unlearning_rounds=p.unlearning_rounds,
        recovery_rounds=p.recovery_rounds,
        stopped_by=p.stopped_by or case.method.value,
        client_gradient_evaluations=p.client_gradient_evaluations,
        client_progress=p.client,
        evidence=evidence,
        reference=reference,
        verified_by=verified_by,
        initiated_by=initiated_by,
    )
