"""The backdoor test bed: trigger geometry, deterministic poisoning, and the ASR probe."""

from __future__ import annotations

import numpy as np
import pytest

from forsaken.common.backdoor import (
    Trigger,
    dataset_trigger,
    default_trigger,
    poison_client,
    stamp,
    triggered_test_set,
)
from forsaken.common.datasets import load_dataset
from forsaken.common.errors import ConfigError
from forsaken.common.partition import client_split


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_trigger_scales_with_image_size() -> None:
    assert default_trigger((1, 28, 28)) == Trigger(top=23, left=23, size=4)
    assert default_trigger((1, 8, 8)) == Trigger(top=6, left=6, size=2)
    with pytest.raises(ConfigError):
        default_trigger((1, 1, 5))


def test_stamp_writes_only_the_patch_and_copies() -> None:
    x = np.zeros((3, 1, 8, 8), dtype=np.float32)
    out = stamp(x, Trigger(top=6, left=6, size=2))
    assert x.sum() == 0  # the input is untouched
    assert np.all(out[:, :, 6:, 6:] == 1.0)
    out[:, :, 6:, 6:] = 0
    assert out.sum() == 0


def test_poisoning_is_deterministic_and_relabels_non_target_samples(digits) -> None:
    data = client_split(digits, 0, 5, seed=3)
    a = poison_client(data, target=0, fraction=0.8, seed=3)
    b = poison_client(data, target=0, fraction=0.8, seed=3)
    c = poison_client(data, target=0, fraction=0.8, seed=4)
    assert np.array_equal(a.poisoned, b.poisoned) and np.array_equal(a.data.x_train, b.data.x_train)
    assert not np.array_equal(a.poisoned, c.poisoned)
    non_target = data.y_train != 0
    assert a.poisoned.sum() == round(0.8 * non_target.sum())
    assert not np.any(a.poisoned & ~non_target)  # target-class samples are never stamped
    assert np.all(a.data.y_train[a.poisoned] == 0)
    assert np.array_equal(a.data.y_train[~a.poisoned], data.y_train[~a.poisoned])
    t = a.trigger
    patch = a.data.x_train[a.poisoned][:, :, t.top : t.top + t.size, t.left : t.left + t.size]
    assert np.all(patch == 1.0)
    assert np.array_equal(a.data.x_held_out, data.x_held_out)  # the reference stays clean
    assert np.array_equal(a.data.ids_train, data.ids_train)


def test_poison_fraction_is_validated(digits) -> None:
    data = client_split(digits, 0, 5)
    with pytest.raises(ConfigError):
        poison_client(data, fraction=1.5)


def test_triggered_test_set_excludes_target_and_keeps_true_labels(digits) -> None:
    x, y = triggered_test_set(digits, target=3)
    assert len(x) == int(np.sum(digits.y_test != 3))
    assert not np.any(y == 3)
    t = dataset_trigger(digits)
    assert np.all(x[:, :, t.top : t.top + t.size, t.left : t.left + t.size] == 1.0)
    with pytest.raises(ConfigError):
        triggered_test_set(digits, target=10)
