"""What an update must pass before it joins a round: its shape, its claims and its norm.

Plain functions over the round's data; the coordinator calls them and holds what passes. A
check that pins the fault on the sender raises `MemberFault` (it counts against the node); one
that may be a stale or confused honest client raises the ordinary domain errors.
"""

from __future__ import annotations

import math

import numpy as np

from forsaken.common.errors import InvalidPayload, MemberFault, StaleRequest
from forsaken.common.tensors import TensorSpec, from_bytes, require_finite
from forsaken.common.update_bound import RELATIVE_TOLERANCE, l2_norm
from forsaken.server.rounds import OpenRound, Submission, masked_input_spec


def check_tensors(
    rnd: OpenRound, tensors: tuple[TensorSpec, ...], model: tuple[TensorSpec, ...]
) -> None:
    """The tensors an upload for this round must carry (checked before its bytes are read)."""
    if rnd.secure is None:
        if tuple(tensors) != model:
            raise InvalidPayload("update tensors do not match the model's names, shapes or dtype")
        return
    expected = (masked_input_spec(model),)
    if tuple(tensors) != expected:
        raise InvalidPayload(
            f"a secure round takes one uint32 masked vector of {expected[0].numel} entries"
        )


def check_base(rnd: OpenRound, sub: Submission) -> None:
    if sub.base_model_sha256 != rnd.base_sha:
        raise StaleRequest("update was computed from a different model than this round's")


def plain_update(
    node_id: str,
    rnd: OpenRound,
    sub: Submission,
    model: tuple[TensorSpec, ...],
    declared: int,
    bound: float,
) -> np.ndarray:
    """A plaintext update, decoded and bounded; `declared` is the most the node may report.

    A forget step is scaled by W / w to survive averaging, so for the forgetting node the bound
    applies to what it adds to the mean, w / W times its upload.
    """
    check_tensors(rnd, sub.tensors, model)
    if sub.num_samples < 0:
        raise InvalidPayload(f"num_samples must be >= 0, got {sub.num_samples}")
    if sub.num_samples > declared:
        raise MemberFault(
            node_id, f"node {node_id} reports {sub.num_samples} samples; it declared {declared}"
        )
    bad = [k for k, v in sub.metrics.items() if not math.isfinite(v)]
    if bad:
        raise InvalidPayload(f"metrics {sorted(bad)} are NaN or Inf")
    update = from_bytes(sub.payload, sub.tensors)
    require_finite(update)
    forgetting = node_id == rnd.forget_node
    share = sub.num_samples / max(1, sum(rnd.weights.values())) if forgetting else 1.0
    norm = l2_norm(update) * share
    if bound and norm > bound * (1 + RELATIVE_TOLERANCE):
        what = "forget step adds" if forgetting else "update has"
        raise MemberFault(
            node_id, f"node {node_id}'s {what} norm {norm:.4g}, over --max-update-norm {bound:g}"
        )
    return update
