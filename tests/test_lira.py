"""LiRA and U-LiRA arithmetic on synthetic statistics with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from forsaken.common.errors import InvalidPayload
from forsaken.common.lira import (
    LiraCalibration,
    forgetting_score,
    lira_attack,
    logit_confidence,
    per_example_epsilon,
    score_auc,
)


def test_logit_confidence_is_log_odds_of_the_label() -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0], [50.0, -50.0, 0.0]])
    labels = np.array([0, 1, 1])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    want = np.log(p[np.arange(3), labels]) - np.log1p(-p[np.arange(3), labels])
    np.testing.assert_allclose(logit_confidence(logits, labels)[:2], want[:2], rtol=1e-12)
    assert logit_confidence(logits, labels)[2] == pytest.approx(-100.0)  # no overflow


def shadows(rng: np.random.Generator, k: int, n: int, gap: float) -> tuple[np.ndarray, ...]:
    """K shadow models on N candidates: difficulty per candidate, IN models `gap` higher."""
    difficulty = rng.normal(5.0, 3.0, n)
    is_in = np.zeros((k, n), dtype=bool)
    for j in range(n):
        is_in[rng.choice(k, k // 2, replace=False), j] = True
    stats = difficulty + gap * is_in + rng.normal(0.0, 1.0, (k, n))
    return difficulty, is_in, stats


def test_attack_separates_members_only_when_the_model_saw_them() -> None:
    rng = np.random.default_rng(0)
    difficulty, is_in, stats = shadows(rng, 16, 2000, gap=2.0)
    cal = LiraCalibration.fit(stats, is_in)
    assert cal.std_in == pytest.approx(1.0, abs=0.05) and cal.std_out == pytest.approx(1.0, 0.05)
    member = np.arange(2000) < 1000
    noise = rng.normal(0.0, 1.0, 2000)
    trained = difficulty + 2.0 * member + noise  # a model that trained on the members
    unseen = difficulty + noise  # one that saw none of them
    assert lira_attack(cal, trained, member, ~member).auc > 0.8
    fresh = lira_attack(cal, unseen, member, ~member)
    assert fresh.auc == pytest.approx(0.5, abs=0.04)
    assert fresh.tpr[0.01] < 0.04
    # A loss threshold cannot see it: difficulty swamps a gap of 2.
    assert score_auc(trained[member], trained[~member]) < 0.75


def test_recentring_removes_a_global_shift_and_keeps_the_signal() -> None:
    rng = np.random.default_rng(1)
    difficulty, is_in, stats = shadows(rng, 16, 2000, gap=2.0)
    cal = LiraCalibration.fit(stats, is_in)
    member = np.arange(2000) < 1000
    trained = difficulty + 2.0 * member + rng.normal(0.0, 1.0, 2000) - 6.0  # much less sure
    res = lira_attack(cal, trained, member, ~member)
    assert res.recentred_auc > 0.8
    assert res.recentred_auc > res.auc  # the shift hides part of the signal from plain LiRA


def test_calibration_needs_in_and_out_models_for_every_candidate() -> None:
    stats = np.zeros((4, 3))
    is_in = np.array([[1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1]], dtype=bool)
    with pytest.raises(InvalidPayload, match="IN and one OUT"):
        LiraCalibration.fit(stats, is_in)


def test_epsilon_is_near_zero_for_one_family_and_large_for_two() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(0.0, 3.0, 300)
    same_a = base + rng.normal(0.0, 1.0, (40, 300))
    same_b = base + rng.normal(0.0, 1.0, (40, 300))
    apart = base + 4.0 + rng.normal(0.0, 1.0, (40, 300))
    eps_same = per_example_epsilon(same_a, same_b)
    eps_apart = per_example_epsilon(apart, same_b)
    assert np.median(eps_same) < 0.5 < np.median(eps_apart)
    # The fit itself errs (40 models a family): F falls a little short of 1 even for one family.
    assert forgetting_score(eps_same) > 0.8 > 0.1 > forgetting_score(eps_apart)


def test_forgetting_score_bins() -> None:
    assert forgetting_score(np.array([0.0, 0.49])) == 1.0
    assert forgetting_score(np.array([0.5])) == 0.5
    assert forgetting_score(np.array([1.2, 0.0])) == pytest.approx((0.25 + 1.0) / 2)
