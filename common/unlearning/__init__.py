"""Unlearning methods behind one contract, chosen by name (docs/unlearning.md).

`make_engine(name, spec)` returns the client-side forget engine for a method, or None for
`retrain`, which is not a client computation: the server handles it by rolling back to the last
checkpoint before the client first contributed and retraining without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from forsaken.common.errors import ConfigError
from forsaken.common.types import ModelSpec
from forsaken.common.unlearning.engine import (
    FinetuneEngine,
    ForgetEngine,
    ForgetStep,
    ForsakenConfig,
    ForsakenEngine,
)
from forsaken.common.unlearning.pga import PGAConfig, PGAEngine

RETRAIN = "retrain"

# Each factory takes the model spec and the method's own keyword options.
METHODS: dict[str, Callable[..., ForgetEngine] | None] = {
    "forsaken": ForsakenEngine,
    "pga": PGAEngine,
    "finetune": FinetuneEngine,
    RETRAIN: None,  # a marker: the server rolls back and retrains
}


def make_engine(name: str, spec: ModelSpec, **options: Any) -> ForgetEngine | None:
    """The forget engine for method `name`, or None for the server-side `retrain`."""
    if name not in METHODS:
        raise ConfigError(f"unknown unlearning method {name!r}; expected one of {sorted(METHODS)}")
    factory = METHODS[name]
    return None if factory is None else factory(spec, **options)


__all__ = [
    "METHODS",
    "RETRAIN",
    "FinetuneEngine",
    "ForgetEngine",
    "ForgetStep",
    "ForsakenConfig",
    "ForsakenEngine",
    "PGAConfig",
    "PGAEngine",
    "make_engine",
]
