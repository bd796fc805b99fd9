"""What the forget lifecycle knows of one request: its facts, its stage and its progress.

`ForgetProgress` is the durable part a round or a report changes. The ledger stores it as the
JSON text `progress_json` under the keys written since the first version, so a restarted
server, or a newer one, resumes a request exactly where an older one left it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from forsaken.common.errors import CorruptState, InvalidPayload
from forsaken.common.forget_methods import METHOD_NAMES, ForgetMethod
from forsaken.server.ledger import ForgetRecord, ForgetState

_NO_METRICS: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ForgetPolicy:
    default_method: str = ForgetMethod.FORSAKEN  # a ForgetMethod's value, checked by validate
    recovery_rounds: int = 2
    max_unlearning_rounds: int = 10
    node_timeout_s: float = 600.0  # a needed node silent this long fails the request

    def validate(self) -> None:
        if self.default_method not in METHOD_NAMES:
            raise InvalidPayload(f"default forget method must be one of {METHOD_NAMES}")
        if self.recovery_rounds < 0 or self.max_unlearning_rounds < 1:
            raise InvalidPayload("recovery_rounds must be >= 0, max_unlearning_rounds >= 1")


@dataclass(frozen=True, slots=True)
class ForgetProgress:
    """How far a started request has come; every count starts at zero."""

    model_before: str = ""  # the global model when the request started
    started_round: int = 0
    unlearning_rounds: int = 0
    recovery_rounds: int = 0
    client: Mapping[str, float] = field(default_factory=lambda: _NO_METRICS)  # last report
    client_gradient_evaluations: int = 0  # summed over all of the node's reports
    client_done: bool = False  # the node's membership oracle says the data looks unseen
    rounds_missed: int = 0  # unlearning rounds that went on without a needed node
    stopped_by: str = ""  # what ended unlearning ("oracle", "round cap"); empty: the method
    rollback_model: str = ""  # the model the federation continues from, if it was replaced
    rollback_to_round: int | None = None  # retrain: the round of that model
    retrain_rounds_left: int | None = None  # retrain: rounds still to retrain
    verifying_since_ms: int | None = None

    @classmethod
    def from_json(cls, text: str) -> ForgetProgress:
        """The progress stored as `text`; missing keys are counts not yet started."""
        try:
            doc = json.loads(text or "{}")
            if not isinstance(doc, dict):
                raise TypeError(f"a JSON object expected, got {type(doc).__name__}")
            return cls(
                model_before=str(doc.get("model_before", "")),
                started_round=int(doc.get("started_round", 0)),
                unlearning_rounds=int(doc.get("unlearning_rounds", 0)),
                recovery_rounds=int(doc.get("recovery_rounds", 0)),
                client=MappingProxyType(
                    {str(k): float(v) for k, v in dict(doc.get("client", {})).items()}
                ),
                client_gradient_evaluations=int(doc.get("client_gradient_evaluations", 0)),
                client_done=bool(doc.get("client_done", False)),
                rounds_missed=int(doc.get("rounds_missed", 0)),
                stopped_by=str(doc.get("stopped_by", "")),
                rollback_model=str(doc.get("rollback_model", "")),
                rollback_to_round=_optional_int(doc.get("rollback_to_round")),
                retrain_rounds_left=_optional_int(doc.get("retrain_rounds_left")),
                verifying_since_ms=_optional_int(doc.get("verifying_since_ms")),
            )
        except (TypeError, ValueError) as exc:
            raise CorruptState(f"forget progress is unreadable: {exc}") from None

    def to_json(self) -> str:
        """The stored form: the counts always, the rest only once set, as before."""
        doc: dict[str, object] = {
            "model_before": self.model_before,
            "started_round": self.started_round,
            "unlearning_rounds": self.unlearning_rounds,
            "recovery_rounds": self.recovery_rounds,
            "client": dict(self.client),
        }
        optional: dict[str, object] = {
            "client_gradient_evaluations": self.client_gradient_evaluations or None,
            "client_done": self.client_done or None,
            "rounds_missed": self.rounds_missed or None,
            "stopped_by": self.stopped_by or None,
            "rollback_model": self.rollback_model or None,
            "rollback_to_round": self.rollback_to_round,
            "retrain_rounds_left": self.retrain_rounds_left,
            "verifying_since_ms": self.verifying_since_ms,
        }
        doc.update({k: v for k, v in optional.items() if v is not None})
        return json.dumps(doc)


def _optional_int(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"an integer expected, got {value!r}")
    return int(value)


@dataclass(frozen=True, slots=True)
class ForgetCase:
    """One request as the lifecycle sees it: what never changes, then what does."""

    forget_id: str
    node_id: str
    method: ForgetMethod
    samples: int  # how many sample ids it names; 0: all of the node's data
    created_ms: int
    initiated_by: str  # empty: the node itself; "operator:<name>": the server verifies alone
    stage: ForgetState
    progress: ForgetProgress

    @classmethod
    def of(cls, rec: ForgetRecord) -> ForgetCase:
        return cls(
            forget_id=rec.forget_id,
            node_id=rec.node_id,
            method=ForgetMethod(rec.method),
            samples=len(rec.sample_ids),
            created_ms=rec.created_ms,
            initiated_by=rec.initiated_by,
            stage=rec.state,
            progress=ForgetProgress.from_json(rec.progress_json),
        )

    @property
    def whole_node(self) -> bool:
        """It forgets all of the node's data, which leaves the node nothing to train on."""
        return self.samples == 0

    @property
    def by_operator(self) -> bool:
        return bool(self.initiated_by)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A completed round's model, as `retrain` rolls back to it."""

    round: int
    model_sha256: str
