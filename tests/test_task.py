"""The task API: binding checks, data checks, the built-in tasks, custom loss/fit/evaluate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from forsaken.common.errors import ConfigError, TaskFailed
from forsaken.common.models import build_model, register_architecture
from forsaken.common.task import (
    DataRequest,
    Examples,
    Task,
    builtin_task,
    for_client,
    for_server,
    majority_rate,
    split,
)
from forsaken.common.tensors import flatten
from forsaken.common.training import EvalResult, TrainConfig
from forsaken.common.types import ModelSpec

RNG = np.random.default_rng(0)
X = RNG.normal(size=(200, 6)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64) + 2 * (X[:, 1] > 0)  # 4 classes a small net can learn


def tabular(request: DataRequest) -> object:
    return split("tab", X, Y)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))


def make(**changes: object) -> Task:
    fields: dict[str, object] = {"name": "tab", "model": mlp, "data": tabular}
    fields.update(changes)
    return Task(**fields)  # type: ignore[arg-type]


def test_builtin_task_keeps_the_spec_and_layout_the_wire_always_had() -> None:
    loaded, ds = for_server(builtin_task("digits"), DataRequest(seed=3))
    assert loaded.spec == ModelSpec("mlp", (1, 8, 8), 10, "digits")
    old = build_model("mlp", (1, 8, 8), 10, seed=3)
    assert flatten(loaded.build_model(3).state_dict()).tobytes() == (
        flatten(old.state_dict()).tobytes()
    )
    assert [s.name for s in loaded.structure] == list(old.state_dict())
    assert len(ds.y_test) == 359  # the fixed stratified split of the built-in dataset


def test_a_user_task_is_registered_by_name_and_structure_digest() -> None:
    loaded, _ = for_server(make(), DataRequest())
    assert loaded.spec.architecture == f"tab@{loaded.digest.hex()[:12]}"
    assert loaded.spec.input_shape == (6,) and loaded.spec.num_classes == 4
    # Anything that builds by architecture (the forget engines do) builds the task's model.
    engine_side = build_model(loaded.spec.architecture, (6,), 4, seed=9)
    assert flatten(engine_side.state_dict()).tobytes() == (
        flatten(loaded.build_model(9).state_dict()).tobytes()
    )
    other = build_model(loaded.spec.architecture, (6,), 4, seed=10)
    assert flatten(other.state_dict()).tobytes() != flatten(engine_side.state_dict()).tobytes()


def test_a_model_initialised_from_numpy_is_refused_as_not_deterministic() -> None:
    def numpy_init() -> nn.Module:
        net = mlp()
        with torch.no_grad():
            net[0].weight.copy_(torch.from_numpy(np.random.normal(size=(16, 6))))
        return net

    with pytest.raises(ConfigError, match=r"not deterministic.*'0\.weight'"):
        for_server(make(model=numpy_init), DataRequest())


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (lambda: nn.Linear(6, 1), r"C >= 2"),
        (lambda: nn.Sequential(nn.Linear(6, 4), nn.Flatten(0)), r"logits \(B, C\)"),
        (lambda: mlp().double(), r"dtype float64.*float32"),
        (lambda: nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4, momentum=None)), "momentum"),
        (lambda: nn.Linear(5, 4), r"forward pass of the model failed: RuntimeError"),
        (lambda: "not a module", r"model\(\) returned str, not a torch nn.Module"),
    ],
)
def test_bad_models_are_refused_with_what_to_change(model: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        for_server(make(model=model), DataRequest())


def test_labels_beyond_the_models_logits_are_refused() -> None:
    two = lambda: nn.Sequential(nn.Linear(6, 2))  # noqa: E731
    with pytest.raises(ConfigError, match="labels up to 3 but the model outputs 2 logits"):
        for_server(make(model=two), DataRequest())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lambda r: split("d", np.full((30, 6), np.nan), np.zeros(30, int)), "NaN or Inf"),
        (lambda r: split("d", X, Y[:-1]), "200 samples but y has 199"),
        (lambda r: split("d", X, Y.astype(float)), "integer labels"),
        (lambda r: (X, Y), "data returned tuple, not a Dataset"),
        (lambda r: 1 / 0, "loading its data \\(data\\) failed: ZeroDivisionError"),
    ],
)
def test_bad_data_is_refused_naming_the_problem(data: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        for_server(make(data=data), DataRequest())


def test_errors_in_the_tasks_own_code_are_task_failures_not_tracebacks() -> None:
    def broken(request: DataRequest) -> object:
        raise KeyError("the file is not there")

    with pytest.raises(TaskFailed, match=r"task 'tab': loading its data \(data\) failed: KeyError"):
        for_server(make(data=broken), DataRequest())


def test_clients_get_disjoint_partitions_with_a_held_out_slice() -> None:
    parts = [for_client(make(), DataRequest(i, 2, seed=1), 0.1)[1] for i in range(2)]
    a, b = (set(p.ids_train.tolist()) | set(p.ids_held_out.tolist()) for p in parts)
    assert not a & b and len(a) + len(b) == 160  # the 80% training split, all of it
    assert all(len(p.y_held_out) >= 1 for p in parts)


def test_local_data_is_a_nodes_own_examples_with_its_ids() -> None:
    ids = np.arange(1000, 1050)
    task = make(local_data=lambda r: Examples(X[:50], Y[:50], ids))
    _, data, dataset = for_client(task, DataRequest(seed=2), 0.2)
    assert dataset is None
    assert sorted([*data.ids_train, *data.ids_held_out]) == ids.tolist()
    assert len(data.ids_held_out) == 10
    np.testing.assert_array_equal(data.x_train, X[data.ids_train - 1000])


@pytest.mark.parametrize(
    ("examples", "message"),
    [
        (Examples(X[:10], Y[:10], np.zeros(10, int)), "ids must be unique"),
        (Examples(X[:10], Y[:10], -np.arange(10)), "non-negative"),
        (Examples(X[:10, :5], Y[:10]), r"forward pass of the model failed: RuntimeError"),
        ((X, Y), "returned tuple, not forsaken.common.task.Examples"),
    ],
)
def test_bad_local_data_is_refused(examples: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        for_client(make(local_data=lambda r: examples), DataRequest(), 0.1)


def test_the_tasks_loss_fit_and_evaluate_are_the_ones_used() -> None:
    calls: list[str] = []

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append("loss")
        return nn.functional.cross_entropy(logits, y, label_smoothing=0.1)

    loaded, ds = for_server(make(loss=loss), DataRequest())
    model = loaded.build_model(0)
    result = loaded.train(model, ds.x_train, ds.y_train, TrainConfig(local_epochs=20), seed=1)
    assert "loss" in calls and result.num_samples == 160
    assert loaded.evaluate(model, ds.x_test, ds.y_test).accuracy > 0.8

    def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int) -> float:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # a "training step" whose update is easy to recognise
        return 0.25

    loaded, ds = for_server(
        make(fit=fit, evaluate=lambda m, x, y: EvalResult(0.5, 9.0)), DataRequest()
    )
    model = loaded.build_model(0)
    result = loaded.train(model, ds.x_train, ds.y_train, TrainConfig(max_update_norm=0), 1)
    assert result.mean_loss == 0.25 and np.allclose(result.delta, 1.0)
    assert loaded.evaluate(model, ds.x_test, ds.y_test) == EvalResult(0.5, 9.0)


def test_a_failing_fit_is_a_task_failure() -> None:
    def fit(*args: object) -> float:
        raise ValueError("diverged")

    loaded, ds = for_server(make(fit=fit), DataRequest())
    with pytest.raises(TaskFailed, match="local training failed: ValueError: diverged"):
        loaded.train(loaded.build_model(0), ds.x_train, ds.y_train, TrainConfig(), 1)


def test_split_keeps_given_test_arrays_and_ids_after_the_training_rows() -> None:
    ds = split("d", X[:150], Y[:150], X[150:], Y[150:])
    assert ds.ids_train.tolist() == list(range(150)) and ds.ids_test.tolist()[0] == 150
    assert ds.input_shape == (6,) and ds.num_classes == 4
    assert not ds.x_train.flags.writeable


def test_task_names_and_parts_are_checked() -> None:
    with pytest.raises(ConfigError, match="task name"):
        make(name="has space")
    with pytest.raises(ConfigError, match="model must be callable"):
        make(model=3)
    with pytest.raises(ConfigError, match="reserved for a built-in model"):
        register_architecture("mlp", lambda shape, classes: mlp())


def test_majority_rate() -> None:
    assert majority_rate(np.array([0, 1, 1, 2])) == 0.5
