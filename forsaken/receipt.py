"""A forget receipt as a typed object, decoded from the JSON the server's ledger stores (and the
Admin and Owner APIs return as `receipt_json`).

Only the fields the server writes (server/forget_receipts.py); every one is checked for its
type, so a receipt from an older or a foreign server is an error naming the field rather than a
wrong number further on. `raw` keeps the document itself, for what a newer server may add.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from forsaken.common.errors import ForsakenError


class ReceiptError(ForsakenError):
    """A receipt that is not one: not JSON, a field missing, or of the wrong type."""


@dataclass(frozen=True, slots=True)
class Receipt:
    forget_id: str
    node_id: str
    method: str  # the forget method that ran (forsaken, pga, fedquit, retrain, ...)
    samples: int | None  # how many sample ids the request named; None: all of the node's data
    requested_ms: int  # Unix milliseconds
    completed_ms: int
    model_sha256_before: str | None  # the global model when unlearning started
    model_sha256_after: str  # the model this receipt vouches for
    unlearning_rounds: int
    recovery_rounds: int
    stopped_by: str  # what ended unlearning: the method itself, "oracle", "round cap", ...
    client_progress: Mapping[str, float]  # the node's last forget-step report
    client_gradient_evaluations: int | None  # summed over the node's reports; None: not said
    evidence: Mapping[str, float]  # what the node (or the server) measured on the model after
    reference: str  # what the evidence shows and what it cannot
    verdict: str  # one paragraph computed from the fields above
    verified_by: str = "node"  # "server" for an operator's request the node could not check
    initiated_by: str = ""  # "": the node itself; "operator:<name>" for an operator's forget
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def forgot_all(self) -> bool:
        return self.samples is None

    @classmethod
    def from_json(cls, text: str) -> Receipt:
        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise ReceiptError(f"a receipt must be JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ReceiptError("a receipt must be a JSON object")
        return cls.from_dict(doc)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Receipt:
        samples = doc.get("samples")
        if samples != "all" and not _is_int(samples):
            raise ReceiptError(f"receipt field 'samples' must be 'all' or a count, got {samples!r}")
        evals = doc.get("client_gradient_evaluations")
        if evals is not None and not _is_int(evals):
            raise ReceiptError("receipt field 'client_gradient_evaluations' must be an integer")
        return cls(
            forget_id=_str(doc, "forget_id"),
            node_id=_str(doc, "node_id"),
            method=_str(doc, "method"),
            samples=samples if _is_int(samples) else None,
            requested_ms=_int(doc, "requested_ms"),
            completed_ms=_int(doc, "completed_ms"),
            model_sha256_before=_str(doc, "model_sha256_before", optional=True) or None,
            model_sha256_after=_str(doc, "model_sha256_after"),
            unlearning_rounds=_int(doc, "unlearning_rounds"),
            recovery_rounds=_int(doc, "recovery_rounds"),
            stopped_by=_str(doc, "stopped_by"),
            client_progress=_numbers(doc, "client_progress"),
            client_gradient_evaluations=evals,
            evidence=_numbers(doc, "evidence"),
            reference=_str(doc, "reference"),
            verdict=_str(doc, "verdict"),
            verified_by=_str(doc, "verified_by", optional=True) or "node",
            initiated_by=_str(doc, "initiated_by", optional=True) or "",
            raw=dict(doc),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str(doc: Mapping[str, Any], key: str, *, optional: bool = False) -> str:
    value = doc.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise ReceiptError(f"receipt field {key!r} must be a string, got {value!r}")
    return value


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key)
    if not _is_int(value):
        raise ReceiptError(f"receipt field {key!r} must be an integer, got {value!r}")
    assert isinstance(value, int)
    return value


def _numbers(doc: Mapping[str, Any], key: str) -> dict[str, float]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ReceiptError(f"receipt field {key!r} must be an object, got {value!r}")
    out: dict[str, float] = {}
    for name, number in value.items():
        if isinstance(number, bool) or (
            not isinstance(number, (int, float)) and number is not None
        ):
            raise ReceiptError(f"receipt field {key}.{name} must be a number, got {number!r}")
        out[str(name)] = float("nan") if number is None else float(number)
    return out
