"""Per-example membership inference: LiRA (Carlini et al., "Membership Inference Attacks From
First Principles", 2022) and the U-LiRA forgetting score built on it.

Pure functions over numpy arrays. The shadow models that calibrate the attack are trained
elsewhere (`forsaken.common.shadows`); here they are only their statistics.

The statistic of a model on a labelled example is the logit-scaled confidence
φ = log(p_y / (1 - p_y)), which is close to Gaussian over training runs. For each candidate
example the attack fits one Gaussian to φ over the shadow models that trained on it (IN) and one
over those that did not (OUT), and scores a target model by the log-likelihood ratio of its φ
under the two. A population attack (one loss threshold for everyone) cannot tell an easy example
that every model gets right from a memorised hard one; this one asks, per example, "is this model
more confident than models that never saw it usually are?".

With few shadow models (fewer than about 64) the per-example variances are poor estimates, so
the variances are pooled over examples (the paper's "fixed variance" variant); the means stay
per example.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from forsaken.common.errors import InvalidPayload

_MIN_STD = 1e-3  # a degenerate spread (every shadow identical) must not divide by zero
LIRA_FPRS = (0.01, 0.001)  # the operating points reported beside the AUC


def logit_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """φ = z_y - logsumexp_{c≠y} z_c = log(p_y / (1 - p_y)), computed stably. (N,) float64."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or len(z) != len(y) or len(z) == 0:
        raise InvalidPayload(f"need (N, C) logits and N labels, got {z.shape} and {y.shape}")
    own = z[np.arange(len(z)), y]
    others = z.copy()
    others[np.arange(len(z)), y] = -np.inf
    top = others.max(axis=1, keepdims=True)
    lse = top[:, 0] + np.log(np.exp(others - top).sum(axis=1))
    return own - lse


@dataclass(frozen=True, slots=True, eq=False)
class LiraCalibration:
    """Per-example IN/OUT means and pooled spreads, fitted on shadow models."""

    mu_in: np.ndarray  # (N,)
    mu_out: np.ndarray  # (N,)
    std_in: float
    std_out: float
    count_in: np.ndarray  # (N,) shadows that trained on each example
    count_out: np.ndarray

    @classmethod
    def fit(cls, stats: np.ndarray, is_in: np.ndarray) -> LiraCalibration:
        """`stats` (K, N): φ of each of K shadow models on each of N candidates; `is_in` (K, N)
        marks which shadow trained on which candidate. Every candidate needs at least one IN and
        one OUT shadow (the shadow trainer deals them out so that each has about as many)."""
        s = np.asarray(stats, dtype=np.float64)
        m = np.asarray(is_in, dtype=bool)
        if s.ndim != 2 or s.shape != m.shape or s.shape[0] < 2:
            raise InvalidPayload(f"need (K >= 2, N) statistics and membership, got {s.shape}")
        n_in, n_out = m.sum(axis=0), (~m).sum(axis=0)
        if (n_in == 0).any() or (n_out == 0).any():
            raise InvalidPayload("every candidate needs at least one IN and one OUT shadow model")
        mu_in = np.where(m, s, 0.0).sum(axis=0) / n_in
        mu_out = np.where(~m, s, 0.0).sum(axis=0) / n_out
        return cls(
            mu_in=mu_in,
            mu_out=mu_out,
            std_in=_pooled_std(s, m, mu_in),
            std_out=_pooled_std(s, ~m, mu_out),
            count_in=n_in,
            count_out=n_out,
        )

    def score(self, stat: np.ndarray) -> np.ndarray:
        """Online LiRA: log N(φ; μ_in, sd_in) - log N(φ; μ_out, sd_out); higher: more member."""
        phi = np.asarray(stat, dtype=np.float64)
        return _log_normal(phi, self.mu_in, self.std_in) - _log_normal(
            phi, self.mu_out, self.std_out
        )

    def recentred_score(self, stat: np.ndarray, reference: np.ndarray) -> np.ndarray:
        """Online LiRA after removing the target model's own global shift and spread.

        A model that is globally less (or more) confident than the shadows, as one is right
        after heavy editing and a few repair rounds, puts every example in the tail of both
        Gaussians, where the likelihood ratio ranks examples by their IN/OUT gap instead of by
        the model's behaviour; that hides memorised examples. Standardising the model's
        residuals φ - μ_out by their mean and spread over `reference` (examples known never to
        be trained on: an attacker with population data has them) undoes it before scoring."""
        phi = np.asarray(stat, dtype=np.float64)
        ref = np.asarray(reference, dtype=bool)
        resid = phi - self.mu_out
        spread = max(_MIN_STD, float(resid[ref].std()))
        return self.score((resid - resid[ref].mean()) * (self.std_out / spread) + self.mu_out)

    def offline_score(self, stat: np.ndarray) -> np.ndarray:
        """Offline LiRA (OUT models only): how many sd above the OUT mean the target model is."""
        return (np.asarray(stat, dtype=np.float64) - self.mu_out) / self.std_out


def _pooled_std(stats: np.ndarray, mask: np.ndarray, mean: np.ndarray) -> float:
    resid = np.where(mask, stats - mean, 0.0)
    dof = int(mask.sum()) - stats.shape[1]  # one mean per candidate
    if dof < 1:
        return 1.0
    return max(_MIN_STD, float(np.sqrt((resid**2).sum() / dof)))


def _log_normal(x: np.ndarray, mu: np.ndarray, std: float) -> np.ndarray:
    return -0.5 * ((x - mu) / std) ** 2 - math.log(std)


