"""Local training and evaluation: plain SGD loops, read top to bottom.

`train_local` is the one place a client turns data into an update. It returns the update as a
flat float32 vector (the `tensors` codec layout) so the masking and upload path never sees a
model. Same model, data, config and seed give a bit-identical update on the same thread count.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    loss: float  # mean loss per sample (cross-entropy unless a task says otherwise)


# (logits (B, classes), labels (B,)) -> the mean loss of the batch, a scalar tensor.
LossFn = Callable[[Tensor, Tensor], Tensor]
# Trains a model in place on (x, y) under the round's settings and seed; returns the mean loss.
FitFn = Callable[[nn.Module, np.ndarray, np.ndarray, TrainSettings, int], float]


def train_local(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    fit: FitFn | None = None,
) -> LocalResult:
    """Train `model` in place on (x, y) and return the update it made, clipped to L2 norm
    `cfg.max_update_norm` (the bound the server enforces on aggregates).

    `fit` does the training itself (a task's own step; default `sgd_fit`). Whatever it does,
    the update is the model's state afterwards minus before, so masking and aggregation never
    depend on how it was computed.
    """
    n = len(x)
    if n == 0 or n != len(y):
        raise InvalidPayload(f"need matching non-empty data, got {n} inputs and {len(y)} labels")
    before = flatten(model.state_dict())  # a copy: flatten concatenates
    model.train()
    with _deterministic():
        mean_loss = float((fit or sgd_fit)(model, x, y, cfg, seed))
    delta, norm = clip_to_norm(flatten(model.state_dict()) - before, cfg.max_update_norm)
    return LocalResult(
        delta=delta.astype(np.float32, copy=False),
        num_samples=n,
        mean_loss=mean_loss,
        gradient_evaluations=n * cfg.local_epochs,
        norm=norm,
    )


def sgd_fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    seed: int,
    loss_fn: LossFn = F.cross_entropy,
) -> float:
    """The default local training: `cfg.local_epochs` epochs of mini-batch SGD on `loss_fn`;
    returns the mean loss over every sample of every epoch.

    The batch order comes from a torch Generator seeded with `seed`; nothing else is random.
    """
    n = len(x)
    xs = torch.tensor(np.asarray(x, dtype=np.float32))  # (n, ...), a private copy
    ys = torch.tensor(np.asarray(y, dtype=np.int64))  # (n,)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.learning_rate,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    generator = torch.Generator().manual_seed(seed)
    loss_sum = 0.0
    model.train()
    for _ in range(cfg.local_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            loss = loss_fn(model(xs[batch]), ys[batch])  # logits (B, classes)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(batch)
    return loss_sum / (n * cfg.local_epochs)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, loss_fn: LossFn = F.cross_entropy
) -> EvalResult:
    """Accuracy and mean loss (`loss_fn`, cross-entropy by default) of `model` on (x, y)."""
    if len(x) == 0 or len(x) != len(y):
        raise InvalidPayload(f"need matching non-empty data, got {len(x)} and {len(y)}")
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, len(x), EVAL_BATCH):
        xb = torch.tensor(np.asarray(x[start : start + EVAL_BATCH], dtype=np.float32))
        yb = torch.tensor(np.asarray(y[start : start + EVAL_BATCH], dtype=np.int64))
        logits = model(xb)  # (B, classes)
        loss_sum += float(loss_fn(logits, yb)) * len(yb)
        correct += int((logits.argmax(dim=1) == yb).sum())
    return EvalResult(accuracy=correct / len(x), loss=loss_sum / len(x))


def load_vector(model: nn.Module, vector: np.ndarray) -> None:
    """Set every parameter of `model` from a flat vector in the `tensors` codec layout."""
    current = model.state_dict()
    arrays = unflatten(np.asarray(vector, dtype=np.float32), specs_of(current))
    # copy: unflatten returns views into `vector`, and the model must not alias caller memory.
    state = OrderedDict((name, torch.tensor(a)) for name, a in arrays.items())
    # The modules' version metadata: without it BatchNorm takes the dict for a pre-1.0 one and
    # adds back the batch counter that a task's model keeps out of its exchanged state.
    # torch sets this attribute on its state dicts, which OrderedDict does not declare.
    state._metadata = getattr(current, "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(state)


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
