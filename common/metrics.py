"""Evaluation metrics for unlearning (docs/evaluation.md, "The metrics").

Pure functions over numpy arrays, plus `model_outputs` to get those arrays from a model. Every
claim about forgetting compares a metric on the unlearned model U with the same metric on the
retrain-from-scratch model R; nothing here knows which model is which.

Conventions: `logits` (N, C) float; `probs` (N, C) rows summing to 1; `labels` (N,) ints;
losses are per-sample cross-entropy in nats. Membership scores are losses: a *lower* loss means
"more likely a member" (the loss-threshold attack of Yeom et al., 2018).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from forsaken.common.errors import InvalidPayload

_EVAL_BATCH = 1024
_EPS = 1e-12  # floor on probabilities inside log: a 0 in R's output must not make KL infinite


@torch.no_grad()
def model_outputs(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """Logits (N, C) of `model` on images `x`, in eval mode, as float64."""
    model.eval()
    chunks = [
        model(torch.tensor(np.asarray(x[i : i + _EVAL_BATCH], dtype=np.float32))).numpy()
        for i in range(0, len(x), _EVAL_BATCH)
    ]
    return np.concatenate(chunks).astype(np.float64)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by the row max so large logits cannot overflow."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def per_sample_losses(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of each sample, -log softmax(logits)[label], computed stably. (N,)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return log_norm - z[np.arange(len(z)), np.asarray(labels)]


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose arg-max class is the label."""
    _check_rows(logits, labels)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def attack_success_rate(triggered_logits: np.ndarray, target: int) -> float:
    """Backdoor ASR: fraction of triggered non-target images classified as `target`."""
    if len(triggered_logits) == 0:
        raise InvalidPayload("ASR needs at least one triggered input")
    return float(np.mean(np.argmax(triggered_logits, axis=1) == target))


def mia_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """ROC AUC of the loss-threshold attack: P(loss of a member < loss of a non-member).

    Ties count one half (the Mann-Whitney U statistic), so identical distributions give 0.5
    and perfectly separated ones (every member below every non-member) give 1.
    """
    m, n = np.asarray(member_losses, float), np.asarray(nonmember_losses, float)
    if len(m) == 0 or len(n) == 0:
        raise InvalidPayload("AUC needs members and non-members")
    joint = np.concatenate([-m, -n])  # score: higher means "member"
    order = joint.argsort(kind="mergesort")
    ranks = np.empty(len(joint))
    ranks[order] = np.arange(1, len(joint) + 1)
    # Average the ranks of tied scores so ties contribute exactly one half.
    _, inverse, counts = np.unique(joint, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    u = ranks[: len(m)].sum() - len(m) * (len(m) + 1) / 2
    return float(u / (len(m) * len(n)))


def auc_resolution(members: int, nonmembers: int, z: float = 1.96) -> float:
    """The smallest |AUC - 0.5| a test on this many members and non-members tells from chance
    (two-sided, z = 1.96 for 95%): z times the AUC's standard error when both sets come from
    one distribution, sqrt((m + n + 1) / (12 m n)) (the Mann-Whitney U statistic's)."""
    if members < 1 or nonmembers < 1:
        raise InvalidPayload("AUC needs members and non-members")
    return z * float(np.sqrt((members + nonmembers + 1) / (12.0 * members * nonmembers)))


def tpr_at_fpr(member_losses: np.ndarray, nonmember_losses: np.ndarray, fpr: float = 0.01) -> float:
    """Fraction of members caught by the strictest loss threshold that flags at most `fpr`
    of the non-members (those with loss strictly below it)."""
    m, n = np.sort(np.asarray(member_losses, float)), np.sort(np.asarray(nonmember_losses, float))
    if len(m) == 0 or len(n) == 0 or not 0.0 <= fpr < 1.0:
        raise InvalidPayload("TPR@FPR needs members, non-members and 0 <= fpr < 1")
    allowed = int(np.floor(fpr * len(n)))  # non-members we may flag
    threshold = n[allowed]  # flag loss < threshold: exactly the `allowed` smallest (bar ties)
    return float(np.mean(m < threshold))


def kl_divergence(reference_probs: np.ndarray, model_probs: np.ndarray) -> float:
    """Mean over samples of KL(reference ‖ model) = Σ_c p log(p / q), in nats.

    Called as kl_divergence(probs of R, probs of U) on forget-side inputs: how far U's
    predictions are from what the retrained model predicts, sample by sample.
    """
    p, q = np.asarray(reference_probs, float), np.asarray(model_probs, float)
    if p.shape != q.shape or p.ndim != 2 or len(p) == 0:
        raise InvalidPayload(f"KL needs two (N, C) arrays of one shape, got {p.shape}, {q.shape}")
    terms = np.where(p > 0, p * (np.log(np.maximum(p, _EPS)) - np.log(np.maximum(q, _EPS))), 0)
    return float(terms.sum(axis=1).mean())


def oracle_members(
    losses: np.ndarray, reference_losses: np.ndarray, quantile: float = 0.5
) -> np.ndarray:
    """The stated membership oracle: a sample is a "member" iff its loss is below the
    `quantile`-quantile of the same model's losses on reference (never-trained) data.

    Calibrated per model: on data the model never saw, it calls a `quantile` share "member".
    """
    if len(reference_losses) == 0:
        raise InvalidPayload("the oracle needs reference losses")
    threshold = np.quantile(np.asarray(reference_losses, float), quantile)
    return np.asarray(losses, float) < threshold


def oracle_member_rate(
    losses: np.ndarray, reference_losses: np.ndarray, quantile: float = 0.5
) -> float:
    """Share of samples `oracle_members` calls "member" (0.5 for unseen data at quantile 0.5)."""
    return float(np.mean(oracle_members(losses, reference_losses, quantile)))


def forgetting_rate(members_before: np.ndarray, members_after: np.ndarray) -> float:
    """The paper's FR = (AF - BF) / BT over the forget set, under a membership oracle.

    BT: share of forget samples the oracle calls "member" before unlearning (on O);
    BF: share it calls "non-member" before (= 1 - BT); AF: share called "non-member" after.
    FR = 1 means every sample that looked like a member no longer does; 0 means no change.
    NaN when BT = 0 (nothing looked memorised, so nothing could be forgotten).
    """
    before = np.asarray(members_before, bool)
    after = np.asarray(members_after, bool)
    if before.shape != after.shape or before.ndim != 1 or len(before) == 0:
        raise InvalidPayload("FR needs two equal-length, non-empty member masks")
    bt = float(before.mean())
    if bt == 0.0:
        return float("nan")
    return ((1.0 - float(after.mean())) - (1.0 - bt)) / bt


def _check_rows(logits: np.ndarray, labels: np.ndarray) -> None:
    if len(logits) == 0 or len(logits) != len(labels):
        raise InvalidPayload(f"need matching non-empty data, got {len(logits)} and {len(labels)}")
