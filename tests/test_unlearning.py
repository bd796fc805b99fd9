"""Forget engines: the generator learns, state resumes exactly, unlearning removes a backdoor,
updates have the training update's shape, and PGA respects its ball."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
import torch

from forsaken.common import metrics as M
from forsaken.common.backdoor import poison_client, triggered_test_set
from forsaken.common.datasets import load_dataset
from forsaken.common.errors import ConfigError, InvalidPayload
from forsaken.common.models import build_model
from forsaken.common.partition import client_split
from forsaken.common.tensors import flatten, specs_of
from forsaken.common.training import TrainConfig, load_vector, train_local
from forsaken.common.types import ModelSpec
from forsaken.common.unlearning import (
    NEGATION,
    RETRAIN,
    FedQuitConfig,
    FinetuneEngine,
    ForsakenConfig,
    ForsakenEngine,
    PGAConfig,
    PGAEngine,
    make_engine,
)
from forsaken.common.unlearning.engine import ForgetData, RoundWeights
from forsaken.common.unlearning.fedquit import virtual_teacher
from forsaken.common.unlearning.generator import DummyGradientGenerator
from forsaken.common.unlearning.negation import layers_to_negate, negate
from forsaken.common.unlearning.objectives import (
    ObjectiveWeights,
    atypical_mask,
    profile_distance,
    quantile_distance,
    sharpen_distance,
    transplant,
    transplant_distance,
)

STEPS = 10  # generator steps per round: enough to move, fast enough for the suite


@pytest.fixture(scope="module")
def bed() -> dict:
    """A backdoored digits model: client 0 of 5 poisoned, trained together with client 1."""
    torch.set_num_threads(1)
    ds = load_dataset("digits")
    poisoned = poison_client(client_split(ds, 0, 5, seed=0), seed=0)
    clean = client_split(ds, 1, 5, seed=0)
    spec = ModelSpec("mlp", ds.input_shape, ds.num_classes, "digits")
    model = build_model("mlp", ds.input_shape, ds.num_classes, seed=0)
    x = np.concatenate([poisoned.data.x_train, clean.x_train])
    y = np.concatenate([poisoned.data.y_train, clean.y_train])
    train_local(model, x, y, TrainConfig(local_epochs=15), seed=0)
    trig_x, trig_y = triggered_test_set(ds, poisoned.target, poisoned.trigger)
    return {
        "spec": spec,
        "vector": flatten(model.state_dict()),
        "data": poisoned.data,
        "trig_x": trig_x,
        "trig_y": trig_y,
        "model": model,
    }


def _step(engine, bed: dict, round_number: int = 1, total: int | None = None):
    d = bed["data"]
    return engine.step(
        bed["vector"],
        ForgetData(d.x_train, d.y_train, d.x_train[:0], d.y_train[:0], d.x_held_out, d.y_held_out),
        round_number,
        # Without a stated total: one of five equal clients.
        RoundWeights(len(d.y_train), 5 * len(d.y_train) if total is None else total),
    )


def _asr(bed: dict, vector: np.ndarray) -> float:
    load_vector(bed["model"], vector)
    return M.attack_success_rate(M.model_outputs(bed["model"], bed["trig_x"]), 0)


def test_generator_is_a_module_whose_parameters_change(bed: dict) -> None:
    engine = ForsakenEngine(bed["spec"], ForsakenConfig(steps_per_round=STEPS))
    assert isinstance(engine.generator, torch.nn.Module)
    assert isinstance(engine.generator, DummyGradientGenerator)
    before = [p.detach().clone() for p in engine.generator.parameters()]
    _step(engine, bed)
    changed = [
        not torch.equal(a, b) for a, b in zip(before, engine.generator.parameters(), strict=True)
    ]
    assert sum(changed) >= len(changed) // 2


def test_update_is_a_flat_float32_training_style_update(bed: dict) -> None:
    engine = ForsakenEngine(bed["spec"], ForsakenConfig(steps_per_round=STEPS))
    step = _step(engine, bed)
    assert step.update.dtype == np.float32 and step.update.shape == bed["vector"].shape
    assert np.isfinite(step.update).all() and np.abs(step.update).max() > 0
    assert step.num_samples == len(bed["data"].y_train)
    # per step: a forget batch, the kept batch twice (plain and augmented) and the transplanted
    # held-out batch (the poisoned set has atypical positions: the trigger)
    cfg = engine.config
    n_forget = min(cfg.forget_batch, len(bed["data"].y_train))
    n_keep = min(cfg.keep_batch, len(bed["data"].y_held_out))
    assert step.metrics["atypical_positions"] > 0
    per_step = n_forget + 2 * n_keep + cfg.transplant_batch
    assert step.gradient_evaluations == STEPS * per_step


def test_one_unlearning_step_lowers_asr(bed: dict) -> None:
    engine = ForsakenEngine(bed["spec"], ForsakenConfig(steps_per_round=30))
    total = 5 * len(bed["data"].y_train)
    step = _step(engine, bed, total=total)
    # What the server's mean carries when the other clients' updates are zero: update * w / W.
    after = bed["vector"] + step.update * (step.num_samples / total)
    before_asr, after_asr = _asr(bed, bed["vector"]), _asr(bed, after)
    assert before_asr > 0.8
    assert after_asr < before_asr / 2


def test_scaling_survives_averaging(bed: dict) -> None:
    a = _step(ForsakenEngine(bed["spec"], ForsakenConfig(steps_per_round=3)), bed, total=1000)
    b = _step(ForsakenEngine(bed["spec"], ForsakenConfig(steps_per_round=3)), bed, total=2000)
    assert np.allclose(b.update, 2 * a.update, rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError):
        _step(ForsakenEngine(bed["spec"]), bed, total=10)  # below the client's own weight


def test_state_dict_round_trip_resumes_identically(bed: dict) -> None:
    cfg = ForsakenConfig(steps_per_round=STEPS, max_rounds=5)
    first = ForsakenEngine(bed["spec"], cfg)
    _step(first, bed, round_number=1)
    state = first.state_dict()
    assert all(isinstance(v, np.ndarray) for v in state.values())
    buffer = io.BytesIO()
    np.savez(buffer, **state)  # no pickle anywhere: plain named arrays
    buffer.seek(0)
    with np.load(buffer, allow_pickle=False) as archive:
        restored = {k: archive[k] for k in archive.files}
    second = ForsakenEngine(bed["spec"], cfg)
    second.load_state_dict(restored)
    a, b = _step(first, bed, round_number=2), _step(second, bed, round_number=2)
    assert np.array_equal(a.update, b.update)
    assert a.done == b.done and first.rounds_done == second.rounds_done == 2
    fresh = _step(ForsakenEngine(bed["spec"], cfg), bed, round_number=2)
    assert not np.array_equal(a.update, fresh.update)  # the resumed state mattered


def test_pga_stays_inside_its_ball(bed: dict) -> None:
    engine = PGAEngine(bed["spec"], PGAConfig(radius_fraction=0.02, loss_ceiling=1e9, epochs=2))
    total = 5 * len(bed["data"].y_train)
    step = _step(engine, bed, total=total)
    moved = bed["vector"] + step.update * (step.num_samples / total)  # undo the scaling
    distance = np.linalg.norm(moved - engine.reference(bed["vector"]))
    assert step.done and step.gradient_evaluations > 0
    assert distance <= engine.radius * (1 + 1e-4)
    assert distance >= engine.radius * 0.9  # the ascent did push out to the boundary


def test_registry_and_finetune(bed: dict) -> None:
    assert make_engine(RETRAIN, bed["spec"]) is None
    assert isinstance(make_engine("forsaken", bed["spec"]), ForsakenEngine)
    assert isinstance(make_engine("pga", bed["spec"]), PGAEngine)
    with pytest.raises(ConfigError):
        make_engine("fedEraser", bed["spec"])
    step = _step(FinetuneEngine(bed["spec"]), bed)
    assert step.done and step.num_samples == 0 and not step.update.any()


def test_distances_vanish_on_identical_inputs_only() -> None:
    probs = torch.softmax(torch.randn(40, 10, generator=torch.Generator().manual_seed(0)), 1)
    assert float(quantile_distance(probs, probs)) == pytest.approx(0.0, abs=1e-9)
    profile = torch.cat([probs.mean(0), probs.sort(1, descending=True).values.mean(0)])
    assert float(profile_distance(profile, profile)) == pytest.approx(0.0, abs=1e-9)
    shifted = torch.softmax(torch.log(probs) + 3 * torch.eye(10)[0], 1)  # more mass on class 0
    assert float(quantile_distance(shifted, probs)) > 1e-3


def test_sharpen_distance_is_zero_at_the_reference_confidence_only() -> None:
    c, top = 10, 0.9
    target = torch.full((4, c), (1 - top) / (c - 1))
    target[torch.arange(4), torch.tensor([3, 1, 4, 1])] = top
    reference = target.clone()  # unseen data whose mean top-1 probability is `top`
    assert float(sharpen_distance(target.log(), reference)) == pytest.approx(0.0, abs=1e-6)
    unsure = torch.softmax(target.log() / 3, dim=1)  # same top classes, less confident
    assert float(sharpen_distance(unsure.log(), reference)) > 0.1


def test_min_rounds_keeps_the_engine_going(bed: dict) -> None:
    """The oracle may not end the process before `min_rounds` uploads; at the cap it must."""
    engine = ForsakenEngine(bed["spec"], ForsakenConfig(steps_per_round=3, min_rounds=2))
    first = _step(engine, bed, round_number=1)
    assert not first.done and first.num_samples > 0
    second = _step(engine, bed, round_number=2)  # at most max_rounds (5): the oracle decides
    assert second.num_samples > 0 and "member_rate_after" in second.metrics
    capped = ForsakenEngine(
        bed["spec"], ForsakenConfig(steps_per_round=3, min_rounds=2, max_rounds=2)
    )
    _step(capped, bed, round_number=1)
    assert _step(capped, bed, round_number=2).done
    with pytest.raises(ConfigError):
        ForsakenConfig(min_rounds=3, max_rounds=2)


def test_atypical_mask_finds_the_trigger_and_nothing_on_clean_data(bed: dict) -> None:
    """The poisoned client's data differs from unseen data exactly where the trigger is; an
    ordinary client's does not differ anywhere, so the transplant term stays off for it."""
    d = bed["data"]
    mask = atypical_mask(torch.tensor(d.x_train), torch.tensor(d.x_held_out))
    assert mask is not None and mask.shape == d.x_train.shape[1:]
    lit = {tuple(int(v) for v in pos[1:]) for pos in torch.nonzero(mask)}
    assert lit == {(6, 6), (6, 7), (7, 6), (7, 7)}  # the 2x2 digits trigger at (6, 6)
    ds = load_dataset("digits")
    for i in range(1, 5):
        clean = client_split(ds, i, 5, seed=0)
        assert atypical_mask(torch.tensor(clean.x_train), torch.tensor(clean.x_held_out)) is None
    assert atypical_mask(torch.tensor(d.x_train[:1]), torch.tensor(d.x_held_out)) is None


