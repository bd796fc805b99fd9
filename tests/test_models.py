"""The model zoo: shapes, parameter-only state, deterministic init, the registry."""

from __future__ import annotations

import pytest
import torch

from forsaken.common.errors import ConfigError
from forsaken.common.models import ARCHITECTURES, build_model, default_architecture
from forsaken.common.tensors import flatten

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 12, 10)]


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shape_and_state_is_only_parameters(
    architecture: str, shape: tuple[int, int, int]
) -> None:
    model = build_model(architecture, shape, 7, seed=0)
    assert model(torch.zeros(5, *shape)).shape == (5, 7)
    # Secure aggregation averages parameters only; a buffer would silently not be averaged.
    assert list(model.buffers()) == []
    assert len(model.state_dict()) == len(list(model.parameters()))


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
def test_same_seed_same_init_other_seed_other_init(architecture: str) -> None:
    a = flatten(build_model(architecture, (1, 8, 8), 10, seed=5).state_dict())
    b = flatten(build_model(architecture, (1, 8, 8), 10, seed=5).state_dict())
    c = flatten(build_model(architecture, (1, 8, 8), 10, seed=6).state_dict())
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_building_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("mlp", (1, 28, 28), 10, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_default_architecture_uses_the_registry_with_a_fallback() -> None:
    assert default_architecture("digits") == "mlp"
    assert default_architecture("mnist5k") == "mlp"
    assert default_architecture("someones_upload") in ARCHITECTURES


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("resnet", (1, 8, 8), 10), "unknown architecture 'resnet'"),
        (("cnn", (1, 2, 8), 10), "at least 4x4"),
        (("mlp", (1, 8, 8), 1), "at least 2 classes"),
        (("mlp", (8, 8), 10), r"\(C, H, W\)"),
    ],
)
def test_bad_arguments_are_config_errors(args: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(*args, seed=0)
