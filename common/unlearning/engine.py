"""The forget engine a client runs in place of local training after ForgetMe (docs/unlearning.md).

Every method returns a `ForgetStep`: a flat float32 update in the `tensors` layout plus the
sample count the client reports as its weight, exactly what `train_local` gives the upload path,
so masking, quantization and secure aggregation cannot tell unlearning from training
(STYLE habit 9). The server sees Σ wᵢ uᵢ / Σ wᵢ and nothing else.

Scaling so the update survives averaging: the server announces each round's weights
(`RoundWeights`: this node's w, the count it was credited with before the request, so the
weight itself gives nothing away, and the round's total W); the engine reports w and uploads
u = (W / w) · δ. The aggregate then carries δ at full strength, plus the other clients'
ordinary training at weight (W - w)/W.

`ForsakenEngine` is the seed method (Liu et al., "Learn to Forget", §4): a dummy-gradient
generator trained each unlearning round, stopping when a local loss-threshold membership oracle
says the forget set looks like data the model never saw. In its first round it starts the
generator not from the global model but from the global model minus this client's own
first-order share of it (its record Σ w_t Δ_t over W, reversed only as far as the kept data's
accuracy allows): the generator alone matched population statistics and left per-example
memorisation in place (docs/unlearning.md, revision 4).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forsaken.common.errors import ConfigError, InvalidPayload
from forsaken.common.metrics import oracle_member_rate, per_sample_losses
from forsaken.common.models import build_model
from forsaken.common.types import ModelSpec
from forsaken.common.unlearning.generator import DummyGradientGenerator, GeneratorConfig
from forsaken.common.unlearning.objectives import (
    ObjectiveWeights,
    apply_dummy_gradient,
    atypical_mask,
    confidence_profile,
    forget_objective,
    profile_distance,
    transplant,
)


@dataclass(frozen=True, slots=True, eq=False)
class ForgetStep:
    """One unlearning round's contribution: the same shape of result as local training."""

    update: np.ndarray  # (num_params,) float32, already scaled to survive averaging
    num_samples: int  # the weight to report; 0 means "contribute nothing this round"
    done: bool  # the local oracle says the forget set looks unseen (or the round cap hit)
    metrics: dict[str, float]
    gradient_evaluations: int  # per-sample forward+backward passes through the model


@dataclass(frozen=True, slots=True, eq=False)
class ForgetData:
    """What a forgetting node holds for one request: the samples to forget, the training
    samples it keeps, and its held-out slice (never trained on; the engines' unseen data)."""

    forget_x: np.ndarray
    forget_y: np.ndarray
    retained_x: np.ndarray
    retained_y: np.ndarray
    held_out_x: np.ndarray
    held_out_y: np.ndarray


@dataclass(frozen=True, slots=True)
class RoundWeights:
    """The weights the server announced for this round: this node's and the sum over the
    round's selected nodes. An upload lands in the mean with weight / total."""

    weight: int
    total: int

    def __post_init__(self) -> None:
        if self.weight < 1 or self.total < self.weight:
            raise ConfigError(
                f"round total weight {self.total} is below this client's weight {self.weight}"
            )

    @property
    def scale(self) -> float:
        """total / weight: the factor that makes this node's upload land at full strength."""
        return self.total / self.weight


class ForgetEngine(Protocol):
    """What a client's unlearning executor drives, one call per unlearning round."""

    def step(
        self,
        global_vector: np.ndarray,
        data: ForgetData,
        round_number: int,
        weights: RoundWeights,
    ) -> ForgetStep: ...

    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...


def params_of(spec: ModelSpec, vector: np.ndarray) -> dict[str, Tensor]:
    """The model's parameters as named tensors, read from a flat vector (codec order)."""
    model = build_model(spec.architecture, tuple(spec.input_shape), spec.num_classes, seed=0)
    out: dict[str, Tensor] = {}
    offset = 0
    vec = torch.from_numpy(np.asarray(vector, dtype=np.float32).copy())
    for name, p in model.state_dict().items():
        out[name] = vec[offset : offset + p.numel()].reshape(p.shape)
        offset += p.numel()
    if offset != vec.numel():
        raise InvalidPayload(f"global vector has {vec.numel()} entries, the model {offset}")
    return out


