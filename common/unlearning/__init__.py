"""Unlearning methods behind one contract, chosen by name (docs/unlearning.md).

`make_engine(name, spec)` returns the client-side forget engine for a method, or None for the
methods that are not a client computation: `retrain` (the server rolls back to the last
checkpoint before the client first contributed and retrains without it) and `not` (the server
negates the first layers of the global model, then the remaining clients fine-tune it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forsaken.common.errors import ConfigError, InvalidPayload
from forsaken.common.forget_methods import METHOD_NAMES, ForgetMethod
from forsaken.common.types import ModelSpec
from forsaken.common.unlearning.engine import (
    FinetuneEngine,
    ForgetEngine,
    ForgetStep,
    ForsakenConfig,
    ForsakenEngine,
)
from forsaken.common.unlearning.fedquit import FedQuitConfig, FedQuitEngine
from forsaken.common.unlearning.pga import PGAConfig, PGAEngine

RETRAIN = ForgetMethod.RETRAIN
NEGATION = ForgetMethod.NEGATION

# Each factory takes the model spec and the method's own keyword options. `finetune` has an
# engine although the server runs it: the in-process reference runner (reference.py) uses it.
METHODS: dict[ForgetMethod, Callable[..., ForgetEngine] | None] = {
    ForgetMethod.FORSAKEN: ForsakenEngine,
    ForgetMethod.PGA: PGAEngine,
    ForgetMethod.FINETUNE: FinetuneEngine,
    ForgetMethod.FEDQUIT: FedQuitEngine,
    RETRAIN: None,  # a marker: the server rolls back and retrains
    NEGATION: None,  # a marker: the server negates layers, then the others fine-tune
}


assert set(METHODS) == set(ForgetMethod)
assert all(METHODS[m] is not None for m in ForgetMethod if m.computed_by_node)


def make_engine(name: str, spec: ModelSpec, **options: Any) -> ForgetEngine | None:
    """The forget engine for method `name`, or None for a server-side method."""
    try:
        method = ForgetMethod.parse(name)
    except InvalidPayload:
        raise ConfigError(
            f"unknown unlearning method {name!r}; expected one of {sorted(METHOD_NAMES)}"
        ) from None
    factory = METHODS[method]
    return None if factory is None else factory(spec, **options)


__all__ = [
    "METHODS",
    "METHOD_NAMES",
    "NEGATION",
    "RETRAIN",
    "FedQuitConfig",
    "FedQuitEngine",
    "FinetuneEngine",
    "ForgetEngine",
    "ForgetMethod",
    "ForgetStep",
    "ForsakenConfig",
    "ForsakenEngine",
    "PGAConfig",
    "PGAEngine",
    "make_engine",
]
