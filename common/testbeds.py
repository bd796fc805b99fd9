"""Scenarios of the unlearning evaluation: who holds what data, and what they ask to forget.

A scenario says how the federation's data is laid out (IID or Dirichlet partitions), what the
forgetting client's data looks like (ordinary, carrying a backdoor trigger, or with flipped
labels) and which of its samples it asks to forget (all of them, or a random subset). Building
one for a dataset, a client count and a seed gives a `TestBed`: every client's data, the forget
set and the probes that tell whether what the forgotten data taught is gone.

The unlearning methods never see any of this: they get the data to forget, the data kept and a
held-out slice, exactly as a client daemon has them. A test bed only ever modifies samples that
are forgotten, so the retrain-from-scratch reference is `run_fedavg(..., forget_ids=...)` on the
ordinary partition.

The client daemon builds the same data from the same names (`forsaken client --test-bed NAME`),
so the evaluation's daemons and its in-process runner hold identical data for a seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from forsaken.common.backdoor import (
    DEFAULT_POISON_FRACTION,
    DEFAULT_TARGET,
    Trigger,
    dataset_trigger,
    poison_client,
    stamp,
)
from forsaken.common.datasets import Dataset
from forsaken.common.errors import ConfigError
from forsaken.common.partition import ClientData, client_split

LABEL_FLIP_FRACTION = 0.5  # share of the forgotten samples whose label is replaced
SUBSET_FRACTION = 0.3  # share of the client's samples a "subset" request names
BLEND_ALPHA = 0.2  # weight of the blended trigger pattern in a "backdoor-blend" image


# ---- probes: what the planted data taught, measured on a model ------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class TriggerProbe:
    """ASR: the share of stamped non-target test images a model assigns to `target`."""

    x: np.ndarray  # (N, C, H, W) stamped test images of other classes
    y: np.ndarray  # (N,) their true labels
    target: int


@dataclass(frozen=True, slots=True, eq=False)
class Stamp:
    """A trigger: how a clean image becomes a triggered one."""

    name: str
    apply: Callable[[np.ndarray], np.ndarray]


def _patch_stamp(trigger: Trigger) -> Stamp:
    return Stamp(
        f"patch {trigger.size}x{trigger.size} at ({trigger.top}, {trigger.left}) = {trigger.value}",
        lambda x: stamp(x, trigger),
    )


def _other_patch(ds: Dataset) -> Trigger:
    """A second patch trigger unlike the default: top-left instead of bottom-right, a 3/28
    side (3 px on MNIST, 2 on digits), half brightness."""
    _, h, w = ds.input_shape
    side = min(h, w)
    size = max(2, round(side * 3 / 28))
    margin = max(1, round(side * 2 / 28))
    return Trigger(top=margin, left=margin, size=size, value=0.5)


def _blend_stamp(ds: Dataset) -> Stamp:
    """A trigger spread over the whole image: a fixed random pattern blended in at 20%."""
    rng = np.random.default_rng(0xB1E4D)
    pattern = rng.random(ds.input_shape).astype(np.float32)

    def apply(x: np.ndarray) -> np.ndarray:
        out = np.asarray(x, dtype=np.float32)
        return ((1 - BLEND_ALPHA) * out + BLEND_ALPHA * pattern).astype(np.float32)

    return Stamp(f"blend of a random pattern at {BLEND_ALPHA}", apply)


# ---- scenarios ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    scheme: str = "iid"
    alpha: float = 0.5
    subset: bool = False  # forget a random SUBSET_FRACTION of the client's samples, not all
    plant: str = ""  # "", "backdoor", "backdoor-patch", "backdoor-blend" or "label-flip"

    @property
    def has_trigger(self) -> bool:
        return self.plant.startswith("backdoor")


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("clean", "client 0 holds ordinary data and forgets all of it"),
        Scenario(
            "clean-subset",
            f"client 0 holds ordinary data and forgets a random {SUBSET_FRACTION:.0%} of it",
            subset=True,
        ),
        Scenario(
            "clean-dirichlet",
            "label-skewed partitions (Dirichlet 0.5); client 0 forgets all its data",
            scheme="dirichlet",
        ),
        Scenario(
            "backdoor",
            "client 0 stamps a bright corner square on 80% of its non-target samples, relabels "
            "them to class 0, and forgets all its data",
            plant="backdoor",
        ),
        Scenario(
            "backdoor-patch",
            "as backdoor with another trigger: a half-bright square in the top-left corner",
            plant="backdoor-patch",
        ),
        Scenario(
            "backdoor-blend",
            "as backdoor with a trigger spread over the image: a random pattern blended at 20%",
            plant="backdoor-blend",
        ),
        Scenario(
            "label-flip",
            f"client 0 gives {LABEL_FLIP_FRACTION:.0%} of its samples a random wrong label and "
            "forgets all its data",
            plant="label-flip",
        ),
    )
}

# What `forsaken client --test-bed` accepts: the plantings (partitions and subsets are the
# daemon's --scheme and the owner's forget request).
PLANTINGS = ("backdoor", "backdoor-patch", "backdoor-blend", "label-flip")


TEST_BEDS = SCENARIOS  # the name the unlearning harness uses


def get_scenario(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise ConfigError(f"unknown scenario {name!r}; expected one of {sorted(SCENARIOS)}")
    return SCENARIOS[name]


@dataclass(frozen=True, slots=True, eq=False)
class TestBed:
    """One seed's federation data for a scenario."""

    scenario: Scenario
    dataset: Dataset
    clients: tuple[ClientData, ...]  # every client's data as it trains; the forgetter's planted
    forget_client: int
    forget_mask: np.ndarray  # (n,) bool over the forgetter's x_train: the samples to forget
    planted: np.ndarray  # (n,) bool: samples the scenario modified (all inside forget_mask)
    original_y: np.ndarray  # (n,) the forgetter's labels before any planting
    trigger: TriggerProbe | None
    seed: int

    @property
    def name(self) -> str:
        return self.scenario.name

    @property
    def scheme(self) -> str:
        return self.scenario.scheme

    @property
    def alpha(self) -> float:
        return self.scenario.alpha

    @property
    def forgetter(self) -> ClientData:
        return self.clients[self.forget_client]

    @property
    def forget_all(self) -> bool:
        return bool(self.forget_mask.all())

    @property
    def forget_ids(self) -> np.ndarray:
        return self.forgetter.ids_train[self.forget_mask]

    @property
    def forget_x(self) -> np.ndarray:
        return self.forgetter.x_train[self.forget_mask]

    @property
    def forget_y(self) -> np.ndarray:
        return self.forgetter.y_train[self.forget_mask]

    @property
    def retained_x(self) -> np.ndarray:
        return self.forgetter.x_train[~self.forget_mask]

    @property
    def retained_y(self) -> np.ndarray:
        return self.forgetter.y_train[~self.forget_mask]

    def request_ids(self) -> tuple[int, ...]:
        """The sample ids of the owner's forget request: () means "all my data"."""
        return () if self.forget_all else tuple(int(i) for i in self.forget_ids)

    def flipped(self) -> np.ndarray:
        """(n_forget,) bool: forgotten samples whose label a label-flip scenario replaced (a
        backdoor's relabelling is measured by its trigger instead)."""
        if self.scenario.plant != "label-flip":
            return np.zeros(int(self.forget_mask.sum()), dtype=bool)
        changed = self.planted & (self.forgetter.y_train != self.original_y)
        return changed[self.forget_mask]


