"""Local training, evaluation and loading parameter vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from forsaken.common.datasets import load_dataset
from forsaken.common.errors import ConfigError, InvalidPayload
from forsaken.common.models import build_model
from forsaken.common.tensors import flatten
from forsaken.common.training import TrainConfig, evaluate, load_vector, train_local


@pytest.fixture(scope="module")
def digits_subset() -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset("digits")
    return ds.x_train[:300], ds.y_train[:300]


def _fresh() -> nn.Module:
    return build_model("mlp", (1, 8, 8), 10, seed=1)


def test_training_reduces_loss_and_reports_its_work(digits_subset) -> None:
    x, y = digits_subset
    model = _fresh()
    before = evaluate(model, x, y)
    cfg = TrainConfig(local_epochs=5)
    result = train_local(model, x, y, cfg, seed=0)
    after = evaluate(model, x, y)
    assert after.loss < 0.2 * before.loss
    assert after.accuracy > 0.9
    assert result.num_samples == 300
    assert result.gradient_evaluations == 300 * 5
    assert 0 < result.mean_loss < before.loss  # averaged over the run, so between the two


def test_delta_is_new_minus_old_as_a_flat_float32_vector(digits_subset) -> None:
    x, y = digits_subset
    model = _fresh()
    old = flatten(model.state_dict())
    result = train_local(model, x, y, TrainConfig(local_epochs=1), seed=0)
    new = flatten(model.state_dict())
    assert result.delta.dtype == np.float32 and result.delta.shape == old.shape
    np.testing.assert_array_equal(result.delta, new - old)
    assert np.abs(result.delta).max() > 0


def test_same_seed_gives_a_bit_identical_update(digits_subset) -> None:
    x, y = digits_subset
    cfg = TrainConfig(local_epochs=1)
    a = train_local(_fresh(), x, y, cfg, seed=42)
    b = train_local(_fresh(), x, y, cfg, seed=42)
    c = train_local(_fresh(), x, y, cfg, seed=43)
    assert a.delta.tobytes() == b.delta.tobytes()
    assert a.mean_loss == b.mean_loss
    assert a.delta.tobytes() != c.delta.tobytes()  # the seed drives the batch order


def test_training_restores_the_deterministic_algorithms_setting(digits_subset) -> None:
    x, y = digits_subset
    assert not torch.are_deterministic_algorithms_enabled()
    train_local(_fresh(), x[:10], y[:10], TrainConfig(local_epochs=1), seed=0)
    assert not torch.are_deterministic_algorithms_enabled()


def test_mismatched_data_is_rejected() -> None:
    with pytest.raises(InvalidPayload, match="3 inputs and 2 labels"):
        train_local(_fresh(), np.zeros((3, 1, 8, 8)), np.zeros(2), TrainConfig(), seed=0)
    with pytest.raises(InvalidPayload):
        evaluate(_fresh(), np.zeros((0, 1, 8, 8)), np.zeros(0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"local_epochs": 0}, "at least 1"),
        ({"batch_size": 0}, "at least 1"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
    ],
)
def test_train_config_rejects_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


def test_evaluate_matches_a_hand_computation() -> None:
    # A model whose logits are its two inputs, so accuracy and loss can be worked out by hand.
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.eye(2))
    x = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]], dtype=np.float32)[:, None, None, :]
    y = np.array([0, 1, 1])
    result = evaluate(model, x, y)
    assert result.accuracy == pytest.approx(2 / 3)

    def nll(logits: list[float], label: int) -> float:
        return math.log(sum(math.exp(v) for v in logits)) - logits[label]

    expected = (nll([2, 0], 0) + nll([0, 1], 1) + nll([3, 0], 1)) / 3
    assert result.loss == pytest.approx(expected, rel=1e-5)


def test_load_vector_round_trips_and_copies() -> None:
    model = _fresh()
    vector = np.arange(flatten(model.state_dict()).size, dtype=np.float32) / 1e4
    load_vector(model, vector)
    np.testing.assert_array_equal(flatten(model.state_dict()), vector)
    vector[:] = 0  # the model must not alias the caller's buffer
    assert flatten(model.state_dict()).any()


def test_load_vector_rejects_a_wrong_size() -> None:
    with pytest.raises(InvalidPayload, match="does not fit"):
        load_vector(_fresh(), np.zeros(10, dtype=np.float32))
