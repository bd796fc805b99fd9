"""The receipt a completed forget request ends with: the evidence, both model digests, the
cost, what the evidence shows and what it cannot, and a verdict computed from those alone."""

from __future__ import annotations

import json
from collections.abc import Mapping

from forsaken.common.receipts import verdict
from forsaken.server.forget_state import ForgetCase

# Quantities the node must report before a request may complete.
REQUIRED_EVIDENCE = ("mia_auc", "forget_acc", "held_out_acc")

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


def node_receipt(
    case: ForgetCase, evidence: Mapping[str, float], model_after: str, now_ms: int
) -> str:
    """The receipt of a request its node verified, as the ledger stores it."""
    return _finish(_receipt(case, evidence, model_after, now_ms))


def server_receipt(
    case: ForgetCase, shows: str, test_acc: float | None, model_after: str, now_ms: int
) -> str:
    """The receipt of an operator's request: the node cannot measure anything, so it states
    what the server did (`shows`) and the validation accuracy after."""
    evidence = {} if test_acc is None else {"validation_acc": test_acc}
    receipt = _receipt(case, evidence, model_after, now_ms)
    receipt["verified_by"] = "server"
    receipt["initiated_by"] = case.initiated_by
    receipt["reference"] = shows
    return _finish(receipt)


def _finish(receipt: dict[str, object]) -> str:
    receipt["verdict"] = verdict(receipt)
    return json.dumps(receipt, sort_keys=True)


def _receipt(
    case: ForgetCase, evidence: Mapping[str, float], model_after: str, now_ms: int
) -> dict[str, object]:
    p = case.progress
    return {
        "forget_id": case.forget_id,
        "node_id": case.node_id,
        "method": case.method.value,
        "samples": case.samples or "all",
        "requested_ms": case.created_ms,
        "completed_ms": now_ms,
        "model_sha256_before": p.model_before or None,
        "model_sha256_after": model_after,
        "unlearning_rounds": p.unlearning_rounds,
        "recovery_rounds": p.recovery_rounds,
        "stopped_by": p.stopped_by or case.method.value,
        "client_progress": dict(p.client),
        "client_gradient_evaluations": p.client_gradient_evaluations,
        "evidence": dict(evidence),
        "reference": NODE_EVIDENCE_REFERENCE,
    }
