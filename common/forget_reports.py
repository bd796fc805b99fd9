"""What a forgetting node may report about its request, as typed values both sides share.

The wire carries a report as a `oneof` (common/wire_forget.py); a report's kind is which
of the three bodies it holds, and a step says whether it is the last.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from forsaken.common.errors import InvalidPayload
from forsaken.common.forget_receipt import Evidence, finite_metrics


class ReportKind(StrEnum):
    PROGRESS = "progress"  # one unlearning step done; metrics describe it
    DONE = "done"  # the same, and the node's membership oracle says the data looks unseen
    EVIDENCE = "evidence"  # the measurements on the final model that complete the request
    FAILED = "failed"  # the node cannot go on; the reason says why


@dataclass(frozen=True, slots=True)
class StepReport:
    """One unlearning step the node computed and is about to upload."""

    done: bool  # the node's membership oracle says the data looks unseen
    gradient_evaluations: int = 0  # what the step cost
    metrics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.gradient_evaluations < 0:
            raise InvalidPayload("gradient_evaluations must be >= 0")
        object.__setattr__(self, "metrics", finite_metrics(self.metrics, "step"))

    @property
    def kind(self) -> ReportKind:
        return ReportKind.DONE if self.done else ReportKind.PROGRESS


@dataclass(frozen=True, slots=True)
class EvidenceReport:
    """The measurements on a model that complete the request."""

    evidence: Evidence
    model_sha256: str  # hex: the model they were measured on

    @property
    def kind(self) -> ReportKind:
        return ReportKind.EVIDENCE


@dataclass(frozen=True, slots=True)
class FailureReport:
    reason: str = ""

    @property
    def kind(self) -> ReportKind:
        return ReportKind.FAILED


ReportBody = StepReport | EvidenceReport | FailureReport


@dataclass(frozen=True, slots=True)
class ForgetReport:
    """A report as the node sends it; idempotent by `request_id`."""

    request_id: str
    forget_id: str
    body: ReportBody
