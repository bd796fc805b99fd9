"""The work both systems do, from forsaken's own code: data, partitions, model, training."""

from __future__ import annotations

import numpy as np
import torch

from forsaken.common.datasets import Dataset, load_dataset
from forsaken.common.models import build_model, default_architecture
from forsaken.common.partition import client_split
from forsaken.common.simulation import client_round_seed
from forsaken.common.tensors import flatten
from forsaken.common.training import TrainConfig, evaluate, load_vector, train_local

LIGHT_SAMPLES = 100  # forsaken's light clients report this many samples
LIGHT_DELTA = 1e-3  # scale of the light clients' random update, as in `forsaken bench round`


def model_for(dataset: Dataset, seed: int) -> torch.nn.Module:
    arch = default_architecture(dataset.name)
    return build_model(arch, dataset.input_shape, dataset.num_classes, seed)


def initial_vector(dataset_name: str, seed: int) -> np.ndarray:
    """The global model at round 0, as forsaken's server builds it (a flat float32 vector)."""
    return flatten(model_for(load_dataset(dataset_name), seed).state_dict())


def light_update(weights: np.ndarray, partition: int, server_round: int) -> np.ndarray:
    """No training: the received weights plus a small random delta."""
    rng = np.random.default_rng([partition, server_round])
    delta = rng.random(weights.size, dtype=np.float32) * np.float32(LIGHT_DELTA)
    return (weights + delta).astype(np.float32, copy=False)


def train_update(
    weights: np.ndarray,
    *,
    dataset_name: str,
    partition: int,
    num_partitions: int,
    seed: int,
    held_out_fraction: float,
    server_round: int,
    cfg: TrainConfig,
) -> tuple[np.ndarray, int]:
    """Local training exactly as a forsaken client does it: same shard, same seeds."""
    torch.set_num_threads(1)
    dataset = load_dataset(dataset_name)
    data = client_split(
        dataset, partition, num_partitions, seed=seed, held_out_fraction=held_out_fraction
    )
    model = model_for(dataset, seed)
    load_vector(model, weights)
    round_seed = client_round_seed(seed, partition, server_round)
    result = train_local(model, data.x_train, data.y_train, cfg, round_seed)
    return (weights + result.delta).astype(np.float32, copy=False), result.num_samples


def test_accuracy(weights: np.ndarray, dataset_name: str, seed: int) -> float:
    """Accuracy on the fixed test split, which forsaken's server evaluates on too."""
    torch.set_num_threads(1)
    dataset = load_dataset(dataset_name)
    model = model_for(dataset, seed)
    load_vector(model, weights)
    return float(evaluate(model, dataset.x_test, dataset.y_test).accuracy)