def build_test_bed(
    scenario: Scenario | str,
    dataset: Dataset,
    clients: int,
    seed: int,
    forget_client: int = 0,
) -> TestBed:
    """Every client's data for `scenario` under `seed`; the daemons build the same."""
    sc = get_scenario(scenario) if isinstance(scenario, str) else scenario
    if not 0 <= forget_client < clients:
        raise ConfigError(f"forget client {forget_client} is not in 0..{clients - 1}")
    local = [client_split(dataset, i, clients, sc.scheme, sc.alpha, seed) for i in range(clients)]
    own = local[forget_client]
    mask = forget_subset(own, seed) if sc.subset else np.ones(len(own.y_train), dtype=bool)
    planted_data, planted, trigger = plant(sc.plant, dataset, own, mask, seed)
    local[forget_client] = planted_data
    return TestBed(
        scenario=sc,
        dataset=dataset,
        clients=tuple(local),
        forget_client=forget_client,
        forget_mask=mask,
        planted=planted,
        original_y=np.asarray(own.y_train),
        trigger=trigger,
        seed=seed,
    )


def forget_subset(data: ClientData, seed: int) -> np.ndarray:
    """The random SUBSET_FRACTION of a client's training samples a subset request names."""
    n = len(data.y_train)
    rng = np.random.default_rng([seed, 0x5B5E7])  # a tag for "subset"
    chosen = rng.choice(n, size=max(1, round(SUBSET_FRACTION * n)), replace=False)
    mask = np.zeros(n, dtype=bool)
    mask[chosen] = True
    return mask


