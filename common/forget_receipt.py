"""A forget request's receipt and the evidence in it, as typed values both sides share.

The server makes a receipt when a request completes; the wire carries it as a typed message
(common/wire_forget.py) and the ledger stores it as JSON under the keys it has always used,
so receipts written by earlier versions still read (`Receipt.from_json`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from forsaken.common.errors import CorruptState, InvalidPayload
from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.receipts import verdict

# What a node's evidence must hold before its request may complete.
REQUIRED_EVIDENCE = ("mia_auc", "forget_acc", "held_out_acc")

_NONE: Mapping[str, float] = MappingProxyType({})


def finite_metrics(values: Mapping[str, float], what: str) -> Mapping[str, float]:
    """`values` as a read-only mapping of finite floats, or `InvalidPayload` naming the first
    bad one: a NaN or an infinity would poison every sum and comparison made with it."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if not key:
            raise InvalidPayload(f"{what}: a metric without a name")
        number = float(value)
        if not math.isfinite(number):
            raise InvalidPayload(f"{what}: {key} is {number}, not a finite number")
        out[str(key)] = number
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class Evidence:
    """Measurements on a model about the data a request forgets (README, "Forgetting").

    Named fields for the quantities the receipt's verdict reads; anything else a node
    measured goes in `extra`. None: not measured.
    """

    mia_auc: float | None = None
    forget_acc: float | None = None
    held_out_acc: float | None = None
    conf_auc: float | None = None
    auc_resolution: float | None = None
    excess_confidence_drop: float | None = None
    excess_confidence_drop_ci95: float | None = None
    validation_acc: float | None = None  # the server's own measurement, on its receipts
    extra: Mapping[str, float] = field(default_factory=lambda: _NONE)

    def __post_init__(self) -> None:
        for name in _NAMED:
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise InvalidPayload(f"evidence: {name} is {value}, not a finite number")
        clash = sorted(set(self.extra) & set(_NAMED))
        if clash:
            raise InvalidPayload(f"evidence: {clash} belong in their own fields, not extra")
        object.__setattr__(self, "extra", finite_metrics(self.extra, "evidence"))

    @classmethod
    def of(cls, values: Mapping[str, float]) -> Evidence:
        """The evidence in a flat mapping of measurements (as a node computes them)."""
        values = finite_metrics(values, "evidence")
        named = {k: float(v) for k, v in values.items() if k in _NAMED}
        extra = {k: float(v) for k, v in values.items() if k not in _NAMED}
        return cls(**named, extra=extra)

    def as_dict(self) -> dict[str, float]:
        """The flat mapping again: the measured quantities only."""
        named = {k: getattr(self, k) for k in _NAMED if getattr(self, k) is not None}
        return {**named, **self.extra}

    def missing(self) -> list[str]:
        """The required quantities not measured."""
        return [k for k in REQUIRED_EVIDENCE if getattr(self, k) is None]


_NAMED = tuple(f.name for f in fields(Evidence) if f.name != "extra")


class Verifier(StrEnum):
    NODE = "node"  # the forgetting node measured the evidence
    SERVER = "server"  # an operator's request: the server's own work is the evidence


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a completed request ends with; `verdict` is computed from the other fields."""

    forget_id: str
    node_id: str
    method: ForgetMethod
    samples: int  # sample ids forgotten; 0: all of the node's data
    requested_ms: int
    completed_ms: int
    model_sha256_before: str  # hex; empty: not recorded
    model_sha256_after: str
    unlearning_rounds: int
    recovery_rounds: int
    stopped_by: str
    client_gradient_evaluations: int
    client_progress: Mapping[str, float]
    evidence: Evidence
    reference: str  # what the evidence shows and what it cannot
    verified_by: Verifier = Verifier.NODE
    initiated_by: str = ""
    verdict: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "client_progress", finite_metrics(self.client_progress, "progress")
        )
        if not self.verdict:
            object.__setattr__(self, "verdict", verdict(self._doc()))

    def _doc(self) -> dict[str, Any]:
        """The stored form, without the verdict."""
        doc: dict[str, Any] = {
            "forget_id": self.forget_id,
            "node_id": self.node_id,
            "method": self.method.value,
            "samples": self.samples or "all",
            "requested_ms": self.requested_ms,
            "completed_ms": self.completed_ms,
            "model_sha256_before": self.model_sha256_before or None,
            "model_sha256_after": self.model_sha256_after,
            "unlearning_rounds": self.unlearning_rounds,
            "recovery_rounds": self.recovery_rounds,
            "stopped_by": self.stopped_by,
            "client_progress": dict(self.client_progress),
            "client_gradient_evaluations": self.client_gradient_evaluations,
            "evidence": self.evidence.as_dict(),
            "reference": self.reference,
        }
        if self.verified_by is Verifier.SERVER:
            doc["verified_by"] = self.verified_by.value
            doc["initiated_by"] = self.initiated_by
        return doc

    def as_dict(self) -> dict[str, Any]:
        """The receipt as the ledger stores it and `--json` prints it."""
        return {**self._doc(), "verdict": self.verdict}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Receipt | None:
        """The stored receipt; None for a request without one ("{}"). Older receipts lack
        some keys (the verdict, the cost): those read as empty, the verdict recomputed."""
        try:
            doc = json.loads(text or "{}")
            if not isinstance(doc, dict):
                raise TypeError(f"a JSON object expected, got {type(doc).__name__}")
            if not doc:
                return None
            samples = doc.get("samples", "all")
            return cls(
                forget_id=str(doc["forget_id"]),
                node_id=str(doc["node_id"]),
                method=ForgetMethod(doc["method"]),
                samples=0 if samples == "all" else int(samples),
                requested_ms=int(doc.get("requested_ms", 0)),
                completed_ms=int(doc.get("completed_ms", 0)),
                model_sha256_before=str(doc.get("model_sha256_before") or ""),
                model_sha256_after=str(doc.get("model_sha256_after") or ""),
                unlearning_rounds=int(doc.get("unlearning_rounds", 0)),
                recovery_rounds=int(doc.get("recovery_rounds", 0)),
                stopped_by=str(doc.get("stopped_by", "")),
                client_gradient_evaluations=int(doc.get("client_gradient_evaluations", 0)),
                client_progress=_floats(doc.get("client_progress", {})),
                evidence=Evidence.of(_floats(doc.get("evidence", {}))),
                reference=str(doc.get("reference", "")),
                verified_by=Verifier(doc.get("verified_by", Verifier.NODE)),
                initiated_by=str(doc.get("initiated_by", "")),
                verdict=str(doc.get("verdict", "")),
            )
        except (TypeError, ValueError, KeyError, InvalidPayload) as exc:
            raise CorruptState(f"stored receipt is unreadable: {exc!r}") from None


def _floats(value: object) -> dict[str, float]:
    """A stored mapping of numbers; stored NaNs (older nodes sent some) read as unmeasured."""
    if not isinstance(value, dict):
        raise TypeError(f"a mapping of numbers expected, got {value!r}")
    out = {str(k): float(v) for k, v in value.items()}
    return {k: v for k, v in out.items() if math.isfinite(v)}
