"""The in-process FedAvg runner: accuracy, determinism, and that it is the real code path."""

from __future__ import annotations

import numpy as np
import pytest

from forsaken.common.datasets import load_dataset
from forsaken.common.errors import ConfigError
from forsaken.common.fedavg import apply_update, weighted_average
from forsaken.common.models import build_model
from forsaken.common.partition import client_split
from forsaken.common.simulation import client_round_seed, run_fedavg
from forsaken.common.tensors import flatten
from forsaken.common.training import TrainConfig, load_vector, train_local


def test_client_round_seeds_are_stable_distinct_and_in_range() -> None:
    seeds = {
        (s, c, r): client_round_seed(s, c, r)
        for s in range(4)
        for c in range(6)
        for r in range(1, 11)
    }
    assert len(set(seeds.values())) == len(seeds)
    assert all(0 <= v < 2**63 for v in seeds.values())
    assert client_round_seed(1, 2, 3) == seeds[(1, 2, 3)]


def test_digits_reaches_the_tuned_accuracy() -> None:
    result = run_fedavg(load_dataset("digits"), clients=3, rounds=10, seed=0)
    assert result.architecture == "mlp"
    assert len(result.test_accuracy) == len(result.test_loss) == 10
    assert result.test_accuracy[-1] >= 0.93
    assert result.test_loss[-1] < result.test_loss[0]


def test_mnist5k_reaches_the_tuned_accuracy() -> None:
    # The default demo's setting: 5 clients, 20 rounds, default config and architecture.
    result = run_fedavg(load_dataset("mnist5k"), clients=5, rounds=20, seed=1)
    assert result.test_accuracy[-1] >= 0.92


def test_one_round_equals_the_client_and_server_steps_done_by_hand() -> None:
    ds = load_dataset("digits")
    cfg = TrainConfig(local_epochs=1)
    model = build_model("mlp", ds.input_shape, ds.num_classes, seed=7)
    start = flatten(model.state_dict())
    updates = []
    for index in range(3):
        data = client_split(ds, index, 3, "dirichlet", 0.5, seed=7)
        load_vector(model, start)
        result = train_local(model, data.x_train, data.y_train, cfg, client_round_seed(7, index, 1))
        updates.append((result.delta, result.num_samples))
    by_hand = apply_update(start, weighted_average(updates))

    sim = run_fedavg(ds, 3, 1, "dirichlet", 0.5, seed=7, train_cfg=cfg, architecture="mlp")
    assert sim.initial_vector.tobytes() == start.tobytes()
    assert sim.final_vector.tobytes() == by_hand.tobytes()


def test_same_seed_same_model_other_seed_other_model() -> None:
    ds = load_dataset("digits")
    cfg = TrainConfig(local_epochs=1)
    a = run_fedavg(ds, 2, 2, seed=3, train_cfg=cfg)
    b = run_fedavg(ds, 2, 2, seed=3, train_cfg=cfg)
    c = run_fedavg(ds, 2, 2, seed=4, train_cfg=cfg)
    assert a.final_vector.tobytes() == b.final_vector.tobytes()
    assert a.test_accuracy == b.test_accuracy
    assert a.final_vector.tobytes() != c.final_vector.tobytes()


def test_forgotten_samples_are_never_trained_on() -> None:
    ds = load_dataset("digits")
    cfg = TrainConfig(local_epochs=1)
    gone = client_split(ds, 0, 3, seed=5)
    full = run_fedavg(ds, 3, 2, seed=5, train_cfg=cfg)
    some = run_fedavg(ds, 3, 2, seed=5, train_cfg=cfg, forget_ids=gone.ids_train[:10].tolist())
    none = run_fedavg(ds, 3, 2, seed=5, train_cfg=cfg, forget_ids=set(gone.ids_train.tolist()))
    assert full.gradient_evaluations - some.gradient_evaluations == 10 * 2
    assert full.gradient_evaluations - none.gradient_evaluations == len(gone.ids_train) * 2
    # Held-out ids are not trained on anyway, so forgetting them changes nothing.
    held = run_fedavg(ds, 3, 2, seed=5, train_cfg=cfg, forget_ids=gone.ids_held_out.tolist())
    assert held.final_vector.tobytes() == full.final_vector.tobytes()
    assert some.final_vector.tobytes() != full.final_vector.tobytes()


def test_forgetting_everything_or_zero_rounds_is_a_config_error() -> None:
    ds = load_dataset("digits")
    with pytest.raises(ConfigError, match="no client with training data"):
        run_fedavg(ds, 2, 1, forget_ids=ds.ids_train.tolist())
    with pytest.raises(ConfigError, match="rounds"):
        run_fedavg(ds, 2, 0)


def test_result_accounts_for_the_work_done() -> None:
    ds = load_dataset("digits")
    result = run_fedavg(ds, 2, 3, seed=0, train_cfg=TrainConfig(local_epochs=2))
    trained = sum(len(client_split(ds, i, 2, seed=0).y_train) for i in range(2))
    assert result.gradient_evaluations == trained * 2 * 3
    assert result.train_seconds > 0
    assert np.isfinite(result.final_vector).all()
