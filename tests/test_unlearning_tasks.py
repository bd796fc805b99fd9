"""Forget engines on any task: non-image inputs, BatchNorm models, and tensors far beyond the
generator's dense heads."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from forsaken.common.structure import parameter_entries
from forsaken.common.task import DataRequest, LoadedTask, Task, for_client, for_server, split
from forsaken.common.tensors import flatten
from forsaken.common.training import TrainConfig
from forsaken.common.unlearning import METHODS, ForsakenConfig, make_engine
from forsaken.common.unlearning.engine import ForgetData, RoundWeights, augment, default_targets
from forsaken.common.unlearning.generator import (
    DummyGradientGenerator,
    GeneratorConfig,
    head_parameters,
    matrix_view,
)
from forsaken.common.unlearning.objectives import atypical_mask

RNG = np.random.default_rng(0)


def tabular_task() -> Task:
    x = RNG.normal(size=(400, 10)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return Task(
        "tab",
        lambda: nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2)),
        lambda r: split("tab", x, y),
    )


def sequence_task() -> Task:
    x = RNG.normal(size=(300, 2, 12)).astype(np.float32)
    y = (x[:, 0].mean(axis=1) > 0).astype(np.int64) + (x[:, 1].mean(axis=1) > 0)
    return Task(
        "seq",
        lambda: nn.Sequential(
            nn.Conv1d(2, 8, 3, padding=1),
            nn.BatchNorm1d(8),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(96, 3),
        ),
        lambda r: split("seq", x, y),
    )


def trained(task: Task) -> tuple[LoadedTask, np.ndarray, object]:
    loaded, ds = for_server(task, DataRequest())
    model = loaded.build_model(0)
    loaded.train(model, ds.x_train, ds.y_train, TrainConfig(local_epochs=5), seed=0)
    _, part, _ = for_client(task, DataRequest(0, 3), 0.2)
    return loaded, flatten(model.state_dict()), part


CLIENT_SIDE = sorted(name for name, factory in METHODS.items() if factory is not None)


@pytest.mark.parametrize("method", CLIENT_SIDE)
@pytest.mark.parametrize("make_task", [tabular_task, sequence_task], ids=["tabular", "bn-seq"])
def test_every_client_side_method_steps_on_non_image_tasks(method: str, make_task: object) -> None:
    loaded, vector, part = trained(make_task())  # type: ignore[operator]
    options = {}
    if method == "forsaken":
        options = {"config": ForsakenConfig(steps_per_round=4)}
    engine = make_engine(method, loaded.spec, **options)
    assert engine is not None
    step = engine.step(
        vector,
        ForgetData(
            part.x_train,
            part.y_train,
            part.x_train[:0],
            part.y_train[:0],
            part.x_held_out,
            part.y_held_out,
        ),
        1,
        RoundWeights(len(part.y_train) + len(part.y_train[:0]), 3 * len(part.y_train)),
    )
    assert step.update.shape == vector.shape and np.isfinite(step.update).all()
    if method == "forsaken":
        # The generator writes parameters only: BatchNorm statistics are not moved by it.
        buffers = ~parameter_entries(loaded.build_model(0))
        assert not step.update[buffers].any()
        assert step.update.any() and step.gradient_evaluations > 0


def test_the_atypical_position_mask_works_over_tabular_features() -> None:
    held = torch.randn(200, 10, generator=torch.Generator().manual_seed(1))
    forget = torch.randn(60, 10, generator=torch.Generator().manual_seed(2))
    assert atypical_mask(forget, held) is None  # an ordinary deletion: nothing stands out
    forget[:, 3] += 3.0  # a feature only the forget set has (a sensor artefact, a watermark)
    mask = atypical_mask(forget, held)
    assert mask is not None and mask.shape == (10,)
    assert mask.tolist() == [float(i == 3) for i in range(10)]


def test_forsaken_reports_the_atypical_features_it_found() -> None:
    loaded, vector, part = trained(tabular_task())
    forget_x = part.x_train.copy()
    forget_x[:, 7] += 4.0
    engine = make_engine("forsaken", loaded.spec, config=ForsakenConfig(steps_per_round=2))
    assert engine is not None
    step = engine.step(
        vector,
        ForgetData(
            forget_x, part.y_train, forget_x[:0], part.y_train[:0], part.x_held_out, part.y_held_out
        ),
        1,
        RoundWeights(len(part.y_train) + len(part.y_train[:0]), 3 * len(forget_x)),
    )
    assert step.metrics["atypical_positions"] == 1.0


@pytest.mark.parametrize("shape", [(8, 5), (8, 3, 6), (8, 3, 4, 4)])
def test_augment_keeps_the_input_shape(shape: tuple[int, ...]) -> None:
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    out = augment(x, 1, torch.Generator().manual_seed(3))
    assert out.shape == x.shape
    if len(shape) == 4:  # images: mixed and rolled, exactly as before tasks existed
        rng = torch.Generator().manual_seed(3)
        lam = torch.rand(8, 1, 1, 1, generator=rng)
        mixed = lam * x + (1 - lam) * x[torch.randperm(8, generator=rng)]
        dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=rng))
        assert torch.equal(out, torch.roll(mixed, shifts=(dy, dx), dims=(2, 3)))


def test_normalisation_gains_are_not_generator_targets_by_default() -> None:
    model = sequence_task().model()
    assert default_targets(model) == ("0.weight", "0.bias", "4.weight", "4.bias")
    plain = nn.Linear(3, 2)
    assert default_targets(plain) == ("weight", "bias")


@pytest.mark.parametrize(
    ("shape", "view"),
    [
        ((4096, 4096), (4096, 4096)),  # 2-D: the view it always had
        ((256, 256, 3, 3), (256, 2304)),  # a conv weight: (out, fan-in)
        ((300_007,), (548, 548)),  # 1-D: near-square, padded
        ((10, 2_000_000), (4473, 4472)),  # lopsided: near-square beats (10, 2M)
    ],
)
def test_large_tensors_get_low_rank_heads_over_a_cheap_matrix_view(
    shape: tuple[int, ...], view: tuple[int, int]
) -> None:
    cfg = GeneratorConfig()
    assert matrix_view(shape) == view
    kind, weights = head_parameters(shape, cfg)
    assert kind == "low-rank" and weights == (cfg.hidden + 1) * cfg.rank * sum(view)
    assert weights < (cfg.hidden + 1) * math.prod(shape) / 20  # far below a dense head


def test_low_rank_heads_emit_the_tensor_shape_and_learn() -> None:
    shapes = [("conv", (300, 80, 3, 3)), ("vec", (250_001,)), ("small", (5, 4))]
    cfg = replace(GeneratorConfig(), hidden=8)
    g = DummyGradientGenerator(6, shapes, cfg, [1.0, 1.0, 1.0], seed=0)
    summary, noise = torch.randn(6), torch.randn(cfg.noise_dim)
    out = g(summary, noise)
    assert {k: tuple(v.shape) for k, v in out.items()} == dict(shapes)
    assert all(
        float(v.detach().abs().sum()) == 0.0 for v in out.values()
    )  # harmless before training
    optimizer = torch.optim.SGD(g.parameters(), lr=0.1)
    loss = sum((v - 1.0).pow(2).mean() for v in g(summary, noise).values())
    loss.backward()  # type: ignore[union-attr]
    optimizer.step()
    after = g(summary, noise)
    assert all(float(v.detach().abs().sum()) > 0.0 for v in after.values())
