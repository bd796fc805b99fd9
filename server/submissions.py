"""What a node sends into the open round: which round and task it may send for, and taking
a plaintext update or a secure-aggregation message into that round.

Plain functions over the open round; the coordinator calls them under the runtime's lock. A
fault the sender can be blamed for counts against it in the registry before it is raised.
"""

from __future__ import annotations

from forsaken.common.errors import (
    DuplicateRequest,
    MemberFault,
    PermissionDenied,
    StaleRequest,
    UnknownEntity,
    WrongStage,
)
from forsaken.common.secagg.messages import MaskedInput
from forsaken.common.tensors import TensorSpec, from_bytes
from forsaken.common.types import TrainSettings
from forsaken.server import update_checks
from forsaken.server.registry import ClientRegistry
from forsaken.server.rounds import Accepted, OpenRound, Submission, SubmitOutcome
from forsaken.server.secure_round import ClientStageMessage


def open_round_for(
    rnd: OpenRound | None, completed: int, node_id: str, round_: int, task_id: str
) -> OpenRound:
    """The open round, if the node may send for `round_` under `task_id`; else why not."""
    if rnd is None or round_ != rnd.number:
        if round_ > completed + 1 or round_ < 1:
            raise UnknownEntity(f"round {round_} does not exist")
        raise StaleRequest(f"round {round_} is not open for updates")
    if node_id not in rnd.selected:
        raise PermissionDenied(f"node {node_id} was not selected for round {rnd.number}")
    if task_id != rnd.task_id(node_id):
        raise StaleRequest(f"task {task_id!r} is not this node's open task")
    return rnd


def take_update(
    rnd: OpenRound,
    node_id: str,
    sub: Submission,
    model: tuple[TensorSpec, ...],
    registry: ClientRegistry,
    train: TrainSettings,
    now_ms: int,
) -> SubmitOutcome:
    """Validate and hold one node's update (or, in a secure round, its masked input)."""
    try:
        if rnd.secure is not None:
            update_checks.check_base(rnd, sub)
            update_checks.check_tensors(rnd, sub.tensors, model)
            masked = MaskedInput(from_bytes(sub.payload, sub.tensors))
            return SubmitOutcome(True, rnd.secure.receive(node_id, sub.request_id, masked))
        held = rnd.accepted.get(node_id)
        if held is not None:
            if held.request_id == sub.request_id:
                return SubmitOutcome(accepted=True, duplicate=True)
            raise DuplicateRequest(
                f"node {node_id} already pushed an update for round {rnd.number}"
            )
        update_checks.check_base(rnd, sub)
        declared = max(rnd.weights.get(node_id, 0), registry.samples(node_id, 0))
        update = update_checks.plain_update(
            node_id, rnd, sub, model, declared, train.max_update_norm
        )
    except MemberFault as fault:
        registry.fault(fault, rnd.number, now_ms)
        raise
    rnd.accepted[node_id] = Accepted(sub.request_id, sub.num_samples, dict(sub.metrics), update)
    return SubmitOutcome(accepted=True, duplicate=False)


def take_secagg(
    rnd: OpenRound,
    node_id: str,
    request_id: str,
    message: ClientStageMessage,
    registry: ClientRegistry,
    now_ms: int,
) -> SubmitOutcome:
    """A secure-aggregation stage message (keys, shares, signatures, unmask shares)."""
    if rnd.secure is None:
        raise WrongStage("this round uses plaintext aggregation")
    try:
        duplicate = rnd.secure.receive(node_id, request_id, message)
    except MemberFault as fault:
        registry.fault(fault, rnd.number, now_ms)
        raise
    return SubmitOutcome(accepted=True, duplicate=duplicate)
