"""Model structure: the digest, the agreement check's messages, and what a federation exchanges
of a model with buffers (BatchNorm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from forsaken.common.errors import ConfigError, ModelMismatch
from forsaken.common.structure import (
    check_agreement,
    first_difference,
    make_exchangeable,
    parameter_entries,
    structure_digest,
    structure_of,
)
from forsaken.common.tensors import TensorSpec, flatten
from forsaken.common.training import load_vector


def net(width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Linear(4, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, 3))


def test_batchnorm_statistics_are_exchanged_and_its_counter_stays_local() -> None:
    model = make_exchangeable(net())
    names = list(model.state_dict())
    assert "1.running_mean" in names and "1.running_var" in names
    assert "1.num_batches_tracked" not in names  # a count: not averaged, kept on the node
    model.train()
    model(torch.randn(16, 4))
    assert int(model[1].num_batches_tracked) == 1  # still counted locally
    # A flat vector round-trips through the model, statistics included.
    other = make_exchangeable(net())
    load_vector(other, flatten(model.state_dict()))
    assert torch.equal(other[1].running_mean, model[1].running_mean)


def test_parameter_entries_mark_parameters_not_buffers() -> None:
    model = make_exchangeable(net())
    mask = parameter_entries(model)
    assert mask.size == flatten(model.state_dict()).size
    assert int(mask.sum()) == sum(p.numel() for p in model.parameters())
    assert not mask[-(8 * 3 + 3) - 16 : -(8 * 3 + 3)].any()  # running mean and var of BN


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (nn.Linear(4, 3).double(), "dtype float64"),
        (nn.BatchNorm1d(3, momentum=None), "momentum=None"),
        (nn.Linear(4, 3).half(), "dtype float16"),
    ],
)
def test_models_that_cannot_be_exchanged_are_refused(model: nn.Module, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_exchangeable(model)


def test_digest_is_of_names_shapes_and_dtypes_in_order() -> None:
    a = structure_of(make_exchangeable(net()))
    assert structure_digest(a) == structure_digest(structure_of(make_exchangeable(net())))
    assert structure_digest(a) != structure_digest(structure_of(make_exchangeable(net(9))))
    assert structure_digest(a) != structure_digest(tuple(reversed(a)))
    assert a[0] == TensorSpec("0.weight", (8, 4), "float32")


def test_first_difference_names_the_first_tensor_that_differs() -> None:
    ours = structure_of(make_exchangeable(net(8)))
    theirs = structure_of(make_exchangeable(net(16)))
    assert first_difference(ours, theirs, "the server", "this node") == (
        "tensor '0.weight' is (8, 4) float32 on the server but (16, 4) float32 on this node"
    )
    assert "exists on the server but not on this node" in str(
        first_difference(ours, ours[:-1], "the server", "this node")
    )
    renamed = (TensorSpec("w", (8, 4)), *ours[1:])
    assert "tensor #0 is '0.weight'" in str(first_difference(ours, renamed, "a", "b"))
    assert first_difference(ours, ours, "a", "b") is None


def test_check_agreement_refuses_a_mismatch_and_accepts_an_old_client() -> None:
    ours = structure_of(make_exchangeable(net(8)))
    check_agreement(ours, ours, structure_digest(ours))
    check_agreement(ours, (), b"")  # a client that predates the check sends nothing
    with pytest.raises(ModelMismatch, match=r"tensor '0\.weight'"):
        check_agreement(ours, structure_of(make_exchangeable(net(16))), b"")
    with pytest.raises(ModelMismatch, match="structure digest"):
        check_agreement(ours, (), np.zeros(32, np.uint8).tobytes())
