"""Pure loss functions of the Forsaken generator's training (Liu et al., "Learn to Forget", §4).

The paper trains a dummy-gradient generator so that, after the dummy gradient g is applied, the
model's confidence on the data to forget is indistinguishable from its confidence on data it
never saw, while a sparsity term on g, weighted by the loss on the data the client keeps, stops g
from wrecking the model's utility. This module holds those pieces as plain functions of tensors
and a parameter dictionary, so they can be tested against hand computations and reused by any
engine; nothing here owns state.

Shapes: `logits` (B, C); a confidence profile is (2C,): the mean softmax vector followed by the
mean of the descending-sorted softmax vectors.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

_EPS = 1e-8  # keeps log() finite for classes a profile gives (numerically) zero mass
_MIN_KEEP_LOSS = 0.01  # a memorised kept set has loss ~0; the ratio must not explode


def confidence_profile(logits: Tensor) -> Tensor:
    """The paper's confidence summary of a model on a set of inputs: (2C,) from (B, C).

    First half: the mean softmax vector, i.e. which classes the model assigns the inputs to
    (a backdoor shows up as excess mass on the target class). Second half: the mean of the
    sorted softmax vectors, i.e. how sure the model is regardless of class (memorised data is
    predicted more confidently than unseen data). Both halves are probability vectors. Neither
    uses labels, so a relabelled (poisoned) sample is judged by what the model does with its
    image, not by whether it fits its wrong label.
    """
    probs = F.softmax(logits, dim=1)  # (B, C)
    by_class = probs.mean(dim=0)  # (C,)
    by_rank = probs.sort(dim=1, descending=True).values.mean(dim=0)  # (C,)
    return torch.cat([by_class, by_rank])


def profile_distance(profile: Tensor, reference: Tensor) -> Tensor:
    """KL(reference ‖ profile), summed over the two probability halves of a profile.

    KL from the reference (rather than squared error) because it penalises a class the forget
    set is *missing* in proportion to how much the unseen data uses it: the mass a backdoor
    steals from nine classes is what must flow back.
    """
    half = profile.numel() // 2
    total = profile.new_zeros(())
    for part in (slice(0, half), slice(half, None)):
        ref = reference[part].clamp_min(_EPS)
        cur = profile[part].clamp_min(_EPS)
        total = total + (ref * (ref.log() - cur.log())).sum()
    return total


def quantile_distance(probs: Tensor, reference_probs: Tensor) -> Tensor:
    """Per-class distribution matching: Σ_c mean_i (sorted p_c over the batch - the reference's
    quantiles of p_c at the same levels)², a squared 1-D Wasserstein-2 distance per class.

    Unlike a distance between *mean* profiles, whose gradient fades as the means meet, each
    sample whose confidence in some class is out of line with unseen data keeps being pushed:
    a residual backdoor of a few percent of the samples still costs about that percentage.
    `probs` (B, C) needs gradients; `reference_probs` (R, C) is a fixed sample of unseen data.
    """
    # Levels i / (B - 1): with a reference of the same size these are its exact order
    # statistics, so a batch compared with itself is at distance zero.
    levels = torch.linspace(0.0, 1.0, probs.shape[0], dtype=probs.dtype)  # (B,)
    ref_q = torch.quantile(reference_probs, levels, dim=0)  # (B, C)
    return (probs.sort(dim=0).values - ref_q).pow(2).mean(dim=0).sum()


def mean_kl_to_logits(target_probs: Tensor, logits: Tensor) -> Tensor:
    """mean_i KL(target_i ‖ softmax(logits_i)) for (B, C) targets and logits."""
    log_target = target_probs.clamp_min(_EPS).log()
    return (target_probs * (log_target - F.log_softmax(logits, dim=1))).sum(dim=1).mean()


def sharpen_distance(logits: Tensor, reference_probs: Tensor) -> Tensor:
    """Per-sample confidence matching: mean_i KL(t_i ‖ softmax(logits_i)), where t_i puts the
    reference's mean top-1 probability on sample i's own current top class (detached) and spreads
    the rest evenly.

    The profile and quantile terms match the forget batch to unseen data *as a population*; a
    model can meet them while being unsure on every single forget sample (the trigger still
    pulls, the removal pushes back), which is exactly where KL(R ‖ U) on forget-side inputs
    comes from: R ignores the trigger and is as sure of the image's class as on any unseen
    image. The target uses no label: the class is whatever the moved model now says.
    """
    probs = F.softmax(logits, dim=1)  # (B, C)
    c = probs.shape[1]
    top = reference_probs.max(dim=1).values.mean().clamp(max=1.0 - _EPS)  # unseen data's top-1
    target = torch.full_like(probs, float((1.0 - top) / (c - 1)))
    target.scatter_(1, probs.detach().argmax(dim=1, keepdim=True), float(top))
    return mean_kl_to_logits(target, logits)


def atypical_mask(
    forget_x: Tensor, held_x: Tensor, min_t: float = 4.0, min_effect: float = 0.5
) -> Tensor | None:
    """The input positions where the data to forget differs significantly from unseen data.

    Per position, Welch's t statistic of the two means and the effect size (mean difference over
    the pooled standard deviation); a position is atypical when both are large, so a handful of
    odd samples (large t on an almost constant border pixel, tiny effect) does not count. This
    is where whatever the forget set alone teaches (a trigger, a watermark, a sensor artefact)
    lives. Returns a {0, 1} mask shaped like one input, or None where nothing is atypical (an
    ordinary deletion request: the data looks like everyone else's).
    """
    f, h = forget_x.flatten(1), held_x.flatten(1)
    if len(f) < 2 or len(h) < 2:
        return None
    diff = f.mean(0) - h.mean(0)
    vf, vh = f.var(0), h.var(0)
    t = diff.abs() / (vf / len(f) + vh / len(h)).sqrt().clamp_min(_EPS)
    effect = diff.abs() / ((vf + vh) / 2).sqrt().clamp_min(_EPS)
    mask = ((t >= min_t) & (effect >= min_effect)).to(forget_x.dtype)
    if not bool(mask.any()):
        return None
    return mask.reshape(forget_x.shape[1:])


def transplant(held_x: Tensor, forget_x: Tensor, mask: Tensor) -> Tensor:
    """Held-out inputs with the atypical positions taken from forget inputs (paired by row)."""
    return held_x * (1 - mask) + forget_x * mask


def transplant_distance(logits: Tensor, target_probs: Tensor) -> Tensor:
    """mean_i KL(target_i ‖ softmax(logits_i)): a held-out input must keep the prediction it had
    before its atypical positions were replaced by a forget input's. A model that never saw the
    forget set has no reason to let those few positions decide the class; one that memorised
    a trigger there does."""
    return mean_kl_to_logits(target_probs, logits)


def relative_l1(g: Mapping[str, Tensor], params: Mapping[str, Tensor]) -> Tensor:
    """Sparsity of a dummy gradient: ‖g‖₁ / ‖θ‖₁ over the generated tensors (dimensionless)."""
    # reduce, not sum: the same additions without sum's int start, so the result is a Tensor.
    num: Tensor = functools.reduce(operator.add, (t.abs().sum() for t in g.values()))
    den: Tensor = functools.reduce(operator.add, (params[name].abs().sum() for name in g))
    return num / den


def apply_dummy_gradient(
    params: Mapping[str, Tensor], g: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """θ - g for the generated tensors, θ for the rest: one plain gradient step of size 1."""
    return {name: (p - g[name]) if name in g else p for name, p in params.items()}


@dataclass(frozen=True, slots=True)
class ObjectiveWeights:
    """How much each term counts; chosen by the experiments in docs/unlearning.md."""

    profile: float = 1.0  # KL between mean confidence profiles
    quantile: float = 0.0  # per-class quantile matching of confidences (off: see the docs)
    utility: float = 1.0  # plain cross-entropy on the kept data after applying g
    drift: float = 5.0  # squared logit drift on (augmented) kept inputs
    sparsity: float = 1.0  # relative L1 of g, multiplied by that cross-entropy
    sharpen: float = 0.0  # per-sample confidence matching on the forget batch (off: see the docs)
    transplant: float = 10.0  # held-out inputs carrying the forget set's atypical positions


@dataclass(frozen=True, slots=True)
class ObjectiveTerms:
    total: Tensor
    distance: Tensor  # profile distance of the forget batch to the unseen reference
    utility: Tensor  # cross-entropy on the kept batch after applying g
    drift: Tensor  # mean squared logit change on the drift batch
    sparsity: Tensor  # relative L1 of g


def logit_drift(
    model: nn.Module, params: Mapping[str, Tensor], moved: Mapping[str, Tensor], x: Tensor
) -> Tensor:
    """Mean squared change of the logits on inputs `x` when θ becomes θ - g.

    Logits rather than probabilities: a trained model is near one-hot on clean data, where a
    KL or cross-entropy is ~0 and says nothing about how far the function moved.
    """
    with torch.no_grad():
        before = functional_call(model, dict(params), (x,))  # (B, C)
    after = functional_call(model, dict(moved), (x,))
    return (after - before).pow(2).mean()


def forget_objective(
    model: nn.Module,
    params: Mapping[str, Tensor],
    g: Mapping[str, Tensor],
    forget_x: Tensor,
    reference_probs: Tensor,
    keep_x: Tensor,
    keep_y: Tensor,
    weights: ObjectiveWeights,
    drift_x: Tensor | None = None,
    keep_loss_before: float = 1.0,
    transplant_x: Tensor | None = None,
    transplant_target: Tensor | None = None,
    teacher: Mapping[str, Tensor] | None = None,
) -> ObjectiveTerms:
    """The generator's loss for one batch (paper §4, "training the generator").

    distance(profile of the forget batch under θ - g, profile of the unseen reference under θ)
      + utility · CE(θ - g; kept batch)
      + sparsity · CE(θ - g; kept batch) · ‖g‖₁/‖θ‖₁.
    The sparsity term is weighted by the kept-data loss as in the paper: the more g hurts the
    data that must stay learned, the more each unit of g costs. `model` only supplies the
    architecture: it is evaluated functionally, never modified.
    """
    moved = apply_dummy_gradient(params, g)
    logits = functional_call(model, moved, (forget_x,))  # (B, C)
    ref_profile = confidence_profile(reference_probs.log())
    distance = weights.profile * profile_distance(confidence_profile(logits), ref_profile)
    if weights.quantile:
        distance = distance + weights.quantile * quantile_distance(
            F.softmax(logits, dim=1), reference_probs
        )
    if weights.sharpen:
        distance = distance + weights.sharpen * sharpen_distance(logits, reference_probs)
    if weights.transplant and transplant_x is not None and transplant_target is not None:
        moved_logits = functional_call(model, moved, (transplant_x,))
        distance = distance + weights.transplant * transplant_distance(
            moved_logits, transplant_target
        )
    utility = F.cross_entropy(functional_call(model, moved, (keep_x,)), keep_y)
    drift = logit_drift(
        model, params if teacher is None else teacher, moved, keep_x if drift_x is None else drift_x
    )
    sparsity = relative_l1(g, params)
    # The sparsity weight is the kept-data loss relative to before g (at least 1): free of the
    # loss's scale, and growing as soon as g starts to hurt what must stay learned.
    harm = utility / max(keep_loss_before, _MIN_KEEP_LOSS)
    total = (
        distance
        + weights.utility * utility
        + weights.drift * drift
        + weights.sparsity * (1.0 + harm) * sparsity
    )
    return ObjectiveTerms(total, distance, utility, drift, sparsity)
