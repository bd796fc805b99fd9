"""Plain FedAvg arithmetic: the sample-weighted mean of updates, and applying it.

The secure-aggregation path computes the same mean from masked sums; this module is the
plaintext reference it is tested against, and what the in-process simulation uses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from forsaken.common.errors import InvalidPayload
from forsaken.common.tensors import require_finite


def weighted_average(updates: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
    """Mean of the update vectors weighted by their sample counts, as float32.

    Floating-point addition is not associative, so the sum runs in float64 in an order fixed by
    each update's content digest: any permutation of the same inputs gives identical bits.
    """
    if not updates:
        raise InvalidPayload("cannot average an empty list of updates")
    shape = np.shape(updates[0][0])
    keyed: list[tuple[bytes, int, np.ndarray]] = []
    for position, (vector, count) in enumerate(updates):
        vector = np.asarray(vector)
        if vector.ndim != 1 or vector.shape != shape:
            raise InvalidPayload(
                f"update {position} has shape {vector.shape}, expected 1-D {shape}"
            )
        if isinstance(count, bool) or int(count) != count or count < 1:
            raise InvalidPayload(f"update {position} has sample count {count!r}; need >= 1")
        require_finite(vector, f"update {position}")
        vector = vector.astype(np.float32, copy=False)
        digest = hashlib.sha256(vector.tobytes() + int(count).to_bytes(8, "little")).digest()
        keyed.append((digest, int(count), vector))
    keyed.sort(key=lambda item: item[0])
    total = np.zeros(shape, dtype=np.float64)
    weight = 0
    for _, count, vector in keyed:
        total += count * vector.astype(np.float64)
        weight += count
    return (total / weight).astype(np.float32)


def apply_update(global_vec: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """The next global model: `global_vec + delta`, as a new float32 vector."""
    if global_vec.ndim != 1 or global_vec.shape != delta.shape:
        raise InvalidPayload(
            f"update of shape {delta.shape} does not fit the global model of {global_vec.shape}"
        )
    require_finite(delta, "aggregated update")
    return global_vec.astype(np.float32) + delta.astype(np.float32, copy=False)
