"""The backdoor test bed for unlearning (see docs/unlearning.md, "Test bed").

The forgetting client is the attacker: it stamps a small bright square (the trigger) into one
corner of most of its samples whose label is not the target class and relabels them to the
target. A model trained with that client answers "target" for any stamped image (high attack
success rate, ASR); a model retrained without the client's data does not (ASR near the rate at
which clean images are misread as the target). Removing the client's data must therefore remove
the backdoor, which makes forgetting measurable on top of membership inference.

Everything is deterministic for a seed and works for any (C, H, W) image size: the patch side
scales with the image (4 pixels on 28x28 MNIST, 2 on 8x8 digits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forsaken.common.datasets import Dataset
from forsaken.common.errors import ConfigError
from forsaken.common.partition import ClientData

DEFAULT_TARGET = 0
DEFAULT_POISON_FRACTION = 0.8
_PATCH_PER_PIXEL = 4 / 28  # a 4x4 patch on 28x28 MNIST; the same share of the side elsewhere
_MIN_PATCH = 2  # a single pixel is too easy to confuse with a stroke end
_CORNER_MARGIN_PER_PIXEL = 1 / 28  # keep one pixel of border on MNIST: the corner stays dark


@dataclass(frozen=True, slots=True)
class Trigger:
    """Where the patch goes: rows/cols [top, top+size) x [left, left+size), at `value`."""

    top: int
    left: int
    size: int
    value: float = 1.0


def default_trigger(input_shape: tuple[int, ...]) -> Trigger:
    """A square in the bottom-right corner, its side scaled to the image size.

    On MNIST that corner is always dark, so the trigger is a feature of its own. On sklearn's
    digits the bottom-right 2x2 block is lit in about half the clean images, so the trigger is
    entangled with real strokes; docs/unlearning.md records what a darker corner changes.
    """
    if len(input_shape) != 3:
        raise ConfigError(f"input_shape must be (C, H, W), got {input_shape}")
    _, h, w = input_shape
    side = min(h, w)
    size = max(_MIN_PATCH, round(side * _PATCH_PER_PIXEL))
    margin = round(side * _CORNER_MARGIN_PER_PIXEL)
    if size + margin > side:
        raise ConfigError(f"images of {h}x{w} are too small for a {size}x{size} trigger")
    return Trigger(top=h - margin - size, left=w - margin - size, size=size)


def _patch(x: np.ndarray, trigger: Trigger) -> np.ndarray:
    rows = slice(trigger.top, trigger.top + trigger.size)
    cols = slice(trigger.left, trigger.left + trigger.size)
    return x[..., rows, cols]


def stamp(x: np.ndarray, trigger: Trigger) -> np.ndarray:
    """A copy of images `x` (N, C, H, W) with the trigger patch written into every channel."""
    out = np.array(x, dtype=np.float32, copy=True)
    _patch(out, trigger)[...] = trigger.value
    return out


def dataset_trigger(dataset: Dataset) -> Trigger:
    """The trigger every client and the ASR probe of a dataset agree on."""
    return default_trigger(dataset.input_shape)


@dataclass(frozen=True, slots=True, eq=False)
class PoisonedData:
    """A client's training data with the backdoor planted; `poisoned` marks stamped samples."""

    data: ClientData
    poisoned: np.ndarray  # (n,) bool, aligned with data.x_train
    trigger: Trigger
    target: int


def poison_client(
    data: ClientData,
    target: int = DEFAULT_TARGET,
    fraction: float = DEFAULT_POISON_FRACTION,
    seed: int = 0,
    trigger: Trigger | None = None,
) -> PoisonedData:
    """Stamp and relabel `fraction` of the non-target training samples; held-out stays clean.

    The held-out slice is the client's "never seen" reference and must keep the clean
    distribution, so only `x_train`/`y_train` change. Sample ids are kept: a forget request for
    the client's data names the same ids whether or not they were poisoned.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"poison fraction must be in [0, 1], got {fraction}")
    trig = trigger or default_trigger(tuple(data.x_train.shape[1:]))
    candidates = np.flatnonzero(data.y_train != target)
    rng = np.random.default_rng([seed, target, 0xBAD])  # 0xBAD: a tag for "poison choice"
    chosen = rng.choice(candidates, size=round(fraction * len(candidates)), replace=False)
    mask = np.zeros(len(data.y_train), dtype=bool)
    mask[chosen] = True
    x = np.array(data.x_train, dtype=np.float32, copy=True)
    x[mask] = stamp(x[mask], trig)
    y = np.array(data.y_train, copy=True)
    y[mask] = target
    poisoned = ClientData(
        x_train=x,
        y_train=y,
        ids_train=data.ids_train,
        x_held_out=data.x_held_out,
        y_held_out=data.y_held_out,
        ids_held_out=data.ids_held_out,
    )
    return PoisonedData(data=poisoned, poisoned=mask, trigger=trig, target=target)


def triggered_test_set(
    dataset: Dataset, target: int = DEFAULT_TARGET, trigger: Trigger | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ASR probe: every test image not of class `target`, stamped, with its true labels.

    ASR is the fraction of these the model assigns to `target`; the true labels are returned
    for accuracy-under-trigger and for KL on triggered inputs.
    """
    if not 0 <= target < dataset.num_classes:
        raise ConfigError(f"target class {target} is not in 0..{dataset.num_classes - 1}")
    trig = trigger or dataset_trigger(dataset)
    keep = dataset.y_test != target
    return stamp(dataset.x_test[keep], trig), np.asarray(dataset.y_test[keep])