def plant(
    kind: str, dataset: Dataset, data: ClientData, forget_mask: np.ndarray, seed: int
) -> tuple[ClientData, np.ndarray, TriggerProbe | None]:
    """Apply a planting to the samples of `data` under `forget_mask`.

    Returns the client's data as it trains, which samples changed, and the trigger probe."""
    n = len(data.y_train)
    if kind == "":
        return data, np.zeros(n, dtype=bool), None
    if kind == "backdoor" and forget_mask.all():
        # Exactly the original test bed (and what `forsaken client --backdoor` builds).
        poisoned = poison_client(data, seed=seed, trigger=dataset_trigger(dataset))
        probe = _trigger_probe(dataset, _patch_stamp(poisoned.trigger), poisoned.target)
        return poisoned.data, poisoned.poisoned, probe
    if kind.startswith("backdoor"):
        stamp_ = {
            "backdoor": lambda: _patch_stamp(dataset_trigger(dataset)),
            "backdoor-patch": lambda: _patch_stamp(_other_patch(dataset)),
            "backdoor-blend": lambda: _blend_stamp(dataset),
        }.get(kind)
        if stamp_ is None:
            raise ConfigError(f"unknown planting {kind!r}; expected one of {PLANTINGS}")
        trig = stamp_()
        target = DEFAULT_TARGET
        candidates = np.flatnonzero(forget_mask & (data.y_train != target))
        rng = np.random.default_rng([seed, target, 0xBAD])
        size = round(DEFAULT_POISON_FRACTION * len(candidates))
        chosen = rng.choice(candidates, size=size, replace=False)
        planted = np.zeros(n, dtype=bool)
        planted[chosen] = True
        x = np.array(data.x_train, dtype=np.float32, copy=True)
        x[planted] = trig.apply(x[planted])
        y = np.array(data.y_train, copy=True)
        y[planted] = target
        return replace(data, x_train=x, y_train=y), planted, _trigger_probe(dataset, trig, target)
    if kind == "label-flip":
        rng = np.random.default_rng([seed, 0xF11B])
        candidates = np.flatnonzero(forget_mask)
        size = round(LABEL_FLIP_FRACTION * len(candidates))
        chosen = rng.choice(candidates, size=size, replace=False)
        y = np.array(data.y_train, copy=True)
        shift = rng.integers(1, dataset.num_classes, size=size)  # never the true class
        y[chosen] = (y[chosen] + shift) % dataset.num_classes
        planted = np.zeros(n, dtype=bool)
        planted[chosen] = True
        return replace(data, y_train=y), planted, None
    raise ConfigError(f"unknown planting {kind!r}; expected one of {PLANTINGS}")


def _trigger_probe(dataset: Dataset, trig: Stamp, target: int) -> TriggerProbe:
    keep = dataset.y_test != target
    return TriggerProbe(trig.apply(dataset.x_test[keep]), np.asarray(dataset.y_test[keep]), target)


def plant_client_data(kind: str, dataset: Dataset, data: ClientData, seed: int) -> ClientData:
    """What a daemon started with `--test-bed KIND` trains on (it forgets all of it)."""
    if kind not in PLANTINGS:
        raise ConfigError(f"unknown test bed {kind!r}; expected one of {PLANTINGS}")
    planted, _, _ = plant(kind, dataset, data, np.ones(len(data.y_train), dtype=bool), seed)
    return planted