def score_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """ROC AUC of "higher score = member": P(member score > non-member score), ties half."""
    from forsaken.common.metrics import mia_auc

    # mia_auc reads its inputs as losses (lower = member): negate.
    return mia_auc(-np.asarray(member_scores, float), -np.asarray(nonmember_scores, float))


def score_tpr_at_fpr(member_scores: np.ndarray, nonmember_scores: np.ndarray, fpr: float) -> float:
    """Share of members above the strictest threshold that flags at most `fpr` of non-members.

    With n non-members the smallest FPR that can be told apart from zero is 1/n: at 0.1% and
    fewer than 1,000 non-members this is the share of members scoring above every non-member."""
    from forsaken.common.metrics import tpr_at_fpr

    return tpr_at_fpr(-np.asarray(member_scores, float), -np.asarray(nonmember_scores, float), fpr)


@dataclass(frozen=True, slots=True)
class AttackResult:
    auc: float
    tpr: dict[float, float]  # by FPR
    offline_auc: float
    recentred_auc: float
    recentred_tpr: dict[float, float]
    members: int
    nonmembers: int


def lira_attack(
    calibration: LiraCalibration,
    target_stat: np.ndarray,
    member: np.ndarray,
    nonmember: np.ndarray,
) -> AttackResult:
    """LiRA against one target model: `target_stat` (N,) is its φ on the calibrated candidates;
    `member` / `nonmember` are (N,) masks of the candidates to score as each."""
    scores = calibration.score(target_stat)
    offline = calibration.offline_score(target_stat)
    m, n = np.asarray(member, bool), np.asarray(nonmember, bool)
    recentred = calibration.recentred_score(target_stat, n)
    return AttackResult(
        auc=score_auc(scores[m], scores[n]),
        tpr={f: score_tpr_at_fpr(scores[m], scores[n], f) for f in LIRA_FPRS},
        offline_auc=score_auc(offline[m], offline[n]),
        recentred_auc=score_auc(recentred[m], recentred[n]),
        recentred_tpr={f: score_tpr_at_fpr(recentred[m], recentred[n], f) for f in LIRA_FPRS},
        members=int(m.sum()),
        nonmembers=int(n.sum()),
    )


# ---- U-LiRA: can an attacker tell "trained on x, then unlearned" from "never saw x"? ----------

ULIRA_DELTA = 0.01  # δ of the (ε, δ) reading; see per_example_epsilon
ULIRA_BIN = 0.5  # width of the ε bins of the forgetting score


def per_example_epsilon(
    unlearned: np.ndarray, retrained: np.ndarray, delta: float = ULIRA_DELTA
) -> np.ndarray:
    """ε per example from φ under two families of models (after the NeurIPS 2023 unlearning
    challenge; Triantafillou et al. 2024): `unlearned` (K_u, N) models that trained on the
    example and then unlearned it, `retrained` (K_r, N) models that never saw it.

    Each family is fitted with a Gaussian per example (pooled spread, as the LiRA calibration).
    For every threshold attack in both directions, ε ≥ log((1 - δ - FPR) / FNR) and
    ε ≥ log((1 - δ - FNR) / FPR); the estimate is the largest such bound over a grid of
    thresholds. Identical families give ε = 0 (up to the fit); the Gaussian fit is what lets a
    handful of models stand in for the challenge's hundreds, at the price of the Gaussian
    assumption.
    """
    from scipy.stats import norm

    a, b = np.asarray(unlearned, np.float64), np.asarray(retrained, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise InvalidPayload(f"need (K >= 2, N) statistics for both families: {a.shape} {b.shape}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    sd_a = max(_MIN_STD, float(np.sqrt(((a - mu_a) ** 2).sum() / (a.size - a.shape[1]))))
    sd_b = max(_MIN_STD, float(np.sqrt(((b - mu_b) ** 2).sum() / (b.size - b.shape[1]))))
    lo = np.minimum(mu_a - 6 * sd_a, mu_b - 6 * sd_b)
    hi = np.maximum(mu_a + 6 * sd_a, mu_b + 6 * sd_b)
    grid = lo[None, :] + (hi - lo)[None, :] * np.linspace(0.0, 1.0, 401)[:, None]  # (T, N)
    eps = np.zeros(a.shape[1])
    tiny = 1e-300
    for upper_is_a in (True, False):
        # Attack: say "unlearned" when φ is above (or below) the threshold.
        if upper_is_a:
            fnr = norm.cdf(grid, mu_a, sd_a)  # unlearned called retrained
            fpr = norm.sf(grid, mu_b, sd_b)  # retrained called unlearned
        else:
            fnr = norm.sf(grid, mu_a, sd_a)
            fpr = norm.cdf(grid, mu_b, sd_b)
        for num, den in ((1 - delta - fpr, fnr), (1 - delta - fnr, fpr)):
            valid = num > 0
            bound = np.where(valid, np.log(np.maximum(num, tiny)) - np.log(den + tiny), 0.0)
            eps = np.maximum(eps, bound.max(axis=0))
    return eps


def forgetting_score(epsilons: np.ndarray, bin_width: float = ULIRA_BIN) -> float:
    """The challenge-style forgetting quality F ∈ (0, 1]: mean over examples of 2 / 2^n, where
    n ≥ 1 is the index of the ε bin (n = 1 for ε < bin_width). 1 means no example leaks."""
    e = np.asarray(epsilons, dtype=np.float64)
    if e.ndim != 1 or len(e) == 0:
        raise InvalidPayload("the forgetting score needs per-example epsilons")
    n = 1 + np.floor(np.maximum(e, 0.0) / bin_width)
    return float(np.mean(2.0 / 2.0**n))
