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
from forsaken.common.metrics import accuracy, model_outputs
from forsaken.common.models import build_model
from forsaken.common.partition import client_split
from forsaken.common.tensors import flatten
from forsaken.common.training import TrainConfig, load_vector, train_local
from forsaken.common.types import ModelSpec
from forsaken.common.unlearning import ForsakenConfig, ForsakenEngine
from forsaken.common.unlearning.engine import ForgetData, RoundWeights


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
    first = ex.step("f1", "forsaken", spec, (), vector, 31, RoundWeights(len(data.y_train), total))
    assert first.metrics["reversed"] == 1.0
    again = ex.step("f1", "forsaken", spec, (), vector, 31, total)  # the round was retried
    assert again is first
    ex.step("f1", "forsaken", spec, (), vector, 32, RoundWeights(len(data.y_train), total))
    evidence = ex.evidence(model, (), "f1")
    for key in ("mia_auc", "conf_auc", "auc_resolution", "excess_confidence_drop"):
        assert np.isfinite(evidence[key]), key
    # 259 forget against 29 held-out samples: nothing closer to 0.5 than ±0.11 is visible.
    assert 0.1 < evidence["auc_resolution"] < 0.12
    assert evidence["excess_confidence_drop"] == pytest.approx(0.0, abs=1e-9)  # same model
    ex.discard("f1", reversed_contribution=True)
    assert ex.contributions.load()[0] is None
    assert "excess_confidence_drop" not in ex.evidence(model, (), "f1")


# ---- the contribution record across restarts, what leaves the node, the bounded reversal ----


def _initial_vector(spec: ModelSpec) -> np.ndarray:
    return flatten(
        build_model(spec.architecture, spec.input_shape, spec.num_classes, 0).state_dict()
    )


def _kept_accuracy(
    model: torch.nn.Module, vector: np.ndarray, x: np.ndarray, y: np.ndarray
) -> float:
    load_vector(model, vector)
    return accuracy(model_outputs(model, x), y)


def test_the_record_survives_a_restart_and_drives_the_same_reversal(
    tmp_path: Path, trained: tuple
) -> None:
    spec, model, data = trained
    vector = flatten(model.state_dict())
    trained_delta = vector - _initial_vector(spec)
    w, total = len(data.y_train), 5 * len(data.y_train)
    # Two nodes with the same history; one of them restarts between training and ForgetMe.
    steady = ForgetExecutor(tmp_path / "steady", data, seed=0)
    before_restart = ForgetExecutor(tmp_path / "restarted", data, seed=0)
    for ex in (steady, before_restart):
        ex.record_contribution(1, trained_delta * 0.5, w)
        ex.record_contribution(2, trained_delta * 0.5, w)
    restarted = ForgetExecutor(tmp_path / "restarted", data, seed=0)
    recorded, last = restarted.contributions.load()
    assert last == 2 and recorded is not None
    np.testing.assert_allclose(recorded, trained_delta.astype(np.float64) * w, rtol=1e-6)
    a = steady.step("f", "forsaken", spec, (), vector, 3, RoundWeights(len(data.y_train), total))
    b = restarted.step("f", "forsaken", spec, (), vector, 3, RoundWeights(len(data.y_train), total))
    assert a.metrics["reversed"] > 0.0
    assert a.metrics == b.metrics
    np.testing.assert_array_equal(a.update, b.update)


def test_a_round_asked_for_again_after_a_restart_gets_the_same_step(
    tmp_path: Path, trained: tuple
) -> None:
    spec, model, data = trained
    vector = flatten(model.state_dict())
    w, total = len(data.y_train), 5 * len(data.y_train)
    ex = ForgetExecutor(tmp_path, data, seed=0)
    ex.record_contribution(1, (vector - _initial_vector(spec)) * 0.2, w)
    first = ex.step("f", "forsaken", spec, (), vector, 7, RoundWeights(len(data.y_train), total))
    assert first.metrics["reversed"] > 0.0
    # The node crashed after computing round 7; the round aborted and is asked for again.
    again = ForgetExecutor(tmp_path, data, seed=0).step(
        "f", "forsaken", spec, (), vector, 7, RoundWeights(len(data.y_train), total)
    )
    np.testing.assert_array_equal(again.update, first.update)
    assert (again.num_samples, again.done, again.metrics) == (
        first.num_samples,
        first.done,
        first.metrics,
    )
    assert again.gradient_evaluations == first.gradient_evaluations
    # The next round moves on and does not reverse the record a second time.
    after = ForgetExecutor(tmp_path, data, seed=0).step(
        "f", "forsaken", spec, (), vector, 8, RoundWeights(len(data.y_train), total)
    )
    assert after.metrics["reversed"] == 0.0
    # A damaged state file is reported, not half-read.
    (tmp_path / "forget-f.npz").write_bytes(b"garbage")
    with pytest.raises(CorruptState, match="engine state"):
        ForgetExecutor(tmp_path, data, seed=0).step(
            "f", "forsaken", spec, (), vector, 9, RoundWeights(len(data.y_train), total)
        )


