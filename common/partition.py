"""Splitting the train split among clients, and each client's reserved held-out slice.

Every client computes the whole partition from the shared run seed and keeps its own part, so
no coordinator has to hand out data assignments and a retrain-from-scratch reference run sees
exactly the same client data.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from forsaken.common.datasets import Dataset
from forsaken.common.errors import ConfigError

DEFAULT_MIN_PART_SIZE = 10

_SPEC = re.compile(r"([+-]?\d+)/([+-]?\d+)")


@dataclass(frozen=True, slots=True, eq=False)
class ClientData:
    """One client's local data. The held-out slice is never trained on: it is the client's
    reference for "data the model never saw" when checking that forgetting worked."""

    x_train: np.ndarray  # (n, C, H, W) float32
    y_train: np.ndarray  # (n,) int64
    ids_train: np.ndarray  # (n,) global sample ids
    x_held_out: np.ndarray
    y_held_out: np.ndarray
    ids_held_out: np.ndarray


def parse_client_spec(spec: str) -> tuple[int, int]:
    """Parse the CLI's `"i/N"` (0-based client i of N) into `(i, N)`."""
    match = _SPEC.fullmatch(spec.strip())
    if match is None:
        raise ConfigError(f"client spec {spec!r} is not of the form i/N, e.g. 0/5")
    index, total = int(match[1]), int(match[2])
    if total < 1:
        raise ConfigError(f"client spec {spec!r}: the number of clients must be at least 1")
    if not 0 <= index < total:
        raise ConfigError(f"client spec {spec!r}: index must be in 0..{total - 1} (0-based)")
    return index, total


def partition(
    labels: np.ndarray,
    num_parts: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    min_size: int = DEFAULT_MIN_PART_SIZE,
) -> list[np.ndarray]:
    """Split `range(len(labels))` into `num_parts` disjoint, covering, ascending index arrays.

    `iid` deals a random permutation out evenly. `dirichlet` gives each class's samples to the
    parts in proportions drawn from Dirichlet(alpha): small alpha means strong label skew. Every
    part gets at least `min_size` samples. Deterministic for a seed.
    """
    labels = np.asarray(labels)
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown partition scheme {scheme!r}; expected one of {sorted(SCHEMES)}")
    if num_parts < 1:
        raise ConfigError(f"cannot partition into {num_parts} parts")
    if min_size < 1:
        raise ConfigError(f"min_size must be at least 1, got {min_size}")
    if seed < 0:
        raise ConfigError(f"the partition seed must be non-negative, got {seed}")
    if len(labels) < num_parts * min_size:
        raise ConfigError(
            f"{len(labels)} samples cannot give {num_parts} parts of at least {min_size} each"
        )
    rng = np.random.default_rng(seed)
    parts = SCHEMES[scheme](labels, num_parts, alpha, rng)
    _top_up(parts, min_size, rng)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _iid(labels: np.ndarray, num_parts: int, alpha: float, rng: np.random.Generator) -> list:
    del alpha  # only the Dirichlet scheme uses it
    return [list(chunk) for chunk in np.array_split(rng.permutation(len(labels)), num_parts)]


def _dirichlet(labels: np.ndarray, num_parts: int, alpha: float, rng: np.random.Generator) -> list:
    if not alpha > 0:
        raise ConfigError(f"the Dirichlet alpha must be positive, got {alpha}")
    parts: list[list[int]] = [[] for _ in range(num_parts)]
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        shares = rng.dirichlet(np.full(num_parts, alpha))
        cuts = np.floor(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for part, chunk in zip(parts, np.split(members, cuts), strict=True):
            part.extend(chunk.tolist())
    return parts


SCHEMES: dict[str, Callable[[np.ndarray, int, float, np.random.Generator], list]] = {
    "iid": _iid,
    "dirichlet": _dirichlet,
}


def _top_up(parts: list[list[int]], min_size: int, rng: np.random.Generator) -> None:
    """Move random samples from the largest part to any part below `min_size`, in place.

    A repair rather than resampling until lucky: it always terminates (the caller checked there
    are enough samples) and disturbs the label skew only as much as the guarantee requires.
    """
    for part in parts:
        while len(part) < min_size:
            donor = max(parts, key=len)
            take = min(min_size - len(part), len(donor) - min_size)
            picks = set(rng.choice(len(donor), size=take, replace=False).tolist())
            part.extend(donor[i] for i in sorted(picks))
            donor[:] = [s for i, s in enumerate(donor) if i not in picks]


def client_split(
    dataset: Dataset,
    index: int,
    num_parts: int,
    scheme: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    held_out_fraction: float = 0.1,
) -> ClientData:
    """Client `index`'s part of the train split, minus a reserved held-out slice (`hold_out`)."""
    if not 0 <= index < num_parts:
        raise ConfigError(f"client index {index} is not in 0..{num_parts - 1}")
    if not 0.0 <= held_out_fraction < 1.0:
        raise ConfigError(f"held_out_fraction must be in [0, 1), got {held_out_fraction}")
    part = partition(dataset.y_train, num_parts, scheme, alpha, seed)[index]
    train, held = hold_out(part, held_out_fraction, seed, index)
    return ClientData(
        x_train=dataset.x_train[train],
        y_train=dataset.y_train[train],
        ids_train=dataset.ids_train[train],
        x_held_out=dataset.x_train[held],
        y_held_out=dataset.y_train[held],
        ids_held_out=dataset.ids_train[held],
    )


def hold_out(
    part: np.ndarray, fraction: float, seed: int, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split a client's sample indices `part` into (train, held-out), both ascending.

    The held-out slice (at least one sample when the fraction is positive, never the whole
    part) is drawn from a generator keyed on (seed, index), so it is stable across restarts.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"held_out_fraction must be in [0, 1), got {fraction}")
    n_held = 0 if fraction == 0 else max(1, round(fraction * len(part)))
    n_held = min(n_held, len(part) - 1)
    rng = np.random.default_rng([seed, index, 0x6E1D])  # 0x6E1D: a tag for "held-out"
    held = np.sort(rng.choice(part, size=n_held, replace=False))
    return np.setdiff1d(part, held), held
