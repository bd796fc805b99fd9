"""Partitions, client data slices and the `i/N` client spec."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forsaken.common.datasets import load_dataset
from forsaken.common.errors import ConfigError
from forsaken.common.partition import client_split, parse_client_spec, partition


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    assert np.array_equal(np.sort(joined), np.arange(n))
    assert all(np.all(np.diff(p) > 0) for p in parts)  # ascending, so no repeats inside


def _skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each part's label mix and the global one."""
    classes = labels.max() + 1
    overall = np.bincount(labels, minlength=classes) / len(labels)
    per_part = [np.bincount(labels[p], minlength=classes) / len(p) for p in parts]
    return float(np.mean([0.5 * np.abs(mix - overall).sum() for mix in per_part]))


LABELS = np.repeat(np.arange(10), 100)


def test_iid_parts_are_balanced_disjoint_and_cover() -> None:
    parts = partition(LABELS, 7, "iid", seed=3)
    _assert_disjoint_cover(parts, len(LABELS))
    assert {len(p) for p in parts} <= {142, 143}


def test_partition_is_deterministic_for_a_seed() -> None:
    for scheme in ("iid", "dirichlet"):
        a = partition(LABELS, 5, scheme, alpha=0.3, seed=11)
        b = partition(LABELS, 5, scheme, alpha=0.3, seed=11)
        c = partition(LABELS, 5, scheme, alpha=0.3, seed=12)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    def mean_skew(alpha: float) -> float:
        return np.mean(
            [_skew(LABELS, partition(LABELS, 5, "dirichlet", alpha, s)) for s in range(5)]
        )

    iid = np.mean([_skew(LABELS, partition(LABELS, 5, "iid", seed=s)) for s in range(5)])
    high, mid, low = mean_skew(100.0), mean_skew(1.0), mean_skew(0.05)
    assert iid < 0.1 and high < 0.1
    assert high < mid < low
    assert low > 0.5  # near one-class-per-client at alpha 0.05


def test_dirichlet_guarantees_the_minimum_part_size() -> None:
    # Tiny alpha puts nearly all of each class on one part; many parts would be empty.
    parts = partition(LABELS, 20, "dirichlet", alpha=0.01, seed=0, min_size=30)
    _assert_disjoint_cover(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 30


@settings(max_examples=60, deadline=None)
@given(
    n_classes=st.integers(1, 6),
    n=st.integers(20, 300),
    num_parts=st.integers(1, 8),
    alpha=st.floats(0.01, 10.0),
    seed=st.integers(0, 2**32 - 1),
    scheme=st.sampled_from(["iid", "dirichlet"]),
)
def test_any_partition_is_disjoint_covering_and_big_enough(
    n_classes: int, n: int, num_parts: int, alpha: float, seed: int, scheme: str
) -> None:
    labels = np.random.default_rng(seed).integers(0, n_classes, size=n)
    min_size = min(5, n // num_parts)
    parts = partition(labels, num_parts, scheme, alpha, seed, min_size=min_size)
    assert len(parts) == num_parts
    _assert_disjoint_cover(parts, n)
    assert min(len(p) for p in parts) >= min_size


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scheme": "shards"}, "unknown partition scheme 'shards'"),
        ({"num_parts": 0}, "into 0 parts"),
        ({"num_parts": 200}, "cannot give 200 parts"),
        ({"scheme": "dirichlet", "alpha": 0.0}, "alpha must be positive"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_partition_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"num_parts": 5, "scheme": "iid", **kwargs}
    with pytest.raises(ConfigError, match=message):
        partition(LABELS, **args)


def test_client_split_reserves_a_held_out_slice_never_trained_on() -> None:
    ds = load_dataset("digits")
    parts = partition(ds.y_train, 3, "dirichlet", 0.5, seed=4)
    seen: list[np.ndarray] = []
    for index in range(3):
        data = client_split(ds, index, 3, "dirichlet", 0.5, seed=4)
        assert not set(data.ids_train) & set(data.ids_held_out)
        mine = np.concatenate([data.ids_train, data.ids_held_out])
        assert np.array_equal(np.sort(mine), ds.ids_train[parts[index]])
        assert len(data.ids_held_out) == round(0.1 * len(mine))
        # Rows are the dataset's rows for those ids.
        rows = np.searchsorted(ds.ids_train, data.ids_held_out)
        np.testing.assert_array_equal(data.x_held_out, ds.x_train[rows])
        np.testing.assert_array_equal(data.y_held_out, ds.y_train[rows])
        seen.append(np.sort(mine))
    _assert_disjoint_cover([np.searchsorted(ds.ids_train, s) for s in seen], len(ds.y_train))


def test_client_split_is_stable_and_keyed_on_seed() -> None:
    ds = load_dataset("digits")
    a = client_split(ds, 1, 4, seed=9)
    b = client_split(ds, 1, 4, seed=9)
    c = client_split(ds, 1, 4, seed=10)
    assert np.array_equal(a.ids_held_out, b.ids_held_out)
    assert np.array_equal(a.ids_train, b.ids_train)
    assert not np.array_equal(a.ids_held_out, c.ids_held_out)


def test_client_split_without_held_out() -> None:
    data = client_split(load_dataset("digits"), 0, 2, held_out_fraction=0.0)
    assert len(data.ids_held_out) == 0 and len(data.y_held_out) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [((3, 3), "not in 0..2"), ((-1, 3), "not in 0..2")],
)
def test_client_split_rejects_a_bad_index(args: tuple[int, int], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        client_split(load_dataset("digits"), *args)


def test_client_split_rejects_a_bad_fraction() -> None:
    with pytest.raises(ConfigError, match="held_out_fraction"):
        client_split(load_dataset("digits"), 0, 2, held_out_fraction=1.0)


@pytest.mark.parametrize(("spec", "want"), [("0/5", (0, 5)), (" 4/5 ", (4, 5)), ("0/1", (0, 1))])
def test_client_spec_parses(spec: str, want: tuple[int, int]) -> None:
    assert parse_client_spec(spec) == want


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("5/5", r"index must be in 0\.\.4"),
        ("-1/3", r"index must be in 0\.\.2"),
        ("0/0", "at least 1"),
        ("1/-2", "at least 1"),
        ("a/b", "not of the form i/N"),
        ("3", "not of the form i/N"),
        ("1/2/3", "not of the form i/N"),
        ("", "not of the form i/N"),
        ("1.0/2", "not of the form i/N"),
    ],
)
def test_client_spec_rejects_junk(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_client_spec(spec)
