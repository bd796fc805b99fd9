"""FedQUIT (Mora et al., "FedQUIT: On-Device Federated Unlearning via a Quasi-Competent Virtual
Teacher", arXiv:2408.07587) as a forget engine, for comparison.

The forgetting client distils the global model into itself on its forget data from a "virtual
teacher": the global model's own output with the true class demoted, here its logit set to the
mean of the other logits, so the teacher keeps what the model knows about the other classes
(its dark knowledge) and stops vouching for the label. The client trains on that KL for a few
local epochs and uploads the move, scaled to survive averaging (as `pga` does), in one round;
recovery rounds among the others follow. It needs no history and no server-side state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from forsaken.common.errors import ConfigError
from forsaken.common.models import build_model
from forsaken.common.tensors import flatten
from forsaken.common.training import load_vector
from forsaken.common.types import ModelSpec
from forsaken.common.unlearning.engine import ForgetData, ForgetStep, RoundWeights


@dataclass(frozen=True, slots=True)
class FedQuitConfig:
    learning_rate: float = 0.1  # local training's
    momentum: float = 0.9
    epochs: int = 2
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"invalid FedQUIT config {self}")


def virtual_teacher(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, C) teacher probabilities: softmax of `logits` with each row's true-class logit
    replaced by the mean of its other logits."""
    c = logits.shape[1]
    own = logits.gather(1, labels[:, None])  # (B, 1)
    others_mean = (logits.sum(dim=1, keepdim=True) - own) / (c - 1)
    demoted = logits.scatter(1, labels[:, None], others_mean)
    return F.softmax(demoted, dim=1)


class FedQuitEngine:
    """One round of virtual-teacher distillation on the forget set (same `step` contract)."""

    def __init__(self, spec: ModelSpec, config: FedQuitConfig | None = None) -> None:
        self.spec = spec
        self.config = config or FedQuitConfig()
        self.model = build_model(spec.architecture, tuple(spec.input_shape), spec.num_classes, 0)

    def step(
        self,
        global_vector: np.ndarray,
        data: ForgetData,
        round_number: int,
        weights: RoundWeights,
    ) -> ForgetStep:
        cfg = self.config
        start = np.asarray(global_vector, dtype=np.float32)
        load_vector(self.model, start)
        xs = torch.tensor(np.asarray(data.forget_x, dtype=np.float32))
        ys = torch.tensor(np.asarray(data.forget_y, dtype=np.int64))
        self.model.eval()
        with torch.no_grad():
            teacher = virtual_teacher(self.model(xs), ys)  # fixed: from the global model
        rng = torch.Generator().manual_seed(cfg.seed * 7907 + round_number)
        optimizer = torch.optim.SGD(
            self.model.parameters(), lr=cfg.learning_rate, momentum=cfg.momentum
        )
        evals, last = 0, 0.0
        self.model.train()
        for _ in range(cfg.epochs):
            order = torch.randperm(len(xs), generator=rng)
            for i in range(0, len(xs), cfg.batch_size):
                batch = order[i : i + cfg.batch_size]
                log_p = F.log_softmax(self.model(xs[batch]), dim=1)
                loss = F.kl_div(log_p, teacher[batch], reduction="batchmean")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                evals += len(batch)
                last = float(loss.detach())
        weight, scale = weights.weight, weights.scale
        update = ((flatten(self.model.state_dict()) - start) * scale).astype(np.float32)
        return ForgetStep(update, weight, True, {"last_batch_kl": last, "scale": scale}, evals)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}  # one-round method: nothing to resume

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        del state
