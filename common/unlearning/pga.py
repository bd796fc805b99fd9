"""Projected gradient ascent (Halimi et al., "Federated Unlearning: How to Efficiently Erase a
Client in FL?", 2022), adapted to secure aggregation.

Halimi's client maximises its loss on the data to forget, but only inside an L2 ball around a
reference model w_ref, so the ascent cannot run off to a useless model; recovery rounds among the
other clients then restore utility. In the paper w_ref = (N·w_global - w_client)/(N - 1), the
average of the other clients' models, which needs this client's last local model.

Without per-client history on the server, the client computes w_ref itself: w_ref = θ - (w/W)·Δ̂,
with Δ̂ this client's own last uploaded update (the client may remember its own update; the server
never stores it) and w/W its share of that round's weight. With no remembered update the
reference is the global model θ itself. The radius is Halimi's: one third of the mean distance
from w_ref to freshly initialised models of the same architecture. One unlearning round, then
done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from forsaken.common.errors import ConfigError
from forsaken.common.models import build_model
from forsaken.common.structure import parameter_entries
from forsaken.common.tensors import flatten
from forsaken.common.training import load_vector
from forsaken.common.types import ModelSpec
from forsaken.common.unlearning.engine import ForgetData, ForgetStep, RoundWeights

_RANDOM_MODELS = 5  # fresh inits whose mean distance sets the radius


@dataclass(frozen=True, slots=True)
class PGAConfig:
    # Local training's lr and momentum: at Halimi's lr 0.01 without momentum the ascent never
    # leaves a model that fits its forget set with loss ~1e-6 (the gradient is ~1e-6 too).
    learning_rate: float = 0.1
    momentum: float = 0.9
    epochs: int = 5
    batch_size: int = 32
    radius_fraction: float = 1 / 3  # of the mean distance from w_ref to random models
    loss_ceiling: float | None = None  # stop once a batch's loss exceeds this; None: ln(C),
    # the loss of a uniform guess, i.e. "the forget set now fits no better than chance"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"invalid PGA config {self}")


def project_to_ball(w: torch.Tensor, center: torch.Tensor, radius: float) -> torch.Tensor:
    """The closest point to `w` within L2 distance `radius` of `center`."""
    offset = w - center
    norm = float(offset.norm())
    return w if norm <= radius else center + offset * (radius / norm)


class PGAEngine:
    """Halimi's PGA as a one-round forget engine (same `step` contract as Forsaken)."""

    def __init__(
        self,
        spec: ModelSpec,
        config: PGAConfig | None = None,
        last_update: np.ndarray | None = None,
        last_weight_share: float = 0.0,
    ) -> None:
        self.spec = spec
        self.config = config or PGAConfig()
        self.last_update = last_update
        self.last_weight_share = last_weight_share
        self.model = build_model(spec.architecture, tuple(spec.input_shape), spec.num_classes, 0)
        # The ball lives in parameter space; float buffers (BatchNorm statistics) are not in it.
        self._params = parameter_entries(self.model)
        self.radius = float("nan")  # set by each step; kept for inspection and tests

    def reference(self, global_vector: np.ndarray) -> np.ndarray:
        """w_ref: the global model minus this client's estimated share of it (see module doc)."""
        ref = np.asarray(global_vector, dtype=np.float32).copy()
        if self.last_update is not None:
            ref -= np.float32(self.last_weight_share) * self.last_update.astype(np.float32)
        return ref

    def ball_radius(self, reference: np.ndarray) -> float:
        """Halimi's δ: a fraction of the mean distance from w_ref to fresh random models."""
        c = self.spec
        dists = [
            float(
                np.linalg.norm(
                    flatten(
                        build_model(
                            c.architecture,
                            tuple(c.input_shape),
                            c.num_classes,
                            self.config.seed * 1000 + k,
                        ).state_dict()
                    )[self._params]
                    - reference[self._params]
                )
            )
            for k in range(_RANDOM_MODELS)
        ]
        return self.config.radius_fraction * float(np.mean(dists))

    def step(
        self,
        global_vector: np.ndarray,
        data: ForgetData,
        round_number: int,
        weights: RoundWeights,
    ) -> ForgetStep:
        """Ascend the forget-set loss inside the ball; upload the scaled move. Done at once."""
        cfg = self.config
        start = np.asarray(global_vector, dtype=np.float32)
        reference = self.reference(start)
        self.radius = self.ball_radius(reference)
        center = torch.from_numpy(reference[self._params])
        load_vector(self.model, start)
        params = list(self.model.parameters())
        xs = torch.tensor(np.asarray(data.forget_x, dtype=np.float32))
        ys = torch.tensor(np.asarray(data.forget_y, dtype=np.int64))
        rng = torch.Generator().manual_seed(cfg.seed * 7919 + round_number)
        optimizer = torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum)
        evals, last_loss, stopped = 0, 0.0, False
        ceiling = (
            cfg.loss_ceiling if cfg.loss_ceiling is not None else math.log(self.spec.num_classes)
        )
        self.model.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(xs), generator=rng)
            for i in range(0, len(xs), cfg.batch_size):
                batch = order[i : i + cfg.batch_size]
                loss = F.cross_entropy(self.model(xs[batch]), ys[batch])
                optimizer.zero_grad(set_to_none=True)
                (-loss).backward()  # ascent
                optimizer.step()
                evals += len(batch)
                self._project(center)
                last_loss = float(loss.detach())
                if last_loss > ceiling:
                    stopped = True
                    break
            if stopped:
                break
        weight, scale = weights.weight, weights.scale
        moved = flatten(self.model.state_dict()) - start
        update = (moved * scale).astype(np.float32)
        metrics = {
            "radius": self.radius,
            "distance_to_reference": float(
                np.linalg.norm(flatten(self.model.state_dict())[self._params] - center.numpy())
            ),
            "last_batch_loss": last_loss,
            "scale": scale,
        }
        return ForgetStep(update, weight, True, metrics, evals)

    @torch.no_grad()
    def _project(self, center: torch.Tensor) -> None:
        flat = torch.cat([p.reshape(-1) for p in self.model.parameters()])
        projected = project_to_ball(flat, center, self.radius)
        offset = 0
        for p in self.model.parameters():
            p.copy_(projected[offset : offset + p.numel()].reshape(p.shape))
            offset += p.numel()

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}  # one-round method: nothing to resume

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        del state
