"""The client's unlearning executor: its contribution record, one step per round, and evidence
that says how much it can show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from forsaken.client.forgetting import CONTRIBUTION_FILE, ContributionRecord, ForgetExecutor
from forsaken.common.datasets import load_dataset
from forsaken.common.errors import CorruptState
from forsaken.common.models import build_model
from forsaken.common.partition import client_split
from forsaken.common.tensors import flatten
from forsaken.common.training import TrainConfig, train_local
from forsaken.common.types import ModelSpec


def test_record_sums_weighted_updates_once_per_round(tmp_path: Path) -> None:
    rec = ContributionRecord(tmp_path / CONTRIBUTION_FILE)
    assert rec.load() == (None, 0)
    rec.add(1, np.full(4, 0.5, np.float32), 10)
    rec.add(1, np.full(4, 9.0, np.float32), 10)  # the same round again (a retry): skipped
    rec.add(3, np.full(4, -1.0, np.float32), 2)
    total, last = rec.load()
    assert last == 3 and total is not None
    np.testing.assert_allclose(total, 0.5 * 10 - 1.0 * 2)
    rec.reset()
    assert rec.load() == (None, 3)
    rec.add(2, np.ones(4, np.float32), 1)  # older than what was reversed: still skipped
    assert rec.load() == (None, 3)
    rec.add(4, np.ones(4, np.float32), 1)
    assert rec.load()[1] == 4
    with pytest.raises(CorruptState):
        rec.add(5, np.ones(3, np.float32), 1)


def test_a_damaged_record_is_reported(tmp_path: Path) -> None:
    path = tmp_path / CONTRIBUTION_FILE
    path.write_bytes(b"not an npz")
    with pytest.raises(CorruptState, match="contribution record"):
        ContributionRecord(path).load()


@pytest.fixture(scope="module")
def trained() -> tuple[ModelSpec, torch.nn.Module, object]:
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    data = client_split(ds, 0, 5, seed=0)
    model = build_model("mlp", ds.input_shape, ds.num_classes, 0)
    train_local(model, data.x_train, data.y_train, TrainConfig(local_epochs=10), seed=0)
    return ModelSpec("mlp", ds.input_shape, ds.num_classes, "digits"), model, data


def test_executor_steps_once_per_round_and_evidence_states_its_reach(
    tmp_path: Path, trained: tuple
) -> None:
    spec, model, data = trained
    ex = ForgetExecutor(tmp_path, data, seed=0)
    vector = flatten(model.state_dict())
    ex.record_contribution(1, vector * 0.01, len(data.y_train))
    total = 5 * len(data.y_train)
    first = ex.step("f1", "forsaken", spec, (), vector, 31, total)
    assert first.metrics["reversed"] == 1.0
    again = ex.step("f1", "forsaken", spec, (), vector, 31, total)  # the round was retried
    assert again is first
    ex.step("f1", "forsaken", spec, (), vector, 32, total)
    evidence = ex.evidence(model, (), "f1")
    for key in ("mia_auc", "conf_auc", "auc_resolution", "excess_confidence_drop"):
        assert np.isfinite(evidence[key]), key
    # 259 forget against 29 held-out samples: nothing closer to 0.5 than ±0.11 is visible.
    assert 0.1 < evidence["auc_resolution"] < 0.12
    assert evidence["excess_confidence_drop"] == pytest.approx(0.0, abs=1e-9)  # same model
    ex.discard("f1", reversed_contribution=True)
    assert ex.contributions.load()[0] is None
    assert "excess_confidence_drop" not in ex.evidence(model, (), "f1")