def test_transplant_copies_only_masked_positions_and_its_distance() -> None:
    held, forget = torch.zeros(3, 1, 4, 4), torch.ones(3, 1, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[0, 3, 3] = 1
    mixed = transplant(held, forget, mask)
    assert float(mixed.sum()) == 3.0 and bool((mixed[:, 0, 3, 3] == 1).all())
    target = torch.softmax(torch.randn(3, 10, generator=torch.Generator().manual_seed(1)), 1)
    assert float(transplant_distance(target.log(), target)) == pytest.approx(0.0, abs=1e-6)
    flipped = target.log().roll(1, dims=1)  # a different class wins on every row
    assert float(transplant_distance(flipped, target)) > 0.1


def test_transplant_term_removes_the_triggers_pull_on_clean_inputs(bed: dict) -> None:
    """With the term, clean held-out images stamped with the trigger keep their class after the
    step far more often than without it."""
    d = bed["data"]
    trig_kept = {}
    for weight in (0.0, 10.0):
        cfg = ForsakenConfig(
            steps_per_round=30, weights=replace(ObjectiveWeights(), transplant=weight)
        )
        total = 5 * len(d.y_train)
        step = _step(ForsakenEngine(bed["spec"], cfg), bed, total=total)
        after = bed["vector"] + step.update * (step.num_samples / total)
        load_vector(bed["model"], after)
        trig_kept[weight] = M.accuracy(M.model_outputs(bed["model"], bed["trig_x"]), bed["trig_y"])
    assert trig_kept[10.0] > trig_kept[0.0] + 0.05


def test_first_round_reverses_the_recorded_contribution_once(bed: dict) -> None:
    """With steps_per_round=1 and zero-initialised heads, G's first output is tiny, so the
    first update is the scaled reversal; the second round reverses nothing again."""
    w = len(bed["data"].y_train)
    total = 5 * w
    rng = np.random.default_rng(0)
    record = rng.normal(0.0, 1e-2, bed["vector"].shape) * w  # Σ w_t Δ_t
    cfg = ForsakenConfig(steps_per_round=1, learning_rate=1e-6)
    engine = ForsakenEngine(bed["spec"], cfg, contribution=record)
    first = _step(engine, bed, round_number=1, total=total)
    moved = first.update * (first.num_samples / total)  # what the mean carries
    np.testing.assert_allclose(moved, -record / total, atol=1e-5)
    assert first.metrics["reversed"] == 1.0
    second = _step(engine, bed, round_number=2, total=total)
    assert second.metrics["reversed"] == 0.0
    assert np.abs(second.update).max() < 1e-2 * np.abs(first.update).max()
    # Without a record, or with the reversal off, nothing is reversed.
    plain = ForsakenEngine(bed["spec"], cfg)
    assert _step(plain, bed, total=total).metrics["reversed"] == 0.0
    off = ForsakenEngine(bed["spec"], replace(cfg, reversal=0.0), contribution=record)
    assert _step(off, bed, total=total).metrics["reversed"] == 0.0
    wrong = ForsakenEngine(bed["spec"], cfg, contribution=record[:-1])
    with pytest.raises(InvalidPayload, match="contribution record"):
        _step(wrong, bed, total=total)


def test_anchor_survives_the_state_round_trip(bed: dict) -> None:
    engine = ForsakenEngine(bed["spec"], ForsakenConfig(steps_per_round=2))
    _step(engine, bed)
    state = engine.state_dict()
    assert np.array_equal(state["anchor"], bed["vector"])
    again = ForsakenEngine(bed["spec"], ForsakenConfig(steps_per_round=2))
    again.load_state_dict(state)
    assert again.anchor is not None and np.array_equal(again.anchor, bed["vector"])


def test_fedquit_teacher_demotes_the_label_and_keeps_the_rest() -> None:
    logits = torch.tensor([[4.0, 1.0, 0.0, -1.0]])
    teacher = virtual_teacher(logits, torch.tensor([0]))
    assert float(teacher[0, 0]) == pytest.approx(float(teacher[0].mean()), abs=0.2)
    assert float(teacher[0, 1]) > float(teacher[0, 2]) > float(teacher[0, 3])
    assert float(teacher.sum()) == pytest.approx(1.0)


def test_fedquit_step_lowers_confidence_in_the_forgotten_labels(bed: dict) -> None:
    engine = make_engine("fedquit", bed["spec"], config=FedQuitConfig(epochs=1))
    total = 5 * len(bed["data"].y_train)
    step = _step(engine, bed, total=total)
    assert step.done and step.gradient_evaluations == len(bed["data"].y_train)
    after = bed["vector"] + step.update * (step.num_samples / total)
    d = bed["data"]

    def own(vec: np.ndarray) -> float:
        load_vector(bed["model"], vec)
        probs = M.softmax(M.model_outputs(bed["model"], d.x_train))
        return float(probs[np.arange(len(d.y_train)), d.y_train].mean())

    assert own(after) < own(bed["vector"]) - 0.1


def test_not_negates_exactly_the_first_two_layers(bed: dict) -> None:
    model = bed["model"]
    load_vector(model, bed["vector"])
    specs = specs_of(model.state_dict())
    names = [s.name for s in specs]
    assert layers_to_negate(names) == tuple(names[:4])  # weight and bias of two layers
    out = negate(bed["vector"], specs)
    cut = sum(s.numel for s in specs[:4])
    assert np.array_equal(out[:cut], -bed["vector"][:cut])
    assert np.array_equal(out[cut:], bed["vector"][cut:])
    assert make_engine(NEGATION, bed["spec"]) is None  # the server does it
    with pytest.raises(ConfigError):
        negate(bed["vector"][:-1], specs)
