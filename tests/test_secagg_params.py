"""Parameter choice, index assignment and the k-regular neighbour graph."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forsaken.common.errors import ConfigError
from forsaken.common.secagg.graph import build_graph, mask_sign
from forsaken.common.secagg.params import (
    SecAggConfig,
    SecAggParams,
    assign_indices,
    choose_parameters,
)


@pytest.mark.parametrize("n", [5, 10, 20, 30])
def test_small_federations_use_classic_secagg(n: int) -> None:
    p = choose_parameters(n, 0.1, 0.05)
    assert p.neighbors == n - 1 and p.complete
    assert p.threshold > (n - 1) / 2


@pytest.mark.parametrize("n", [100, 1000, 10_000, 1_000_000])
@pytest.mark.parametrize(("dropout", "corruption"), [(0.0, 0.0), (0.1, 0.05), (0.2, 0.1)])
def test_large_federations_get_logarithmic_sparse_graphs(
    n: int, dropout: float, corruption: float
) -> None:
    p = choose_parameters(n, dropout, corruption)
    assert p.neighbors % 2 == 0 and p.neighbors < n - 1
    assert 2 * math.ceil(math.log2(n)) <= p.neighbors <= 12 * math.log2(n)
    assert p.neighbors / 2 < p.threshold <= p.neighbors
    # Enough honest live neighbours remain on average for the threshold.
    assert (1 - dropout) * p.neighbors > p.threshold


def test_more_dropout_or_corruption_never_means_fewer_neighbours() -> None:
    base = choose_parameters(1000, 0.05, 0.05)
    assert choose_parameters(1000, 0.2, 0.05).neighbors >= base.neighbors
    assert choose_parameters(1000, 0.05, 0.2).neighbors >= base.neighbors


def test_impossible_settings_are_rejected() -> None:
    with pytest.raises(ConfigError):
        choose_parameters(3, 0.4, 0.0)  # one dropout leaves fewer than t live neighbours
    with pytest.raises(ConfigError):
        choose_parameters(1, 0.0, 0.0)
    with pytest.raises(ConfigError):
        choose_parameters(100, 0.6, 0.0)


@pytest.mark.parametrize(
    ("n", "k", "t", "bits"),
    [(1, 1, 1, 8), (10, 10, 5, 8), (10, 3, 2, 8), (10, 4, 5, 8), (10, 4, 0, 8), (10, 4, 3, 29)],
)
def test_invalid_params_are_rejected(n: int, k: int, t: int, bits: int) -> None:
    with pytest.raises(ConfigError):
        SecAggParams(n, k, t, bits)


def test_config_encoding_distinguishes_every_field() -> None:
    p = SecAggParams(10, 4, 3, 8)
    encodings = {
        SecAggConfig(p, 5).encode(),
        SecAggConfig(p, 6).encode(),
        SecAggConfig(p, 5, active=True).encode(),
        SecAggConfig(p, 5, context=b"round-1").encode(),
        SecAggConfig(SecAggParams(10, 4, 4, 8), 5).encode(),
        SecAggConfig(SecAggParams(10, 6, 4, 8), 5).encode(),
    }
    assert len(encodings) == 6


def test_assign_indices_is_sorted_from_one() -> None:
    assert assign_indices(["node-b", "node-a", "node-c"]) == {
        "node-a": 1,
        "node-b": 2,
        "node-c": 3,
    }
    with pytest.raises(ConfigError):
        assign_indices(["x", "x"])


@settings(max_examples=40, deadline=None)
@given(
    members=st.sets(st.integers(1, 500), min_size=3, max_size=60),
    half=st.integers(1, 10),
    session=st.binary(min_size=32, max_size=32),
)
def test_graph_is_k_regular_symmetric_and_deterministic(
    members: set[int], half: int, session: bytes
) -> None:
    k = 2 * half
    graph = build_graph(members, k, session)
    assert set(graph) == members
    degree = min(k, len(members) - 1)
    for i, neighbours in graph.items():
        assert len(neighbours) == degree == len(set(neighbours))
        assert i not in neighbours
        assert list(neighbours) == sorted(neighbours)
        assert all(i in graph[j] for j in neighbours)
    assert build_graph(sorted(members, reverse=True), k, session) == graph


def test_graph_depends_on_the_session_id() -> None:
    a = build_graph(range(1, 101), 8, bytes(32))
    b = build_graph(range(1, 101), 8, bytes([1]) * 32)
    assert a != b


def test_odd_k_complete_and_impossible_cases() -> None:
    graph = build_graph(range(1, 9), 7, bytes(32))
    assert all(len(v) == 7 for v in graph.values())
    graph = build_graph(range(1, 11), 3, bytes(32))  # odd k, even m: ring plus the opposite
    assert all(len(v) == 3 for v in graph.values())
    with pytest.raises(ValueError):
        build_graph(range(1, 10), 3, bytes(32))


def test_mask_signs_cancel_pairwise() -> None:
    assert mask_sign(2, 5) + mask_sign(5, 2) == 0
    with pytest.raises(ValueError):
        mask_sign(3, 3)


@pytest.mark.parametrize("n", [1000, 100_000])
def test_active_mode_bounds_corrupted_neighbours_below_2t_minus_k(n: int) -> None:
    """A malicious server can split a client's honest neighbours between its two kinds of
    shares; corrupted neighbours answer both, so fewer than 2t - k of them may exist."""
    from forsaken.common.secagg.params import _binomial_tail

    passive = choose_parameters(n, 0.1, 0.1)
    active = choose_parameters(n, 0.1, 0.1, active=True)
    assert active.threshold > passive.threshold or active.neighbors > passive.neighbors
    k, t = active.neighbors, active.threshold
    assert not active.complete
    assert n * _binomial_tail(k, 0.1, 2 * t - k) <= 2.0**-40
    # The passive choice does not meet that bound: the active rule is doing work.
    k0, t0 = passive.neighbors, passive.threshold
    assert n * _binomial_tail(k0, 0.1, 2 * t0 - k0) > 2.0**-40


def test_active_mode_complete_graph_threshold_counts_corrupted_clients() -> None:
    from forsaken.common.secagg.params import complete_threshold

    # n = 10, c = 0.2: 2 corrupted among k = 9 neighbours. Passive: majority, t = 5.
    # Active: t - 2 + t - 2 > 9 - 2, so t >= 6.
    assert complete_threshold(10, 0.2) == 5
    assert complete_threshold(10, 0.2, active=True) == 6
    assert choose_parameters(10, 0.1, 0.2, active=True).threshold == 6
    p = choose_parameters(100, 0.1, 0.1, active=True)  # complete graph: exact counts
    assert p.complete and 2 * p.threshold - p.neighbors > 10


def test_round_parameters_recompute_the_threshold_for_an_operators_degree() -> None:
    from forsaken.server.secure_round import SecureSettings, round_parameters

    for active in (False, True):
        auto = round_parameters(200, SecureSettings(active=active))
        chosen = round_parameters(200, SecureSettings(neighbors=40, active=active))
        assert chosen.neighbors == 40 and 20 < chosen.threshold <= 40
        assert auto.neighbors != 40
    passive = round_parameters(200, SecureSettings(neighbors=40))
    active = round_parameters(200, SecureSettings(neighbors=40, active=True))
    assert active.threshold >= passive.threshold
