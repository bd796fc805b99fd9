"""Whole SecAgg+ rounds in process: exact sums under dropouts, clean aborts, masked vectors
that look uniform."""

from __future__ import annotations

import hashlib
import math
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forsaken.common.secagg.client_states import ClientIdentity, start_client
from forsaken.common.secagg.graph import build_graph
from forsaken.common.secagg.messages import KeysBroadcast, MaskedInput, Stage
from forsaken.common.secagg.params import SecAggConfig, SecAggParams, choose_parameters
from forsaken.common.secagg.quantize import dequantize_sum, quantize
from forsaken.common.secagg.runner import run_round
from forsaken.common.secagg.transcript import session_id

CLIP = 1.0


def seed(label: bytes, i: int) -> bytes:
    return hashlib.sha256(b"round-test/" + label + i.to_bytes(4, "big")).digest()


def make_inputs(
    n: int, d: int, bits: int
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[int, bytes]]:
    rng = np.random.default_rng(n * 1000 + d)
    updates = {i: rng.normal(0.0, 0.4, d).astype(np.float32) for i in range(1, n + 1)}
    inputs = {i: quantize(updates[i], 10 * i, CLIP, bits, seed(b"rounding", i), n) for i in updates}
    return updates, inputs, {i: seed(b"round", i) for i in updates}


def plain_sum(inputs: dict[int, np.ndarray], members: tuple[int, ...]) -> np.ndarray:
    total = np.zeros_like(inputs[members[0]])
    for i in members:
        total += inputs[i]  # uint32 wraps, as the masked sum does
    return total


N, D = 100, 1000
SCENARIOS = [
    pytest.param(0.0, {}, id="no-dropout"),
    pytest.param(0.1, {Stage.MASKED_INPUT: 0.1}, id="10%-after-share-keys"),
    pytest.param(0.3, {Stage.MASKED_INPUT: 0.3}, id="30%-after-share-keys"),
    pytest.param(0.1, {Stage.UNMASKING: 0.1}, id="10%-after-masked-input"),
    pytest.param(0.3, {Stage.UNMASKING: 0.3}, id="30%-after-masked-input"),
    pytest.param(0.2, {Stage.MASKED_INPUT: 0.1, Stage.UNMASKING: 0.1}, id="10%-and-10%"),
]


