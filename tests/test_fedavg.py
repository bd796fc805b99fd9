"""FedAvg arithmetic: the weighted mean, its order independence, and applying it."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forsaken.common.errors import InvalidPayload
from forsaken.common.fedavg import apply_update, weighted_average


def test_weighted_average_matches_a_hand_computation() -> None:
    updates = [
        (np.array([1.0, 2.0, -4.0], dtype=np.float32), 1),
        (np.array([3.0, 6.0, 0.0], dtype=np.float32), 3),
    ]
    # (1*1 + 3*3)/4, (1*2 + 3*6)/4, (1*-4 + 3*0)/4
    expected = np.array([2.5, 5.0, -1.0], dtype=np.float32)
    result = weighted_average(updates)
    assert result.dtype == np.float32
    np.testing.assert_array_equal(result, expected)


def test_cancellation_gives_the_same_bits_in_every_order() -> None:
    # Summed naively, 1e30 + 1 - 1e30 is 0 in one order and 1 in another; the digest order
    # makes every permutation agree.
    updates = [
        (np.array([1e30, 1.0], dtype=np.float32), 1),
        (np.array([1.0, 2.0], dtype=np.float32), 1),
        (np.array([-1e30, 3.0], dtype=np.float32), 1),
    ]
    results = {weighted_average(list(p)).tobytes() for p in itertools.permutations(updates)}
    assert len(results) == 1


def test_single_update_is_returned_unchanged() -> None:
    vector = np.array([0.1, -0.2, 0.3], dtype=np.float32)
    np.testing.assert_array_equal(weighted_average([(vector, 17)]), vector)


@settings(max_examples=50, deadline=None)
@given(
    data=st.data(),
    size=st.integers(1, 50),
    count=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_weighted_average_is_bit_identical_in_any_order(
    data: st.DataObject, size: int, count: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    # Mixed magnitudes make float summation order matter, which is what is being tested.
    scales = 10.0 ** rng.integers(-6, 6, size=(count, 1))
    updates = [
        (v.astype(np.float32), int(n))
        for v, n in zip(
            rng.standard_normal((count, size)) * scales, rng.integers(1, 1000, count), strict=True
        )
    ]
    order = data.draw(st.permutations(range(count)))
    shuffled = [updates[i] for i in order]
    assert weighted_average(updates).tobytes() == weighted_average(shuffled).tobytes()
    reference = np.average(
        np.stack([u.astype(np.float64) for u, _ in updates]),
        axis=0,
        weights=[n for _, n in updates],
    )
    np.testing.assert_allclose(weighted_average(updates), reference, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize(
    ("updates", "message"),
    [
        ([], "empty"),
        ([(np.zeros(3, np.float32), 1), (np.zeros(4, np.float32), 1)], r"update 1 has shape"),
        ([(np.zeros((2, 2), np.float32), 1)], "expected 1-D"),
        ([(np.zeros(3, np.float32), 0)], "sample count 0"),
        ([(np.zeros(3, np.float32), True)], "sample count True"),
        ([(np.array([1.0, np.nan], np.float32), 2)], "NaN or Inf"),
    ],
)
def test_weighted_average_rejects_bad_input(updates: list, message: str) -> None:
    with pytest.raises(InvalidPayload, match=message):
        weighted_average(updates)


def test_apply_update_adds_into_a_new_vector() -> None:
    global_vec = np.array([1.0, 2.0], dtype=np.float32)
    new = apply_update(global_vec, np.array([0.5, -2.0], dtype=np.float32))
    np.testing.assert_array_equal(new, [1.5, 0.0])
    np.testing.assert_array_equal(global_vec, [1.0, 2.0])  # the old model is untouched
    assert new.dtype == np.float32


def test_apply_update_rejects_a_mismatched_or_broken_delta() -> None:
    with pytest.raises(InvalidPayload, match="does not fit"):
        apply_update(np.zeros(3, np.float32), np.zeros(2, np.float32))
    with pytest.raises(InvalidPayload, match="NaN or Inf"):
        apply_update(np.zeros(1, np.float32), np.array([np.inf], np.float32))
