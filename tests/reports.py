"""Forget reports for tests, built the way a node builds them: a kind, metrics, and so on."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from forsaken.common.forget_receipt import Evidence
from forsaken.common.forget_reports import (
    EvidenceReport,
    FailureReport,
    ForgetReport,
    ReportBody,
    ReportKind,
    StepReport,
)


def body(
    kind: ReportKind | str,
    metrics: Mapping[str, float] | None = None,
    reason: str = "",
    model_sha256: str = "",
) -> ReportBody:
    """A step's cost travels in `gradient_evaluations`, as the node's metrics name it."""
    metrics = dict(metrics or {})
    match ReportKind(kind):
        case ReportKind.PROGRESS | ReportKind.DONE:
            cost = int(metrics.pop("gradient_evaluations", 0))
            return StepReport(kind == ReportKind.DONE, cost, metrics)
        case ReportKind.EVIDENCE:
            return EvidenceReport(Evidence.of(metrics), model_sha256)
        case ReportKind.FAILED:
            return FailureReport(reason)
    raise AssertionError(kind)


def report(
    forget_id: str,
    kind: ReportKind | str,
    metrics: Mapping[str, float] | None = None,
    reason: str = "",
    model_sha256: str = "",
) -> ForgetReport:
    return ForgetReport(uuid.uuid4().hex, forget_id, body(kind, metrics, reason, model_sha256))