def test_nothing_but_the_update_leaves_the_node(tmp_path: Path, trained: tuple) -> None:
    """The record is a model-sized vector about this node alone: it stays in its state
    directory (owner-only), and what the node hands out for sending (the step's metrics, the
    receipt's evidence) is a handful of scalars; the only vector is the update, which goes
    through the masked upload like any training update."""
    spec, model, data = trained
    vector = flatten(model.state_dict())
    w, total = len(data.y_train), 5 * len(data.y_train)
    ex = ForgetExecutor(tmp_path, data, seed=0)
    ex.record_contribution(1, (vector - _initial_vector(spec)) * 0.2, w)
    step = ex.step("f", "forsaken", spec, (), vector, 2, RoundWeights(len(data.y_train), total))
    assert step.update.shape == vector.shape and step.update.dtype == np.float32
    evidence = ex.evidence(model, (), "f")
    for name, value in {**step.metrics, **evidence}.items():
        assert isinstance(value, float), (name, type(value))
    assert len(step.metrics) < 32 and len(evidence) < 32
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o077 == 0, path  # owner-only: record, state, model
    recorded, _ = ex.contributions.load()
    assert recorded is not None
    # The upload is the engine's move, not the record: the record over the round total is
    # only part of it (a generator step follows the reversal).
    assert not np.allclose(step.update * w / total, -recorded / total, atol=1e-6)


def test_the_reversal_stops_short_of_wrecking_the_model(trained: tuple) -> None:
    """A record whose full reversal would destroy the model on the kept data (here: noise ten
    times the size of the weights) is reversed only as far as the kept accuracy allows."""
    spec, model, data = trained
    vector = flatten(model.state_dict()).astype(np.float64)
    w, total = len(data.y_train), 5 * len(data.y_train)
    noise = np.random.default_rng(0).normal(0.0, 1.0, vector.shape) * np.abs(vector).mean()
    cfg = ForsakenConfig(steps_per_round=1, learning_rate=1e-9)  # the reversal, almost alone
    kx, ky = data.x_held_out, data.y_held_out  # a node that forgets everything keeps these
    chance = 1.0 / spec.num_classes
    acc0 = _kept_accuracy(model, vector.astype(np.float32), kx, ky)
    floor = chance + cfg.reversal_floor * (acc0 - chance)
    for size in (10.0, 1000.0):
        record = noise * size * total
        full = _kept_accuracy(model, (vector - record / total).astype(np.float32), kx, ky)
        assert full < floor  # reversing all of it would wreck the model
        engine = ForsakenEngine(spec, cfg, contribution=record)
        step = engine.step(
            vector.astype(np.float32),
            ForgetData(data.x_train, data.y_train, data.x_train[:0], data.y_train[:0], kx, ky),
            1,
            RoundWeights(len(data.y_train) + len(data.y_train[:0]), total),
        )
        reversed_share = step.metrics["reversed"]
        assert 0.0 <= reversed_share < 1.0
        start = vector + step.update.astype(np.float64) * w / total
        assert _kept_accuracy(model, start.astype(np.float32), kx, ky) >= floor - 1e-9
        if reversed_share == 0.0:
            assert np.abs(step.update * w / total).max() < 1e-3 * np.abs(record / total).max()
    load_vector(model, vector.astype(np.float32))


def test_evidence_has_every_key_and_sees_a_model_that_let_go(
    tmp_path: Path, trained: tuple
) -> None:
    spec, model, data = trained
    vector = flatten(model.state_dict())
    ex = ForgetExecutor(tmp_path, data, seed=0)
    ex.step("f", "finetune", spec, (), vector, 2, 5 * len(data.y_train))  # keeps the start model
    # Halfway back to the untrained model: the forgotten samples lose what only they gave it.
    let_go = _initial_vector(spec) + 0.3 * (vector - _initial_vector(spec))
    load_vector(model, let_go)
    try:
        evidence = ex.evidence(model, (), "f")
    finally:
        load_vector(model, vector)
    assert set(evidence) == {
        "mia_auc",
        "conf_auc",
        "auc_resolution",
        "forget_acc",
        "held_out_acc",
        "forget_mean_loss",
        "held_out_mean_loss",
        "oracle_member_rate",
        "forget_samples",
        "held_out_samples",
        "excess_confidence_drop",
        "excess_confidence_drop_ci95",
    }
    assert all(np.isfinite(v) for v in evidence.values())
    assert evidence["forget_samples"] == len(data.y_train)
    assert evidence["held_out_samples"] == len(data.y_held_out)
    # The forgotten samples' confidence fell further than the unseen ones'; with 29 held-out
    # samples the half-width is wide, and the evidence says so rather than claiming more.
    assert evidence["excess_confidence_drop"] > 0.0
    assert evidence["excess_confidence_drop_ci95"] > 0.0
