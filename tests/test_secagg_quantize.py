"""Fixed-point encoding: unbiased stochastic rounding, clipping, and overflow-free sums."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forsaken.common.errors import InvalidPayload
from forsaken.common.secagg.params import choose_parameters
from forsaken.common.secagg.quantize import dequantize_sum, max_bits, max_samples, quantize


def seed(i: int) -> bytes:
    return hashlib.sha256(b"rounding" + i.to_bytes(4, "big")).digest()


@given(st.integers(1, 10**7))
def test_max_bits_is_the_largest_safe_width(n: int) -> None:
    b = max_bits(n)
    assert n * ((1 << b) - 1) < 1 << 32
    assert b == 32 or n * ((1 << (b + 1)) - 1) >= 1 << 32


@pytest.mark.parametrize("n", [10, 100, 1000, 100_000])
def test_chosen_parameters_keep_the_sum_below_2_to_32(n: int) -> None:
    p = choose_parameters(n, 0.1, 0.05)
    assert n * ((1 << p.bits) - 1) < 1 << 32
    assert n * max_samples(n) < 1 << 32


def test_stochastic_rounding_is_unbiased() -> None:
    clip, bits, n = 1.0, 4, 3  # a coarse grid makes rounding bias easy to see
    values = np.array([-0.9, -0.33, 0.0, 0.123, 0.5, 0.77], dtype=np.float32)
    draws = 4000
    total = np.zeros(values.size)
    for i in range(draws):
        total += dequantize_sum(quantize(values, 0, clip, bits, seed(i), n), 1, clip, bits)[0]
    mean = total / draws
    step = 2 * clip / ((1 << bits) - 1)
    # Each draw is off by at most one grid step, so the mean's standard error is < step/sqrt(4N).
    assert np.all(np.abs(mean - values) < 5 * step / (2 * np.sqrt(draws)))
    # Deterministic rounding would be off by up to step/2 for these values; make sure the test
    # would notice it by checking one value that sits far from the grid.
    nearest = np.round((values + clip) / step) * step - clip
    assert np.max(np.abs(nearest - values)) > 10 * step / (2 * np.sqrt(draws))


def test_clipping_and_grid_end_points() -> None:
    values = np.array([-5.0, -1.0, 1.0, 7.5, np.inf, -np.inf], dtype=np.float32)
    q = quantize(values, 3, 1.0, 8, seed(0), 4)
    assert q.dtype == np.uint32 and q.shape == (7,)
    assert list(q[:-1]) == [0, 0, 255, 255, 255, 0]
    assert q[-1] == 3
    decoded, samples = dequantize_sum(q, 1, 1.0, 8)
    assert np.allclose(decoded, [-1, -1, 1, 1, 1, -1])
    assert samples == 3


def test_exact_grid_points_round_to_themselves() -> None:
    clip, bits = 2.0, 6
    grid = np.arange(1 << bits) * (2 * clip / ((1 << bits) - 1)) - clip
    q = quantize(grid, 0, clip, bits, seed(1), 1)
    assert np.array_equal(q[:-1], np.arange(1 << bits))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(-3, 3, width=32), min_size=1, max_size=50), st.integers(1, 20))
def test_sum_decodes_to_sum_of_clipped_values(values: list[float], n: int) -> None:
    clip, bits = 1.5, max_bits(n)
    x = np.array(values, dtype=np.float32)
    total = np.zeros(x.size + 1, dtype=np.uint32)
    for i in range(n):
        total += quantize(x, 10 + i, clip, bits, seed(i), n)
    decoded, samples = dequantize_sum(total, n, clip, bits)
    step = 2 * clip / ((1 << bits) - 1)
    exact = n * np.clip(x.astype(np.float64), -clip, clip)
    assert np.all(np.abs(decoded - exact) <= n * step + 1e-9)
    assert samples == sum(10 + i for i in range(n))


def test_bad_inputs_are_rejected() -> None:
    x = np.zeros(4, dtype=np.float32)
    with pytest.raises(ValueError):
        quantize(x, 0, 1.0, 30, seed(0), 10)  # 10 * (2^30 - 1) overflows
    with pytest.raises(ValueError):
        quantize(x, max_samples(10) + 1, 1.0, 8, seed(0), 10)
    with pytest.raises(ValueError):
        quantize(x, 0, 0.0, 8, seed(0), 10)
    with pytest.raises(InvalidPayload):
        quantize(np.array([0.0, np.nan]), 0, 1.0, 8, seed(0), 10)
    with pytest.raises(InvalidPayload):
        dequantize_sum(np.zeros(3, dtype=np.int64), 1, 1.0, 8)
