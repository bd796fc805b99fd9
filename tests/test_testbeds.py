"""Scenarios build the data they describe, touch only what is forgotten, and the daemon's
planting matches the in-process runner's."""

from __future__ import annotations

import numpy as np
import pytest

from forsaken.common.backdoor import dataset_trigger, poison_client
from forsaken.common.datasets import load_dataset
from forsaken.common.errors import ConfigError
from forsaken.common.partition import client_split
from forsaken.common.testbeds import (
    LABEL_FLIP_FRACTION,
    PLANTINGS,
    SCENARIOS,
    SUBSET_FRACTION,
    build_test_bed,
    plant_client_data,
)

DS = load_dataset("digits")


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_only_forgotten_samples_are_modified(name: str) -> None:
    bed = build_test_bed(name, DS, 5, seed=3)
    sc = SCENARIOS[name]
    ordinary = client_split(DS, 0, 5, sc.scheme, sc.alpha, 3)
    own = bed.forgetter
    assert np.array_equal(own.ids_train, ordinary.ids_train)
    assert np.array_equal(own.x_held_out, ordinary.x_held_out)  # the held-out slice stays clean
    changed = (own.y_train != ordinary.y_train) | (own.x_train != ordinary.x_train).any(
        axis=(1, 2, 3)
    )
    assert not (changed & ~bed.forget_mask).any()
    assert (changed.any()) == (sc.plant != "")
    for i in range(1, 5):  # the other clients hold their ordinary partition
        other = client_split(DS, i, 5, sc.scheme, sc.alpha, 3)
        assert np.array_equal(bed.clients[i].x_train, other.x_train)
    if sc.subset:
        assert bed.forget_mask.sum() == round(SUBSET_FRACTION * len(own.y_train))
        assert set(bed.request_ids()) == set(own.ids_train[bed.forget_mask].tolist())
    else:
        assert bed.forget_all and bed.request_ids() == ()
    assert (bed.trigger is not None) == sc.has_trigger


def test_label_flip_never_keeps_the_true_class() -> None:
    bed = build_test_bed("label-flip", DS, 5, seed=0)
    flipped = bed.flipped()
    assert flipped.sum() == round(LABEL_FLIP_FRACTION * len(bed.forget_y))
    assert (bed.forget_y[flipped] != bed.original_y[bed.forget_mask][flipped]).all()
    assert not build_test_bed("backdoor", DS, 5, seed=0).flipped().any()


def test_triggers_differ_and_the_probe_carries_them() -> None:
    beds = [
        build_test_bed(n, DS, 5, seed=0) for n in ("backdoor", "backdoor-patch", "backdoor-blend")
    ]
    probes = [b.trigger.x for b in beds if b.trigger is not None]
    assert len(probes) == 3
    assert not np.array_equal(probes[0], probes[1]) and not np.array_equal(probes[1], probes[2])
    for bed in beds:
        assert bed.planted.sum() > 0.5 * bed.forget_mask.sum()


def test_the_backdoor_bed_is_the_original_one() -> None:
    bed = build_test_bed("backdoor", DS, 5, seed=4)
    old = poison_client(client_split(DS, 0, 5, seed=4), seed=4, trigger=dataset_trigger(DS))
    assert np.array_equal(bed.forgetter.x_train, old.data.x_train)
    assert np.array_equal(bed.forgetter.y_train, old.data.y_train)


@pytest.mark.parametrize("kind", PLANTINGS)
def test_daemon_planting_matches_the_bed(kind: str) -> None:
    name = kind
    bed = build_test_bed(name, DS, 5, seed=2)
    daemon = plant_client_data(kind, DS, client_split(DS, 0, 5, seed=2), seed=2)
    assert np.array_equal(daemon.x_train, bed.forgetter.x_train)
    assert np.array_equal(daemon.y_train, bed.forgetter.y_train)


def test_unknown_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown scenario"):
        build_test_bed("nope", DS, 5, seed=0)
    with pytest.raises(ConfigError, match="unknown test bed"):
        plant_client_data("clean", DS, client_split(DS, 0, 5, seed=0), seed=0)
