"""The L2 bound on updates: clients clip to it, honest aggregates never exceed it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from forsaken.common.errors import InvalidPayload
from forsaken.common.fedavg import weighted_average
from forsaken.common.models import build_model
from forsaken.common.training import TrainConfig, train_local
from forsaken.common.update_bound import aggregate_limit, check_aggregate, clip_to_norm


def test_clip_scales_long_vectors_down_and_leaves_short_ones() -> None:
    long = np.full(4, 3.0, np.float32)  # norm 6
    clipped, norm = clip_to_norm(long, 2.0)
    assert norm == pytest.approx(6.0) and np.linalg.norm(clipped) == pytest.approx(2.0)
    assert clipped.dtype == np.float32
    short = np.ones(4, np.float32)
    assert clip_to_norm(short, 2.0)[0] is short
    assert clip_to_norm(long, 0.0)[0] is long  # 0: no bound


def test_a_weighted_mean_of_clipped_updates_passes_the_check_and_a_scaled_one_fails() -> None:
    rng = np.random.default_rng(0)
    updates = [(clip_to_norm(rng.normal(0, 5, 50).astype(np.float32), 3.0)[0], n) for n in (1, 9)]
    check_aggregate(weighted_average(updates), 3.0, forget_round=False)
    with pytest.raises(InvalidPayload, match=r"exceeds .* --max-update-norm 3"):
        check_aggregate(weighted_average(updates) * 2000, 3.0, forget_round=False)
    # A forget step may add up to C on top of the others' mean.
    both = weighted_average(updates) + clip_to_norm(rng.normal(0, 5, 50), 3.0)[0]
    check_aggregate(both, 3.0, forget_round=True)
    with pytest.raises(InvalidPayload):
        check_aggregate(both * 1.5, 3.0, forget_round=True)
    assert aggregate_limit(0.0, forget_round=False) == float("inf")
    with pytest.raises(InvalidPayload):
        check_aggregate(np.full(3, np.nan), 3.0, forget_round=False)


def test_train_local_clips_its_update_and_reports_the_norm_before() -> None:
    torch.manual_seed(0)
    x = np.random.default_rng(1).normal(size=(64, 1, 8, 8)).astype(np.float32)
    y = np.arange(64) % 10
    model = build_model("mlp", (1, 8, 8), 10, 0)
    free = train_local(model, x, y, TrainConfig(local_epochs=3, max_update_norm=0), 1)
    model = build_model("mlp", (1, 8, 8), 10, 0)
    bound = free.norm / 2
    clipped = train_local(model, x, y, TrainConfig(local_epochs=3, max_update_norm=bound), 1)
    assert clipped.norm == pytest.approx(free.norm, rel=1e-6)
    assert np.linalg.norm(clipped.delta) == pytest.approx(bound, rel=1e-5)
    np.testing.assert_allclose(clipped.delta, free.delta / 2, rtol=1e-4, atol=1e-7)