@dataclass(frozen=True, slots=True)
class ForsakenConfig:
    """Forsaken's knobs; the defaults are the settings docs/unlearning.md settles on."""

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    weights: ObjectiveWeights = field(default_factory=ObjectiveWeights)
    steps_per_round: int = 30
    optimizer: str = "nsgd"  # "nsgd" (normalised SGD), "sgd" or "adam"; momentum 0.9
    learning_rate: float = 0.5
    output_scale: float = 0.5  # G's raw output times this times each tensor's init RMS
    forget_batch: int = 24
    keep_batch: int = 32
    transplant_batch: int = 72  # held-out inputs carrying forget inputs' atypical positions
    max_rounds: int = 5
    min_rounds: int = 2  # unlearning rounds to run before the oracle may stop the process
    oracle_quantile: float = 0.5  # "member" = loss below this quantile of held-out losses
    oracle_tolerance: float = 0.05  # done when the member rate is at most quantile + this
    shift: int = 1  # max pixel shift of the augmented kept inputs for the drift term
    # Share of the client's own recorded contribution Σ w_t Δ_t / W reversed in the first
    # unlearning round (0: none; needs the record, see ForsakenEngine).
    reversal: float = 1.0
    # The reversal is first-order: where the other clients' updates compensated this client's
    # (relabelled or label-skewed data pulling against them), subtracting the client's record
    # overshoots and wrecks the model. So the engine reverses the largest share (from
    # `reversal` down in eighths) that keeps at least this fraction of the model's above-chance
    # accuracy on the kept data (forward passes only, uncounted).
    reversal_floor: float = 0.7
    # What the drift term holds the kept inputs' logits to: "incoming" (each round's global
    # model, as revisions 1-3 did), "start" (the model G starts from: after the reversal in the
    # first round) or "original" (the global model when unlearning began).
    drift_teacher: str = "incoming"
    # Whose confidence on the held-out slice the forget set's profile is matched to: "incoming"
    # (the model G starts from) or "original" (the global model when unlearning began, a model
    # of this federation for which the slice is just as unseen).
    profile_reference: str = "original"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps_per_round < 1 or self.forget_batch < 1:
            raise ConfigError(f"invalid forsaken config {self}")
        if not 1 <= self.min_rounds <= self.max_rounds:
            raise ConfigError(f"invalid forsaken config {self}")
        if not 0.0 < self.oracle_quantile < 1.0:
            raise ConfigError(f"oracle_quantile must be in (0, 1), got {self.oracle_quantile}")
        if self.drift_teacher not in ("original", "incoming", "start") or self.reversal < 0:
            raise ConfigError(f"invalid forsaken config {self}")
        if self.profile_reference not in ("original", "incoming"):
            raise ConfigError(f"invalid forsaken config {self}")


_LOGIT_CHUNK = 1024  # inputs per forward pass when the engine scores a whole set
_NORMALISATION = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """The parameters G generates for when its config names none: all but normalisation
    layers' gains and shifts (BatchNorm, LayerNorm, GroupNorm, RMSNorm).

    A gain scales a whole channel, and G's step for a tensor is sized by that tensor's RMS
    (1 for a gain): one unit of output rescales every activation of the channel, a far coarser
    move than a weight-sized step. On a BatchNorm 1-D CNN (examples/sequence.py) generating
    for the gains sent the drift term from 0.4 to 22 and accuracy from 0.90 to 0.81 in one
    round; without them the round kept 0.91."""
    skipped = {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, _NORMALISATION)
        for name, _ in module.named_parameters(recurse=False)
    }
    names = tuple(n for n, _ in model.named_parameters() if n not in skipped)
    return names or tuple(n for n, _ in model.named_parameters())


