"""The L2 bound on model updates: clients clip to it, the server refuses what exceeds it.

Under secure aggregation the server cannot inspect one member's update, only the sum, so the
bound is what limits a malicious member. It works because honest inputs respect it: every
client clips its own update to norm C before weighting, so the weighted mean of the honest
updates has norm at most C (the triangle inequality), and the server may refuse any aggregate
above C without ever refusing an honest round. A forgetting client's dummy gradient is a second
contribution of up to C on top of the others' mean, so a round that carries a forget step is
allowed 2C. What a member can still do is move the model by at most that much per round.

The default, 30, sits well above every honest update measured on the built-in tasks (at most
16.5, the first round of the cnn on mnist5k), so it never changes how they train.
"""

from __future__ import annotations

import math

import numpy as np

from forsaken.common.errors import InvalidPayload

DEFAULT_MAX_UPDATE_NORM = 30.0
# Float32 rounding in averaging and applying; secure rounds add their quantization slack.
RELATIVE_TOLERANCE = 1e-3


def l2_norm(vector: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(vector, dtype=np.float64)))


def clip_to_norm(vector: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """(`vector` scaled down to L2 norm `bound` if it is longer, its norm before); 0: no bound."""
    norm = l2_norm(vector)
    if bound <= 0 or norm <= bound:
        return vector, norm
    return (vector * (bound / norm)).astype(vector.dtype, copy=False), norm


def aggregate_limit(bound: float, *, forget_round: bool, slack: float = 0.0) -> float:
    """The largest aggregate norm an honest round can produce: C, or 2C with a forget step."""
    if bound <= 0:
        return math.inf
    return bound * (2.0 if forget_round else 1.0) * (1.0 + RELATIVE_TOLERANCE) + slack


def check_aggregate(
    delta: np.ndarray, bound: float, *, forget_round: bool, slack: float = 0.0
) -> float:
    """The aggregate's norm, or `InvalidPayload` saying by how much it exceeds the bound."""
    norm = l2_norm(delta)
    limit = aggregate_limit(bound, forget_round=forget_round, slack=slack)
    if not norm <= limit:  # NaN fails too
        kind = "a round with a forget step" if forget_round else "a round"
        raise InvalidPayload(
            f"aggregate update norm {norm:.4g} exceeds {limit:.4g}, the most {kind} of honest "
            f"members clipped to --max-update-norm {bound:g} can produce"
        )
    return norm
