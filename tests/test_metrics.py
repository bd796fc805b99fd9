"""Known-answer checks for the unlearning metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from forsaken.common import metrics as M
from forsaken.common.errors import InvalidPayload


def test_auc_of_perfectly_separated_losses_is_one_and_reversed_is_zero() -> None:
    members, others = np.array([0.01, 0.02, 0.03]), np.array([1.0, 2.0, 3.0, 4.0])
    assert M.mia_auc(members, others) == 1.0
    assert M.mia_auc(others, members) == 0.0


def test_auc_of_identical_distributions_is_one_half() -> None:
    losses = np.array([0.1, 0.5, 0.5, 2.0])
    assert M.mia_auc(losses, losses) == 0.5
    rng = np.random.default_rng(0)
    assert abs(M.mia_auc(rng.exponential(size=4000), rng.exponential(size=4000)) - 0.5) < 0.02


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0, 10), min_size=1, max_size=30),
    st.lists(st.floats(0, 10), min_size=1, max_size=30),
)
def test_auc_is_antisymmetric(a: list[float], b: list[float]) -> None:
    assert math.isclose(
        M.mia_auc(np.array(a), np.array(b)) + M.mia_auc(np.array(b), np.array(a)), 1.0, abs_tol=1e-9
    )


def test_tpr_at_low_fpr() -> None:
    members = np.array([0.0, 0.0, 5.0, 5.0])
    non_members = np.linspace(1.0, 2.0, 100)
    assert M.tpr_at_fpr(members, non_members, 0.01) == 0.5  # only the two zero losses beat 1.0
    assert M.tpr_at_fpr(non_members, non_members, 0.0) == 0.0


def test_kl_of_identical_outputs_is_zero_and_known_value() -> None:
    p = M.softmax(np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 9.0]]))
    assert M.kl_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    got = M.kl_divergence(np.array([[0.5, 0.5]]), np.array([[0.25, 0.75]]))
    assert got == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    with pytest.raises(InvalidPayload):
        M.kl_divergence(p, p[:1])


class _Constant(nn.Module):
    """A 'model' that always predicts one class."""

    def __init__(self, cls: int, classes: int = 10) -> None:
        super().__init__()
        self.logits = torch.full((classes,), -5.0)
        self.logits[cls] = 5.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_asr_of_a_model_that_always_predicts_the_target_is_one() -> None:
    x = np.zeros((7, 1, 8, 8), dtype=np.float32)
    assert M.attack_success_rate(M.model_outputs(_Constant(4), x), target=4) == 1.0
    assert M.attack_success_rate(M.model_outputs(_Constant(2), x), target=4) == 0.0


def test_accuracy_and_losses_match_torch() -> None:
    rng = np.random.default_rng(1)
    logits, labels = rng.normal(size=(20, 5)) * 30, rng.integers(0, 5, 20)
    expected = torch.nn.functional.cross_entropy(
        torch.tensor(logits), torch.tensor(labels), reduction="none"
    ).numpy()
    assert np.allclose(M.per_sample_losses(logits, labels), expected)
    assert M.accuracy(logits, labels) == np.mean(logits.argmax(1) == labels)


def test_forgetting_rate_known_answer() -> None:
    before = np.array([True, True, True, False])
    after = np.array([False, False, True, False])
    # BT = 0.75, BF = 0.25, AF = 0.75: FR = (0.75 - 0.25) / 0.75
    assert M.forgetting_rate(before, after) == pytest.approx(2 / 3)
    assert M.forgetting_rate(before, before) == 0.0
    assert math.isnan(M.forgetting_rate(np.zeros(3, bool), np.zeros(3, bool)))


def test_oracle_is_calibrated_on_its_reference() -> None:
    ref = np.random.default_rng(2).exponential(size=1001)
    assert M.oracle_member_rate(ref, ref, 0.5) == pytest.approx(0.5, abs=0.001)
    assert M.oracle_member_rate(ref * 0, ref, 0.5) == 1.0
