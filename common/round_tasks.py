"""What the server asks a node to do next: one typed union, used on both sides of the wire.

The server's coordinator returns these from a poll; the RPC edge encodes them with
`wire_round_tasks`, and the client decodes the same types, so there is one definition of a task.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.secagg.messages import ServerMessage
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.types import TrainSettings


@dataclass(frozen=True, slots=True)
class ForgetOrder:
    """The node is to run its forget engine instead of training this round."""

    forget_id: str
    method: ForgetMethod
    sample_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RoundTask:
    """What every task of a training round carries: which round, on which model, how to train,
    and the FedAvg weights the server fixed when the round began.

    `weight` is this node's weight, `total_weight` the sum over the round's selected nodes: an
    update lands in the mean with weight / total_weight, which is what a forget step scales
    against. Only subclasses are handed out, so `isinstance` tells plain from secure rounds.
    """

    task_id: str
    round: int
    model_sha256: str
    settings: TrainSettings
    deadline_ms: int
    seed: int
    weight: int = field(default=0, kw_only=True)
    total_weight: int = field(default=0, kw_only=True)
    forget: ForgetOrder | None = field(default=None, kw_only=True)


@dataclass(frozen=True, slots=True)
class TrainTask(RoundTask):
    """A plain round: train (or run the forget engine) and push the update unmasked."""


@dataclass(frozen=True, slots=True)
class SecAggTask(RoundTask):
    """A secure-aggregation stage; `message` is a SetupInfo for the round's first stage."""

    message: ServerMessage | SetupInfo


@dataclass(frozen=True, slots=True)
class VerifyTask:
    """Measure forgetting evidence on a model and report it."""

    forget_id: str
    model_sha256: str
    round: int = 0


@dataclass(frozen=True, slots=True)
class WaitTask:
    retry_after_s: float = 0.0


@dataclass(frozen=True, slots=True)
class StopTask:
    """The federation has finished."""


AnyTask = TrainTask | SecAggTask | VerifyTask | WaitTask | StopTask
