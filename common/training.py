"""Local training and evaluation: plain SGD loops, read top to bottom.

`train_local` is the one place a client turns data into an update. It returns the update as a
flat float32 vector (the `tensors` codec layout) so the masking and upload path never sees a
model. Same model, data, config and seed give a bit-identical update on the same thread count.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from forsaken.common.errors import InvalidPayload
from forsaken.common.tensors import flatten, specs_of, unflatten
from forsaken.common.types import TrainSettings
from forsaken.common.update_bound import clip_to_norm

EVAL_BATCH = 1024


# One definition of the hyper-parameters for the wire, the server's flags and local training.
TrainConfig = TrainSettings


@dataclass(frozen=True, slots=True, eq=False)
class LocalResult:
    delta: np.ndarray  # (num_params,) float32: trained minus starting parameters
    num_samples: int
    mean_loss: float  # mean training loss over every sample of every epoch
    gradient_evaluations: int  # per-sample gradients: num_samples * local_epochs
    norm: float = 0.0  # L2 norm of the update before clipping to `max_update_norm`


@dataclass(frozen=True, slots=True)
class EvalResult:
    accuracy: float
    loss: float  # mean cross-entropy


def train_local(
    model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int
) -> LocalResult:
    """Train `model` in place on (x, y) and return the update it made, clipped to L2 norm
    `cfg.max_update_norm` (the bound the server enforces on aggregates).

    The batch order comes from a torch Generator seeded with `seed`; nothing else is random.
    """
    n = len(x)
    if n == 0 or n != len(y):
        raise InvalidPayload(f"need matching non-empty data, got {n} inputs and {len(y)} labels")
    xs = torch.tensor(np.asarray(x, dtype=np.float32))  # (n, C, H, W), a private copy
    ys = torch.tensor(np.asarray(y, dtype=np.int64))  # (n,)
    before = flatten(model.state_dict())  # a copy: flatten concatenates
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.learning_rate,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    generator = torch.Generator().manual_seed(seed)
    loss_sum = 0.0
    model.train()
    with _deterministic():
        for _ in range(cfg.local_epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                loss = F.cross_entropy(model(xs[batch]), ys[batch])  # logits (B, classes)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(batch)
    delta, norm = clip_to_norm(flatten(model.state_dict()) - before, cfg.max_update_norm)
    return LocalResult(
        delta=delta.astype(np.float32, copy=False),
        num_samples=n,
        mean_loss=loss_sum / (n * cfg.local_epochs),
        gradient_evaluations=n * cfg.local_epochs,
        norm=norm,
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray) -> EvalResult:
    """Accuracy and mean cross-entropy of `model` on (x, y)."""
    if len(x) == 0 or len(x) != len(y):
        raise InvalidPayload(f"need matching non-empty data, got {len(x)} and {len(y)}")
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(x), EVAL_BATCH):
        xb = torch.tensor(np.asarray(x[start : start + EVAL_BATCH], dtype=np.float32))
        yb = torch.tensor(np.asarray(y[start : start + EVAL_BATCH], dtype=np.int64))
        logits = model(xb)  # (B, classes)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == yb).sum())
    return EvalResult(accuracy=correct / len(x), loss=loss_sum / len(x))


def load_vector(model: nn.Module, vector: np.ndarray) -> None:
    """Set every parameter of `model` from a flat vector in the `tensors` codec layout."""
    arrays = unflatten(np.asarray(vector, dtype=np.float32), specs_of(model.state_dict()))
    # copy: unflatten returns views into `vector`, and the model must not alias caller memory.
    model.load_state_dict({name: torch.tensor(a) for name, a in arrays.items()})


@contextmanager
def _deterministic() -> Iterator[None]:
    """Insist on deterministic kernels while training, then restore the caller's setting."""
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)