@pytest.mark.parametrize("graph", ["chosen", "complete"])
@pytest.mark.parametrize(("rate", "dropouts"), SCENARIOS)
def test_unmasked_sum_is_exact_for_100_clients(
    graph: str, rate: float, dropouts: dict[Stage, float]
) -> None:
    chosen = choose_parameters(N, rate, 0.05)
    params = chosen if graph == "chosen" else SecAggParams(N, N - 1, N // 2, chosen.bits)
    config = SecAggConfig(params, D + 1, context=b"round-7")
    updates, inputs, seeds = make_inputs(N, D, params.bits)
    rng = random.Random(f"{graph}-{rate}-{sorted(dropouts.items())}")
    remaining, drop = list(range(1, N + 1)), {}
    for stage, fraction in dropouts.items():
        drop[stage] = set(rng.sample(remaining, round(fraction * N)))
        remaining = [i for i in remaining if i not in drop[stage]]

    report = run_round(config, inputs, seeds, drop)

    result = report.result
    assert result is not None, report.server
    assert result.survivors == tuple(
        i for i in range(1, N + 1) if i not in drop.get(Stage.MASKED_INPUT, ())
    )
    assert np.array_equal(result.vector, plain_sum(inputs, result.survivors))
    decoded, samples = dequantize_sum(result.vector, len(result.survivors), CLIP, params.bits)
    assert samples == sum(10 * i for i in result.survivors)
    float_sum = np.sum([np.clip(updates[i], -CLIP, CLIP) for i in result.survivors], axis=0)
    assert np.max(np.abs(decoded - float_sum)) < 1e-4
    # Upload of a client that took part throughout: keys (4 + 32 + 32 bytes), its seed
    # commitment (32), one sealed share with its commitment (4 + 4 + 156 + 64) and one revealed
    # share (4 + 4 + 66) per neighbour, and the masked vector.
    full = next(i for i in range(1, N + 1) if i not in report.silent)
    assert report.bytes_up[full] == 68 + 32 + params.neighbors * (228 + 74) + 4 * (D + 1)


@pytest.mark.parametrize(
    ("params", "fraction", "stage", "needle"),
    [
        (choose_parameters(N, 0.1, 0.05), 0.6, Stage.MASKED_INPUT, "sent masked input"),
        (choose_parameters(N, 0.1, 0.05), 0.6, Stage.UNMASKING, "cannot reconstruct"),
        (SecAggParams(N, N - 1, N // 2, 25), 0.55, Stage.MASKED_INPUT, "sent masked input"),
    ],
)
def test_too_few_survivors_abort_with_a_clear_reason(
    params: SecAggParams, fraction: float, stage: Stage, needle: str
) -> None:
    config = SecAggConfig(params, D + 1)
    _, inputs, seeds = make_inputs(N, D, params.bits)
    dropped = set(random.Random(1).sample(range(1, N + 1), round(fraction * N)))
    report = run_round(config, inputs, seeds, {stage: dropped})
    assert report.result is None
    assert report.server.stage == Stage.ABORTED
    assert needle in report.server.reason and "threshold" in report.server.reason


def _chi_square_critical(df: int, z: float) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at normal quantile z."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _looks_uniform(words: np.ndarray) -> bool:
    """Byte histogram chi-square and per-bit balance, both at a ~1e-6 false-alarm level."""
    counts = np.bincount(words.view(np.uint8), minlength=256)
    expected = counts.sum() / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    bits = (words[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    z = np.abs(bits.sum(axis=0) - words.size / 2) / math.sqrt(words.size / 4)
    return chi2 < _chi_square_critical(255, 4.75) and bool(np.all(z < 5.0))


def test_masked_vectors_look_uniform_and_only_unmasking_recovers_the_sum() -> None:
    n, d = 12, 40_000
    params = choose_parameters(n, 0.1, 0.0)
    config = SecAggConfig(params, d + 1)
    zeros = np.zeros(d, dtype=np.float32)  # the most structured input there is
    inputs = {i: quantize(zeros, 5, CLIP, params.bits, seed(b"r", i), n) for i in range(1, n + 1)}
    seeds = {i: seed(b"u", i) for i in range(1, n + 1)}
    report = run_round(config, inputs, seeds, {Stage.MASKED_INPUT: {n}}, watch=1)
    assert report.result is not None

    # The test has power: the plain quantized input fails it (its top bits are always zero).
    assert not _looks_uniform(inputs[1])
    # Replaying client 1's (pure) states reproduces exactly the masked vector it uploaded.
    state, _ = start_client(ClientIdentity(config, 1, seeds[1]), inputs[1])
    for message in report.watched[:2]:
        state, reply = state.handle(message)
    assert isinstance(reply, MaskedInput)
    assert _looks_uniform(reply.vector)
    assert not np.array_equal(reply.vector, inputs[1])

    survivors = report.result.survivors
    assert np.array_equal(report.result.vector, plain_sum(inputs, survivors))
    # Without unmasking, the sum of the masked inputs is not the sum of the inputs: the self
    # masks and the dropped client's pairwise masks are still in it.
    assert not np.array_equal(report.unmask_state.masked.total.vector, plain_sum(inputs, survivors))


def test_parallel_unmasking_matches_sequential() -> None:
    n, d = 20, 3000
    params = choose_parameters(n, 0.1, 0.0)
    config = SecAggConfig(params, d + 1)
    _, inputs, seeds = make_inputs(n, d, params.bits)
    report = run_round(config, inputs, seeds, {Stage.MASKED_INPUT: {3, 9}})
    assert report.result is not None and report.unmask_state is not None
    with ThreadPoolExecutor(3) as pool:
        parallel, _ = report.unmask_state.close(pool, 3)
    assert np.array_equal(parallel.result.vector, report.result.vector)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(5, 9),
    sparse=st.booleans(),
    after_share=st.sets(st.integers(2, 9), max_size=4),
    after_masked=st.sets(st.integers(2, 9), max_size=3),
)
def test_masks_cancel_for_any_dropout_set_or_the_round_aborts(
    n: int, sparse: bool, after_share: set[int], after_masked: set[int]
) -> None:
    """Exact whenever every needed client keeps t live neighbours; a clean abort otherwise."""
    k = 4 if sparse and n > 5 else n - 1
    params = SecAggParams(n, k, k // 2 + 1, 20)
    config = SecAggConfig(params, 9)
    _, inputs, seeds = make_inputs(n, 8, params.bits)
    dropped = {i for i in after_share if i <= n}
    late = {i for i in after_masked if i <= n} - dropped
    report = run_round(
        config, inputs, seeds, {Stage.MASKED_INPUT: dropped, Stage.UNMASKING: late}, watch=1
    )

    broadcast = report.watched[0]
    assert isinstance(broadcast, KeysBroadcast)
    graph = build_graph(range(1, n + 1), k, session_id(config, broadcast.keys))
    u3 = set(range(1, n + 1)) - dropped
    u4 = u3 - late
    t = params.threshold
    feasible = len(u3) >= t and all(
        len(u3.intersection(graph[j])) >= t and len(u4.intersection(graph[j])) >= t
        for j in range(1, n + 1)
    )
    if feasible:
        assert report.result is not None, report.server
        assert np.array_equal(report.result.vector, plain_sum(inputs, tuple(sorted(u3))))
    else:
        assert report.result is None
        assert "threshold" in report.server.reason


def test_the_count_slot_travels_in_the_clear_and_everything_else_is_masked() -> None:
    n, d = 5, 2000
    params = choose_parameters(n, 0.0, 0.0)
    config = SecAggConfig(params, d + 1)
    zeros = np.zeros(d, dtype=np.float32)
    inputs = {i: quantize(zeros, 7 * i, CLIP, params.bits, seed(b"c", i), n) for i in range(1, 6)}
    seeds = {i: seed(b"s", i) for i in range(1, n + 1)}
    report = run_round(config, inputs, seeds, {}, watch=1)
    state, _ = start_client(ClientIdentity(config, 1, seeds[1]), inputs[1])
    for message in report.watched[:2]:
        state, reply = state.handle(message)
    assert isinstance(reply, MaskedInput)
    assert int(reply.vector[-1]) == 7  # the server can read and check it on arrival
    assert _looks_uniform(reply.vector[:-1])
    assert report.result is not None and int(report.result.vector[-1]) == 7 * 15
    assert np.array_equal(report.result.vector, plain_sum(inputs, report.result.survivors))
