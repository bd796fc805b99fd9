"""In-process FedAvg: the real client and server code paths without processes or a network.

It calls exactly what the daemons call (`client_split`, `build_model`, `train_local`,
`weighted_average`, `apply_update`, `evaluate`) and derives per-client seeds with the same
`client_round_seed`, so a run here matches a plaintext federated run with the same seed. It
tunes defaults and produces retrain-from-scratch reference models for unlearning evaluation
(pass the forgotten sample ids as `forget_ids`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Collection
from dataclasses import dataclass, replace

import numpy as np

from forsaken.common.datasets import Dataset
from forsaken.common.errors import ConfigError
from forsaken.common.fedavg import apply_update, weighted_average
from forsaken.common.models import build_model, default_architecture
from forsaken.common.partition import ClientData, client_split
from forsaken.common.tensors import flatten
from forsaken.common.training import TrainConfig, evaluate, load_vector, train_local

_SEED_LABEL = "forsaken/local-train-seed/v1"


def client_round_seed(seed: int, client_index: int, round_number: int) -> int:
    """The `train_local` seed of one client in one round (rounds count from 1).

    A hash rather than arithmetic such as `seed * 1000 + client` so that distinct triples can
    never collide and neighbouring run seeds do not share any client's batch order.
    """
    message = f"{_SEED_LABEL}:{seed}:{client_index}:{round_number}".encode()
    return int.from_bytes(hashlib.sha256(message).digest()[:8], "little") >> 1  # 63 bits


@dataclass(frozen=True, slots=True, eq=False)
class SimulationResult:
    architecture: str
    test_accuracy: tuple[float, ...]  # after each round; index 0 is round 1
    test_loss: tuple[float, ...]
    initial_vector: np.ndarray  # the global model before round 1
    final_vector: np.ndarray  # the global model after the last round
    gradient_evaluations: int  # per-sample gradients over all clients and rounds
    train_seconds: float  # wall time inside train_local, summed over clients and rounds


def run_fedavg(
    dataset: Dataset,
    clients: int,
    rounds: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    train_cfg: TrainConfig | None = None,
    architecture: str | None = None,
    forget_ids: Collection[int] = (),
) -> SimulationResult:
    """Run `rounds` of FedAvg with every client taking part in every round.

    The initial global model is `build_model(..., seed=seed)`. Samples whose global id is in
    `forget_ids` are never trained on (a retrain-from-scratch reference); a client left with no
    data sits the rounds out.
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}")
    cfg = train_cfg or TrainConfig()
    arch = architecture or default_architecture(dataset.name)
    model = build_model(arch, dataset.input_shape, dataset.num_classes, seed)
    local = [
        _without(client_split(dataset, i, clients, scheme, alpha, seed), forget_ids)
        for i in range(clients)
    ]
    if not any(len(data.y_train) for data in local):
        raise ConfigError("forget_ids leave no client with training data")
    initial = flatten(model.state_dict())
    global_vec = initial
    accuracy: list[float] = []
    loss: list[float] = []
    grads, seconds = 0, 0.0
    for round_number in range(1, rounds + 1):
        updates: list[tuple[np.ndarray, int]] = []
        for index, data in enumerate(local):
            if len(data.y_train) == 0:
                continue
            load_vector(model, global_vec)
            started = time.perf_counter()
            result = train_local(
                model, data.x_train, data.y_train, cfg, client_round_seed(seed, index, round_number)
            )
            seconds += time.perf_counter() - started
            grads += result.gradient_evaluations
            updates.append((result.delta, result.num_samples))
        global_vec = apply_update(global_vec, weighted_average(updates))
        load_vector(model, global_vec)
        metrics = evaluate(model, dataset.x_test, dataset.y_test)
        accuracy.append(metrics.accuracy)
        loss.append(metrics.loss)
    return SimulationResult(
        architecture=arch,
        test_accuracy=tuple(accuracy),
        test_loss=tuple(loss),
        initial_vector=initial,
        final_vector=global_vec,
        gradient_evaluations=grads,
        train_seconds=seconds,
    )


def _without(data: ClientData, forget_ids: Collection[int]) -> ClientData:
    """`data` with the forgotten samples removed from its training slice."""
    if not forget_ids:
        return data
    keep = ~np.isin(data.ids_train, np.fromiter(forget_ids, dtype=np.int64))
    return replace(
        data, x_train=data.x_train[keep], y_train=data.y_train[keep], ids_train=data.ids_train[keep]
    )
