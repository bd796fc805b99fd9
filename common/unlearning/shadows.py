"""Shadow federations for the per-example membership attack (LiRA) of the evaluation.

The candidates are the forgotten samples (as the forgetting client trained on them) and the
test set (which no model of the protocol trains on). Each shadow federation is the evaluated
federation with one change: the forgetting client holds what it keeps plus a random share of
the candidates in place of its forget set, dealt out so that every candidate is IN for the same
number of shadows (about |forget| / |candidates| of them) and each shadow's forgetting client
holds about as many samples as the real one. The shadows train with the federation's own code,
partitions and recipe, from their own initial models and batch orders, for as many rounds as O.

The same shadows, after the method under test unlearned their forgetting client's share,
give U-LiRA (`unlearned`): for each candidate, "trained on it, then unlearned it" against
"never saw it", under one and the same process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from forsaken.common.lira import LiraCalibration, logit_confidence
from forsaken.common.metrics import model_outputs
from forsaken.common.partition import ClientData
from forsaken.common.testbeds import TestBed
from forsaken.common.training import load_vector
from forsaken.common.unlearning.rounds import InProcessFederation


@dataclass(frozen=True, slots=True, eq=False)
class Candidates:
    x: np.ndarray  # (N, C, H, W)
    y: np.ndarray  # (N,) the labels models train on (a planted label where one was planted)
    ids: np.ndarray  # (N,) global sample ids
    member: np.ndarray  # (N,) bool: a forgotten sample (the first |forget| rows)

    @property
    def nonmember(self) -> np.ndarray:
        return ~self.member

    @classmethod
    def of(cls, bed: TestBed) -> Candidates:
        ds = bed.dataset
        n_f = int(bed.forget_mask.sum())
        return cls(
            x=np.concatenate([bed.forget_x, ds.x_test]),
            y=np.concatenate([bed.forget_y, ds.y_test]),
            ids=np.concatenate([bed.forget_ids, ds.ids_test]),
            member=np.arange(n_f + len(ds.y_test)) < n_f,
        )


@dataclass(frozen=True, slots=True, eq=False)
class ShadowSet:
    candidates: Candidates
    is_in: np.ndarray  # (K, N) bool: shadow k trained on candidate n
    seeds: tuple[int, ...]
    vectors: np.ndarray  # (K, P) float32: the shadow models after T rounds
    stats: np.ndarray  # (K, N) φ of each shadow on each candidate
    # (K, P) float64: each shadow's forgetting client's record of its own contribution (as a
    # node keeps it), for unlearning the shadows as the real node unlearns; None when the
    # shadows came from a cache written before it was kept.
    contributions: np.ndarray | None = None

    def calibration(self) -> LiraCalibration:
        return LiraCalibration.fit(self.stats, self.is_in)


def shadow_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index, 0x5AD0]).generate_state(1)[0]) >> 1


def deal(candidates: Candidates, shadows: int, seed: int) -> np.ndarray:
    """(K, N) membership: each candidate IN for exactly round(K · |forget| / N) shadows (at
    least 1 and at most K - 1), chosen at random."""
    n = len(candidates.y)
    share = candidates.member.sum() / n
    per = int(np.clip(round(shadows * share), 1, shadows - 1))
    rng = np.random.default_rng([seed, 0xDEA1])
    is_in = np.zeros((shadows, n), dtype=bool)
    for j in range(n):
        is_in[rng.choice(shadows, size=per, replace=False), j] = True
    return is_in


def shadow_bed(bed: TestBed, candidates: Candidates, take: np.ndarray, seed: int) -> TestBed:
    """`bed` with the forgetting client holding its kept data plus candidates[take]."""
    own = bed.forgetter
    keep = ~bed.forget_mask
    x = np.concatenate([own.x_train[keep], candidates.x[take]])
    y = np.concatenate([own.y_train[keep], candidates.y[take]])
    ids = np.concatenate([own.ids_train[keep], candidates.ids[take]])
    data = ClientData(x, y, ids, own.x_held_out, own.y_held_out, own.ids_held_out)
    clients = list(bed.clients)
    clients[bed.forget_client] = data
    mask = np.arange(len(y)) >= int(keep.sum())
    return replace(
        bed,
        clients=tuple(clients),
        forget_mask=mask,
        planted=np.zeros(len(y), dtype=bool),
        original_y=y,
        seed=seed,
    )


def statistics(fed: InProcessFederation, vector: np.ndarray, candidates: Candidates) -> np.ndarray:
    """φ of one model on every candidate."""
    load_vector(fed.model, vector)
    return logit_confidence(model_outputs(fed.model, candidates.x), candidates.y)


def train_shadows(
    fed: InProcessFederation,
    rounds: int,
    shadows: int,
    on_shadow: Callable[[int], None] | None = None,
    vectors: np.ndarray | None = None,
    contributions: np.ndarray | None = None,
) -> ShadowSet:
    """K shadow federations of `fed` (or, with `vectors` and `contributions`, re-score
    already trained ones)."""
    bed = fed.bed
    candidates = Candidates.of(bed)
    is_in = deal(candidates, shadows, bed.seed)
    seeds = tuple(shadow_seed(bed.seed, k) for k in range(shadows))
    out, records = [], []
    for k in range(shadows):
        if vectors is None:
            shadow = fed.with_bed(shadow_bed(bed, candidates, is_in[k], seeds[k]))
            out.append(shadow.train_rounds(rounds))
            assert shadow.forgetter_contribution is not None
            records.append(shadow.forgetter_contribution)
        else:
            out.append(vectors[k])
        if on_shadow is not None:
            on_shadow(k)
    vecs = np.stack(out).astype(np.float32)
    stats = np.stack([statistics(fed, v, candidates) for v in vecs])
    if vectors is None:
        contributions = np.stack(records)
    return ShadowSet(candidates, is_in, seeds, vecs, stats, contributions)


def unlearned_shadows(
    fed: InProcessFederation,
    shadows: ShadowSet,
    unlearn: Callable[[InProcessFederation, np.ndarray], np.ndarray],
) -> np.ndarray:
    """(K, N) φ after `unlearn(shadow federation, shadow model)` removed each shadow's share."""
    bed = fed.bed
    stats = []
    for k in range(len(shadows.seeds)):
        shadow = fed.with_bed(
            shadow_bed(bed, shadows.candidates, shadows.is_in[k], shadows.seeds[k])
        )
        if shadows.contributions is not None:
            # The shadow's node holds its record, as the real one does, so a method that
            # reverses it can.
            shadow.forgetter_contribution = shadows.contributions[k]
        stats.append(statistics(fed, unlearn(shadow, shadows.vectors[k]), shadows.candidates))
    return np.stack(stats)
