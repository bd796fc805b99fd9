"""NoT (Khalil et al., "NoT: Federated Unlearning via Weight Negation", CVPR 2025,
arXiv:2503.05657): the server negates selected layers of the global model, then the remaining
clients fine-tune it in ordinary rounds.

Negation keeps every weight's magnitude, so the network's structure survives, but breaks the
co-adaptation between the negated layer and the rest: the fine-tuning rounds re-learn it from the
remaining clients' data only. It needs no history and no client computation, so it works under
secure aggregation; the forgetting client just stops training. The server applies it to the
flat global vector (the tensors-codec layout) by parameter name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from forsaken.common.errors import ConfigError
from forsaken.common.tensors import TensorSpec

# How many parametrised layers (weight plus bias), from the input, to negate by default. Two,
# not one: on inputs that are never negative (pixels), a ReLU network whose first layer alone
# is negated has every first-layer unit switched off for nearly every input, and fine-tuning
# cannot start (measured: test accuracy 0.10 after two rounds on digits, and on mnist5k); with
# the second layer negated as well the network stays trainable (0.96 after two rounds).
DEFAULT_LAYERS = 2


def layers_to_negate(names: Sequence[str], layers: int = DEFAULT_LAYERS) -> tuple[str, ...]:
    """The parameter names of the first `layers` layers, in codec order (a layer is the
    parameters sharing a module prefix, e.g. `1.weight` and `1.bias`)."""
    if layers < 1:
        raise ConfigError(f"NoT needs at least one layer to negate, got {layers}")
    prefixes: list[str] = []
    for name in names:
        prefix = name.rsplit(".", 1)[0]
        if prefix not in prefixes:
            prefixes.append(prefix)
    chosen = set(prefixes[:layers])
    return tuple(n for n in names if n.rsplit(".", 1)[0] in chosen)


def negate(
    vector: np.ndarray, specs: Sequence[TensorSpec], layers: int = DEFAULT_LAYERS
) -> np.ndarray:
    """A copy of the flat model `vector` with the first `layers` layers' parameters negated."""
    flat = np.asarray(vector, dtype=np.float32)
    total = sum(s.numel for s in specs)
    if flat.ndim != 1 or flat.size != total:
        raise ConfigError(f"model vector has {flat.size} entries, its tensors {total}")
    chosen = set(layers_to_negate([s.name for s in specs], layers))
    out = flat.copy()
    offset = 0
    for s in specs:
        if s.name in chosen:
            out[offset : offset + s.numel] *= -1
        offset += s.numel
    return out
