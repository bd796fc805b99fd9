"""Server-side model handling: the initial model and evaluation on the validation split.

This is the only server module that needs torch; the coordinator sees flat vectors. The model
and the validation data come from the federation's task (`forsaken.common.task`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from forsaken.common.datasets import Dataset
from forsaken.common.task import DataRequest, LoadedTask, Task, builtin_task, for_server
from forsaken.common.tensors import TensorSpec, flatten, specs_of
from forsaken.common.training import load_vector
from forsaken.common.types import ModelSpec
from forsaken.server.rounds import EvalResult


@dataclass
class ModelBench:
    task: LoadedTask
    dataset: Dataset  # its test split is the validation set
    seed: int
    can_evaluate: bool = True
    model: torch.nn.Module = field(init=False)

    def __post_init__(self) -> None:
        self.model = self.task.build_model(self.seed)

    @classmethod
    def for_task(cls, task: Task, request: DataRequest) -> ModelBench:
        torch.set_num_threads(1)  # the server shares the machine with its own RPC threads
        loaded, dataset = for_server(task, request)
        return cls(loaded, dataset, request.seed)

    @classmethod
    def for_dataset(cls, dataset: str, architecture: str, seed: int) -> ModelBench:
        return cls.for_task(builtin_task(dataset, architecture), DataRequest(seed=seed))

    @property
    def model_spec(self) -> ModelSpec:
        return self.task.spec

    @property
    def tensors(self) -> tuple[TensorSpec, ...]:
        return specs_of(self.model.state_dict())  # the wire layout: every entry as float32

    @property
    def structure(self) -> tuple[TensorSpec, ...]:
        return self.task.structure

    def initial_vector(self) -> np.ndarray:
        return flatten(self.task.build_model(self.seed).state_dict())

    def evaluate(self, vector: np.ndarray) -> EvalResult:
        load_vector(self.model, vector)
        result = self.task.evaluate(self.model, self.dataset.x_test, self.dataset.y_test)
        return EvalResult(accuracy=float(result.accuracy), loss=float(result.loss))


@dataclass
class SyntheticModel:
    """A model of exactly `params` float32 entries, for benchmarks of the round machinery."""

    params: int
    can_evaluate: bool = False
    structure: tuple[TensorSpec, ...] = ()  # Joins are not checked against it

    def __post_init__(self) -> None:
        self.model_spec = ModelSpec("synthetic", (self.params,), 1, "synthetic")
        self.tensors = (TensorSpec("weight", (self.params,), "float32"),)

    def initial_vector(self) -> np.ndarray:
        return np.zeros(self.params, dtype=np.float32)

    def evaluate(self, vector: np.ndarray) -> EvalResult | None:
        return None
