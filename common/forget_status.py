"""A forget request as the server shows it to its node, an owner or an operator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.forget_receipt import Receipt
from forsaken.common.forget_states import RequestState


@dataclass(frozen=True, slots=True)
class ForgetStatus:
    forget_id: str  # empty: the server has not acknowledged the request yet
    node_id: str
    method: ForgetMethod | None  # None: the server's default, before the server said which
    state: RequestState
    reason: str = ""
    created_ms: int = 0
    updated_ms: int = 0
    num_samples: int = 0  # sample ids named; 0: all of the node's data
    initiated_by: str = ""  # empty: the node itself; "operator:<name>"
    receipt: Receipt | None = None  # once completed

    def as_dict(self) -> dict[str, Any]:
        """For `--json` output: plain values, the receipt as the ledger stores it."""
        return {
            "forget_id": self.forget_id,
            "node_id": self.node_id,
            "method": "" if self.method is None else self.method.value,
            "state": self.state.value,
            "reason": self.reason,
            "created_unix_ms": self.created_ms,
            "updated_unix_ms": self.updated_ms,
            "num_samples": self.num_samples,
            "initiated_by": self.initiated_by,
            "receipt": None if self.receipt is None else self.receipt.as_dict(),
        }