def _tensor(x: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
    return torch.tensor(np.asarray(x), dtype=dtype)


class ForsakenEngine:
    """The seed method's client side. Create once per ForgetMe; call `step` every unlearning
    round; persist `state_dict()` (plain named arrays, no pickle) to survive a restart."""

    def __init__(
        self,
        spec: ModelSpec,
        config: ForsakenConfig | None = None,
        contribution: np.ndarray | None = None,
    ) -> None:
        self.spec = spec
        self.config = config or ForsakenConfig()
        # Σ_t w_t Δ_t: this client's own record of the updates it contributed, each weighted by
        # the count it reported. The round means carried w_t Δ_t / W_t of it.
        self.contribution = None if contribution is None else np.asarray(contribution, np.float64)
        self.anchor: np.ndarray | None = None  # the global model when unlearning began
        self.reversed = 0.0  # the share of the record reversed in this round
        self.model = build_model(spec.architecture, tuple(spec.input_shape), spec.num_classes, 0)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        init = dict(self.model.named_parameters())
        targets = self.config.generator.targets or default_targets(self.model)
        missing = [t for t in targets if t not in init]
        if missing:
            raise ConfigError(f"generator targets {missing} are not parameters of the model")
        shapes = [(t, tuple(init[t].shape)) for t in targets]
        # Scale by each tensor's init RMS so one unit of output means "a weight-sized step".
        scales = [self.config.output_scale * float(init[t].pow(2).mean().sqrt()) for t in targets]
        summary_dim = 3 * spec.num_classes
        self.generator = DummyGradientGenerator(
            summary_dim, shapes, self.config.generator, scales, seed=self.config.seed
        )
        self.optimizer = _optimizer(self.config, self.generator)
        self.rounds_done = 0

    def summary(self, logits: Tensor, labels: Tensor) -> Tensor:
        """G's input (3C,): the confidence profile plus the mean confidence per labelled class."""
        probs = torch.softmax(logits, dim=1)  # (n, C)
        c = self.spec.num_classes
        own = probs.gather(1, labels[:, None]).squeeze(1)  # (n,) confidence in the given label
        per_class = torch.zeros(c).index_add_(0, labels, own)
        counts = torch.bincount(labels, minlength=c).clamp_min(1)
        return torch.cat([confidence_profile(logits), per_class / counts])

    def step(
        self,
        global_vector: np.ndarray,
        data: ForgetData,
        round_number: int,
        weights: RoundWeights,
    ) -> ForgetStep:
        """One unlearning round (paper §4): train G, emit the scaled step, ask the oracle.

        Kept data for the utility, drift and sparsity terms is the retained set when the client
        keeps some data, else its held-out slice (the only clean data a client that forgets
        everything still holds).
        """
        cfg = self.config
        forget_x, held_out_x, retained_x = data.forget_x, data.held_out_x, data.retained_x
        if len(forget_x) == 0 or len(held_out_x) == 0:
            raise ConfigError("forsaken needs a non-empty forget set and held-out slice")
        incoming = params_of(self.spec, global_vector)
        keep = (retained_x, data.retained_y) if len(retained_x) else (held_out_x, data.held_out_y)
        batch = _Round(
            fx=_tensor(forget_x),
            fy=_tensor(data.forget_y, torch.int64),
            hx=_tensor(held_out_x),
            hy=_tensor(data.held_out_y, torch.int64),
            kx=_tensor(keep[0]),
            ky=_tensor(keep[1], torch.int64),
        )
        weight = weights.weight
        with torch.no_grad():
            forget_logits = self._logits(incoming, batch.fx)
            held_logits = self._logits(incoming, batch.hx)
        reference = confidence_profile(held_logits)
        rate_before = self._member_rate(forget_logits, batch.fy, held_logits, batch.hy)
        metrics = {
            "distance_before": float(
                profile_distance(confidence_profile(forget_logits), reference)
            ),
            "member_rate_before": rate_before,
        }
        if self.rounds_done == 0:
            self.anchor = np.asarray(global_vector, dtype=np.float32).copy()
        self.rounds_done += 1
        if rate_before <= cfg.oracle_quantile + cfg.oracle_tolerance and (
            self.rounds_done > cfg.min_rounds
        ):
            # Already indistinguishable from unseen data: nothing to upload, nothing to learn.
            zero = np.zeros(sum(p.numel() for p in incoming.values()), dtype=np.float32)
            return ForgetStep(zero, 0, True, metrics, 0)
        start = self._start(global_vector, weights, batch)
        params = incoming if start is None else params_of(self.spec, start)
        teacher = {"incoming": incoming, "start": params}.get(cfg.drift_teacher, incoming)
        if cfg.drift_teacher == "original" and self.anchor is not None:
            teacher = params_of(self.spec, self.anchor)
        with torch.no_grad():
            start_forget_logits = self._logits(params, batch.fx)
            start_held_logits = self._logits(params, batch.hx)
        summary = self.summary(start_forget_logits, batch.fy)
        reference_logits = start_held_logits
        if cfg.profile_reference == "original" and self.anchor is not None:
            with torch.no_grad():
                reference_logits = self._logits(params_of(self.spec, self.anchor), batch.hx)
        g, evals, terms = self._train_generator(
            params, teacher, batch, summary, start_held_logits, reference_logits, round_number
        )
        moved = apply_dummy_gradient(params, g)
        with torch.no_grad():
            after_logits = self._logits(moved, batch.fx)
            rate_after = self._member_rate(
                after_logits, batch.fy, self._logits(moved, batch.hx), batch.hy
            )
        scale = weights.scale
        delta = torch.cat([(moved[n] - p).reshape(-1) for n, p in incoming.items()])
        update = (delta.numpy() * scale).astype(np.float32)
        metrics |= {
            "distance_after": float(profile_distance(confidence_profile(after_logits), reference)),
            "member_rate_after": rate_after,
            "scale": scale,
            "max_abs_update": float(np.abs(update).max()),
            "reversed": self.reversed,
        } | terms
        done = (
            rate_after <= cfg.oracle_quantile + cfg.oracle_tolerance
            and self.rounds_done >= cfg.min_rounds
        ) or self.rounds_done >= cfg.max_rounds
        return ForgetStep(update, weight, done, metrics, evals)

    def _start(
        self, global_vector: np.ndarray, weights: RoundWeights, batch: _Round
    ) -> np.ndarray | None:
        """Where G starts from: in the first round, the global model minus a share of this
        client's own contribution to it (its recorded Σ w_t Δ_t over the round total W, see
        `reversal_floor`); else None (the model itself)."""
        cfg = self.config
        self.reversed = 0.0
        if self.rounds_done != 1 or self.contribution is None or not cfg.reversal:
            return None
        share = self.contribution / weights.total
        if share.shape != np.shape(global_vector):
            raise InvalidPayload(
                f"the contribution record has {share.size} entries, "
                f"the model {np.size(global_vector)}"
            )
        theta = np.asarray(global_vector, dtype=np.float64)
        chance = 1.0 / self.spec.num_classes
        floor = chance + cfg.reversal_floor * (self._kept_accuracy(theta, batch) - chance)
        for eighths in range(8, 0, -1):
            alpha = cfg.reversal * eighths / 8
            candidate = theta - alpha * share
            if self._kept_accuracy(candidate, batch) >= floor:
                self.reversed = alpha
                return candidate.astype(np.float32)
        return None

    def _kept_accuracy(self, vector: np.ndarray, batch: _Round) -> float:
        with torch.no_grad():
            logits = self._logits(params_of(self.spec, vector.astype(np.float32)), batch.kx)
        return float((logits.argmax(dim=1) == batch.ky).float().mean())

    def _train_generator(
        self,
        params: dict[str, Tensor],
        teacher: dict[str, Tensor],
        batch: _Round,
        summary: Tensor,
        held_logits: Tensor,
        reference_logits: Tensor,
        round_number: int,
    ) -> tuple[dict[str, Tensor], int, dict[str, float]]:
        """`steps_per_round` optimizer steps on G; returns G's final g, the cost and the terms.

        Batches, augmentation and G's input noise come from a generator seeded by (seed,
        round), so a resumed engine repeats them exactly.
        """
        cfg = self.config
        rng = torch.Generator().manual_seed(_round_seed(cfg.seed, round_number))
        noise = torch.randn(cfg.generator.noise_dim, generator=rng)
        held_probs = torch.softmax(held_logits, dim=1)  # (n_held, C): transplant targets
        reference_probs = torch.softmax(reference_logits, dim=1)  # the unseen reference
        mask = atypical_mask(batch.fx, batch.hx) if cfg.weights.transplant else None
        atypical = 0 if mask is None else int(mask.sum())
        with torch.no_grad():
            keep_loss = float(F.cross_entropy(self._logits(params, batch.kx), batch.ky))
        evals, last = 0, {}
        self.generator.train()
        for _ in range(cfg.steps_per_round):
            fb = torch.randint(
                len(batch.fx), (min(cfg.forget_batch, len(batch.fx)),), generator=rng
            )
            kb = torch.randint(len(batch.kx), (min(cfg.keep_batch, len(batch.kx)),), generator=rng)
            tx = tt = None
            if mask is not None:
                hb = torch.randint(len(batch.hx), (cfg.transplant_batch,), generator=rng)
                tb = torch.randint(len(batch.fx), (cfg.transplant_batch,), generator=rng)
                tx, tt = transplant(batch.hx[hb], batch.fx[tb], mask), held_probs[hb]
            terms = forget_objective(
                self.model,
                params,
                self.generator(summary, noise),
                batch.fx[fb],
                reference_probs,
                batch.kx[kb],
                batch.ky[kb],
                cfg.weights,
                drift_x=augment(batch.kx[kb], cfg.shift, rng),
                keep_loss_before=keep_loss,
                transplant_x=tx,
                transplant_target=tt,
                teacher=teacher,
            )
            self.optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            if cfg.optimizer == "nsgd":
                _normalise_gradients(self.generator)
            self.optimizer.step()
            evals += len(fb) + 2 * len(kb)  # the kept batch, plain and augmented
            evals += 0 if tx is None else len(tx)
            last = {
                "objective": terms.total,
                "distance": terms.distance,
                "utility_loss": terms.utility,
                "drift": terms.drift,
                "relative_l1": terms.sparsity,
            }
        self.generator.eval()
        with torch.no_grad():
            g = self.generator(summary, noise)
        measured = {k: float(v.detach()) for k, v in last.items()}
        return g, evals, measured | {"atypical_positions": float(atypical)}

    def _logits(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        # In chunks: a whole forget set through a task's CNN at once is gigabytes of
        # activations (18,000 Fashion-MNIST images: 1.8 GB for the first layer alone).
        chunks = [
            torch.func.functional_call(self.model, params, (x[i : i + _LOGIT_CHUNK],))
            for i in range(0, len(x), _LOGIT_CHUNK)
        ]
        return torch.cat(chunks) if chunks else torch.func.functional_call(self.model, params, (x,))

    def _member_rate(
        self, forget_logits: Tensor, fy: Tensor, held_logits: Tensor, hy: Tensor
    ) -> float:
        return oracle_member_rate(
            per_sample_losses(forget_logits.numpy(), fy.numpy()),
            per_sample_losses(held_logits.numpy(), hy.numpy()),
            self.config.oracle_quantile,
        )

    def state_dict(self) -> dict[str, np.ndarray]:
        """Generator weights, Adam moments and the round count as plain named arrays."""
        state = {f"generator.{k}": v.numpy().copy() for k, v in self.generator.state_dict().items()}
        for index, slot in self.optimizer.state_dict()["state"].items():
            for key, value in slot.items():
                state[f"adam.{index}.{key}"] = np.asarray(value).copy()
        state["rounds_done"] = np.array(self.rounds_done, dtype=np.int64)
        if self.anchor is not None:
            state["anchor"] = self.anchor.copy()
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Resume from `state_dict()`'s output: the next `step` matches an uninterrupted run."""
        gen = {
            k[len("generator.") :]: torch.tensor(v)
            for k, v in state.items()
            if k.startswith("generator.")
        }
        self.generator.load_state_dict(gen)
        slots: dict[int, dict[str, Tensor]] = {}
        for key, value in state.items():
            if key.startswith("adam."):
                _, index, name = key.split(".", 2)
                slots.setdefault(int(index), {})[name] = torch.tensor(value)
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": slots, "param_groups": groups})
        self.rounds_done = int(state["rounds_done"])
        self.anchor = np.asarray(state["anchor"], np.float32).copy() if "anchor" in state else None


@dataclass(frozen=True, slots=True)
class _Round:
    """One round's data as tensors: forget (f), held-out (h) and kept (k) inputs and labels."""

    fx: Tensor
    fy: Tensor
    hx: Tensor
    hy: Tensor
    kx: Tensor
    ky: Tensor


def _normalise_gradients(module: torch.nn.Module) -> None:
    """Scale G's gradient to unit global norm (normalised SGD): keep the direction (which
    weights g should touch), drop the scale, which differs by orders of magnitude between
    models and datasets."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    for g in grads:
        g.div_(norm.clamp_min(1e-12))


def _optimizer(config: ForsakenConfig, generator: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(generator.parameters(), lr=config.learning_rate)
    if config.optimizer in ("sgd", "nsgd"):
        return torch.optim.SGD(generator.parameters(), lr=config.learning_rate, momentum=0.9)
    raise ConfigError(f"unknown generator optimizer {config.optimizer!r}: use 'adam' or 'sgd'")


def augment(x: Tensor, shift: int, rng: torch.Generator) -> Tensor:
    """Clean-looking inputs beyond the few kept samples: a random mixup of pairs and, for images
    (B, C, H, W), a roll by up to `shift` pixels. They never carry anything the forget set alone
    has, so holding the model's logits fixed on them protects utility without protecting what
    must go. Other inputs (a task's sequences or tabular features) are only mixed: whether a
    shift along their axes keeps them plausible is not known here."""
    b = len(x)  # x: (B, ...)
    lam = torch.rand((b,) + (1,) * (x.ndim - 1), generator=rng)
    mixed = lam * x + (1 - lam) * x[torch.randperm(b, generator=rng)]
    if x.ndim != 4:
        return mixed
    dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=rng))
    return torch.roll(mixed, shifts=(dy, dx), dims=(2, 3))


def _round_seed(seed: int, round_number: int) -> int:
    # Batches and noise depend only on (seed, round), so a resumed engine draws the same ones.
    return int(np.random.SeedSequence([seed, round_number, 0xF06]).generate_state(1)[0])


class FinetuneEngine:
    """The negative control: the client simply stops contributing (docs/evaluation.md, "finetune").

    Its one step reports weight 0 (an all-zero upload leaves the secure sum unchanged) and is
    done at once; the remaining clients' ordinary rounds are all that "unlearns".
    """

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def step(
        self,
        global_vector: np.ndarray,
        data: ForgetData,
        round_number: int,
        weights: RoundWeights,
    ) -> ForgetStep:
        del data, round_number, weights
        zero = np.zeros(np.shape(global_vector), dtype=np.float32)
        return ForgetStep(zero, 0, True, {}, 0)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        del state  # stateless
