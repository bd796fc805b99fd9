"""Server-side model handling: the initial model and evaluation on the validation split.

This is the only server module that needs torch; the coordinator sees flat vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from forsaken.common.datasets import Dataset, load_dataset
from forsaken.common.models import build_model, default_architecture
from forsaken.common.tensors import TensorSpec, flatten, specs_of
from forsaken.common.training import evaluate, load_vector
from forsaken.common.types import ModelSpec
from forsaken.server.rounds import EvalResult


@dataclass
class ModelBench:
    model_spec: ModelSpec
    tensors: tuple[TensorSpec, ...]
    model: torch.nn.Module
    dataset: Dataset
    seed: int
    can_evaluate: bool = True

    @classmethod
    def for_dataset(cls, dataset: str, architecture: str, seed: int) -> ModelBench:
        torch.set_num_threads(1)  # the server shares the machine with its own RPC threads
        data = load_dataset(dataset)
        arch = architecture or default_architecture(data.name)
        model = build_model(arch, data.input_shape, data.num_classes, seed)
        spec = ModelSpec(arch, tuple(data.input_shape), int(data.num_classes), data.name)
        return cls(spec, specs_of(model.state_dict()), model, data, seed)

    def initial_vector(self) -> np.ndarray:
        fresh = build_model(
            self.model_spec.architecture,
            self.model_spec.input_shape,
            self.model_spec.num_classes,
            self.seed,
        )
        return flatten(fresh.state_dict())

    def evaluate(self, vector: np.ndarray) -> EvalResult:
        load_vector(self.model, vector)
        result = evaluate(self.model, self.dataset.x_test, self.dataset.y_test)
        return EvalResult(accuracy=float(result.accuracy), loss=float(result.loss))


@dataclass
class SyntheticModel:
    """A model of exactly `params` float32 entries, for benchmarks of the round machinery."""

    params: int
    can_evaluate: bool = False

    def __post_init__(self) -> None:
        self.model_spec = ModelSpec("synthetic", (self.params,), 1, "synthetic")
        self.tensors = (TensorSpec("weight", (self.params,), "float32"),)

    def initial_vector(self) -> np.ndarray:
        return np.zeros(self.params, dtype=np.float32)

    def evaluate(self, vector: np.ndarray) -> EvalResult | None:
        return None
