"""The task API: bring your own model, data and training step.

A `Task` says what a federation trains and how, in one object, in the spirit of a Flower app:

    from forsaken.common.task import Task, split

    def data(request):                 # the federation's data, with its fixed test split
        x, y = read_my_arrays(request.data_dir)
        return split("mine", x, y)     # or split("mine", x, y, x_test, y_test)

    task = Task(name="mine", model=lambda: MyNet(), data=data)

Both daemons load it by reference (`--task my_task.py:task` or `--task package.module:task`,
see `task_loader`): the code is installed on each side, nothing is pickled or shipped. The parts:

- `model()` returns a fresh `nn.Module` that maps a float32 batch (B, ...) to class logits
  (B, C). It is called under a seeded torch RNG, so PyTorch's default initialisation is
  reproducible; an init drawn from numpy or `random` is refused (the server's initial model and
  every forget engine's skeleton must be the same for a seed). Its state_dict is what the
  federation averages: parameters and float buffers (BatchNorm statistics) travel securely,
  integer buffers (BatchNorm's batch counter) stay on each node (see `structure`).
- `data(request)` returns a `Dataset` (use `split`): its test split is the server's validation
  set; its train split is partitioned among the clients by `--partition i/N`, `--scheme` and
  `--seed`, as the built-in datasets are. `request.data_dir` is the daemon's `--data-dir`.
- `local_data(request)` (optional) returns this node's own `Examples` instead of a partition,
  for data that lives on each client's disk; the server still calls `data` for validation.
- `loss(logits, labels)` (default cross-entropy) is used by the default training step and by
  evaluation; `fit(model, x, y, settings, seed) -> mean loss` replaces the whole local training
  step (default: `training.sgd_fit`, SGD over `settings.local_epochs` epochs); `evaluate(model,
  x, y) -> EvalResult` replaces the server's accuracy/loss evaluation.

ForgetMe's methods and evidence read the model's logits, so a task is a classifier of C >= 2
classes with integer labels in [0, C). The built-in datasets and models are tasks of the same
API (`builtin_task`), so `--dataset` and `--architecture` are shorthands for one of them.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forsaken.common.datasets import Dataset, load_dataset, stratified_split
from forsaken.common.errors import ConfigError, ForsakenError, TaskFailed
from forsaken.common.models import (
    ARCHITECTURES,
    BUILTIN_ARCHITECTURES,
    build_model,
    default_architecture,
    register_architecture,
)
from forsaken.common.partition import ClientData, client_split, hold_out
from forsaken.common.structure import make_exchangeable, structure_digest, structure_of
from forsaken.common.tensors import TensorSpec
from forsaken.common.training import (
    EvalResult,
    FitFn,
    LocalResult,
    LossFn,
    TrainConfig,
    evaluate,
    sgd_fit,
    train_local,
)
from forsaken.common.types import ModelSpec

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DIGEST_CHARS = 12  # of the structure digest, in a user task's architecture name


@dataclass(frozen=True, slots=True)
class DataRequest:
    """What a daemon asks its task's data functions for."""

    partition_index: int = 0  # this client's shard, 0-based (the server asks for 0 of 1)
    partition_count: int = 1
    scheme: str = "iid"
    alpha: float = 0.5
    seed: int = 0
    data_dir: Path | None = None  # the daemon's --data-dir, if given


@dataclass(frozen=True, slots=True, eq=False)
class Examples:
    """Labelled examples a node holds: x (N, ...) numeric, y (N,) integer labels, and optional
    ids (N,) unique non-negative integers that a forget request can name (default 0..N-1)."""

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray | None = None


@dataclass(frozen=True)
class Task:
    """A federated classification task: see the module documentation for each part."""

    name: str
    model: Callable[[], nn.Module]
    data: Callable[[DataRequest], Dataset]
    local_data: Callable[[DataRequest], Examples] | None = None
    loss: LossFn = F.cross_entropy
    fit: FitFn | None = None
    evaluate: Callable[[nn.Module, np.ndarray, np.ndarray], EvalResult] | None = None
    # A model already in forsaken's registry (the built-in tasks); user tasks leave it empty.
    architecture: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ConfigError(
                f"task name {self.name!r} must be 1-64 letters, digits, '.', '_' or '-'"
            )
        for part in ("model", "data"):
            if not callable(getattr(self, part)):
                raise ConfigError(f"task {self.name!r}: {part} must be callable")
        for part in ("local_data", "loss", "fit", "evaluate"):
            value = getattr(self, part)
            if value is not None and not callable(value):
                raise ConfigError(f"task {self.name!r}: {part} must be callable or None")


def split(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    x_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
) -> Dataset:
    """A task's `Dataset` from arrays: x (N, ...) numeric, y (N,) integer labels.

    Without a test split, forsaken's fixed stratified one is used (20% of each class, the same
    for every run and seed). Inputs are kept as given (float32, not rescaled); sample ids are
    the row numbers (test rows after the training rows when a test split is given).
    """
    if (x_test is None) != (y_test is None):
        raise ConfigError(f"dataset {name!r}: give both x_test and y_test, or neither")
    x, y = _checked(x, y, f"dataset {name!r}")
    if x_test is None or y_test is None:
        train_idx, test_idx = stratified_split(y)
        arrays = (x[train_idx], y[train_idx], train_idx, x[test_idx], y[test_idx], test_idx)
    else:
        xt, yt = _checked(x_test, y_test, f"dataset {name!r} (test split)")
        if xt.shape[1:] != x.shape[1:]:
            raise ConfigError(
                f"dataset {name!r}: test inputs are {xt.shape[1:]}, training inputs {x.shape[1:]}"
            )
        n = len(y)
        ids = np.arange(n + len(yt), dtype=np.int64)
        arrays = (x, y, ids[:n], xt, yt, ids[n:])
    for array in arrays:
        array.setflags(write=False)
    classes = int(max(arrays[1].max(initial=0), arrays[4].max(initial=0))) + 1
    return Dataset(name, *arrays, input_shape=tuple(x.shape[1:]), num_classes=classes)


def _checked(x: object, y: object, where: str) -> tuple[np.ndarray, np.ndarray]:
    """float32 inputs and int64 labels, or a ConfigError that names what is wrong."""
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind not in "uif" or x.ndim < 2:
        raise ConfigError(f"{where}: x must be a numeric array (N, ...), got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.dtype.kind not in "ui":
        raise ConfigError(f"{where}: y must be a 1-D array of integer labels, got {y.dtype}")
    if len(x) != len(y):
        raise ConfigError(f"{where}: x has {len(x)} samples but y has {len(y)} labels")
    if len(y) and y.min() < 0:
        raise ConfigError(f"{where}: labels must be >= 0, got {int(y.min())}")
    x = np.array(x, dtype=np.float32)  # a private copy: the caller's array may change
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise ConfigError(f"{where}: x has {bad} NaN or Inf values")
    return x, np.array(y, dtype=np.int64)


@contextlib.contextmanager
def user_code(task: str, what: str) -> Iterator[None]:
    """Turn an exception from a task's own code into a TaskFailed naming the task and step."""
    try:
        yield
    except ForsakenError:
        raise
    except Exception as exc:
        raise TaskFailed(f"task {task!r}: {what} failed: {type(exc).__name__}: {exc}") from exc


# ---- a task bound to its checked model -------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoadedTask:
    """A task whose model was built and checked: what the daemons and engines work with."""

    task: Task
    spec: ModelSpec  # what the server announces; `spec.architecture` builds this model
    structure: tuple[TensorSpec, ...]  # real dtypes, state_dict order
    digest: bytes

    @property
    def name(self) -> str:
        return self.task.name

    def build_model(self, seed: int) -> nn.Module:
        """A fresh model; the same seed gives bit-identical state (and so the same digest)."""
        s = self.spec
        with user_code(self.name, "building the model"):
            return build_model(s.architecture, tuple(s.input_shape), s.num_classes, seed)

    def train(
        self, model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, seed: int
    ) -> LocalResult:
        fit = self.task.fit or functools.partial(sgd_fit, loss_fn=self.task.loss)
        with user_code(self.name, "local training"):
            return train_local(model, x, y, cfg, seed, fit=fit)

    def evaluate(self, model: nn.Module, x: np.ndarray, y: np.ndarray) -> EvalResult:
        with user_code(self.name, "evaluation"):
            if self.task.evaluate is not None:
                return self.task.evaluate(model, x, y)
            return evaluate(model, x, y, self.task.loss)

    def check_fits(self, input_shape: tuple[int, ...], classes: int, what: str) -> None:
        """Refuse data whose inputs or labels the checked model cannot take."""
        if tuple(input_shape) != tuple(self.spec.input_shape):
            raise ConfigError(
                f"task {self.name!r}: {what} has inputs of shape {tuple(input_shape)}, the "
                f"model was checked on {tuple(self.spec.input_shape)}"
            )
        if classes > self.spec.num_classes:
            raise ConfigError(
                f"task {self.name!r}: {what} has labels up to {classes - 1} but the model "
                f"outputs {self.spec.num_classes} logits"
            )


# ---- opening a task on either side -----------------------------------------------------------


def for_server(task: Task, request: DataRequest) -> tuple[LoadedTask, Dataset]:
    """The task bound to its model, and its data, whose test split is the validation set."""
    dataset = _dataset(task, request)
    if len(dataset.y_test) == 0:
        raise ConfigError(f"task {task.name!r}: its data has an empty test split")
    loaded = bind(task, dataset.x_test[:2], dataset.name)
    loaded.check_fits(dataset.input_shape, dataset.num_classes, "its data")
    return loaded, dataset


def for_client(
    task: Task, request: DataRequest, held_out_fraction: float
) -> tuple[LoadedTask, ClientData, Dataset | None]:
    """The task bound to its model; this node's data (its partition of `data`, or its own
    `local_data`) minus the held-out slice; and the whole dataset when it is a partition."""
    if task.local_data is not None:
        with user_code(task.name, "loading this node's data (local_data)"):
            examples = task.local_data(request)
        own = _local(task.name, examples, request, held_out_fraction)
        loaded = bind(task, own.x_train[:2], task.name)
        classes = int(max(own.y_train.max(), own.y_held_out.max(initial=0))) + 1
        loaded.check_fits(tuple(own.x_train.shape[1:]), classes, "local_data")
        return loaded, own, None
    dataset = _dataset(task, request)
    if len(dataset.y_train) == 0:
        raise ConfigError(f"task {task.name!r}: its data has an empty training split")
    loaded = bind(task, dataset.x_train[:2], dataset.name)
    loaded.check_fits(dataset.input_shape, dataset.num_classes, "its data")
    part = client_split(
        dataset,
        request.partition_index,
        request.partition_count,
        request.scheme,
        request.alpha,
        request.seed,
        held_out_fraction=held_out_fraction,
    )
    return loaded, part, dataset


def _local(name: str, ex: object, request: DataRequest, fraction: float) -> ClientData:
    where = f"task {name!r}: local_data"
    if not isinstance(ex, Examples):
        raise ConfigError(
            f"{where} returned {type(ex).__name__}, not forsaken.common.task.Examples"
        )
    x, y = _checked(ex.x, ex.y, where)
    if len(y) < 2:
        raise ConfigError(f"{where} gave {len(y)} samples; at least 2 are needed")
    ids = np.arange(len(y), dtype=np.int64) if ex.ids is None else np.asarray(ex.ids)
    if ids.shape != y.shape or ids.dtype.kind not in "ui" or (ids < 0).any():
        raise ConfigError(f"{where}: ids must be (N,) non-negative integers")
    if len(np.unique(ids)) != len(ids):
        raise ConfigError(f"{where}: ids must be unique (a forget request names them)")
    train, held = hold_out(np.arange(len(y)), fraction, request.seed, request.partition_index)
    ids = ids.astype(np.int64)
    return ClientData(x[train], y[train], ids[train], x[held], y[held], ids[held])


def _dataset(task: Task, request: DataRequest) -> Dataset:
    with user_code(task.name, "loading its data (data)"):
        dataset = task.data(request)
    if not isinstance(dataset, Dataset):
        raise ConfigError(
            f"task {task.name!r}: data returned {type(dataset).__name__}, not a Dataset "
            "(build it with forsaken.common.task.split)"
        )
    return dataset


def bind(task: Task, sample_x: np.ndarray, dataset_name: str = "") -> LoadedTask:
    """Build `task`'s model twice under one seed, check it on `sample_x`, and register it under
    a name that carries its structure digest (`name@digest`), which is what the server
    announces and every engine builds."""
    first, second = _seeded_build(task), _seeded_build(task)
    mismatch = _first_unequal(first, second)
    if mismatch is not None:
        raise ConfigError(
            f"task {task.name!r}: model() is not deterministic for a seed: two builds under "
            f"seed 0 differ in {mismatch!r}; draw initial weights from torch's RNG (PyTorch's "
            "default layer init does), not from numpy's or Python's"
        )
    classes = _output_classes(task, first, sample_x)
    structure = structure_of(first)
    digest = structure_digest(structure)
    if task.architecture:
        architecture = task.architecture
    else:
        architecture = f"{task.name}@{digest.hex()[:_DIGEST_CHARS]}"
        register_architecture(architecture, lambda _shape, _classes: _exchangeable(task))
    shape = tuple(int(d) for d in sample_x.shape[1:])
    spec = ModelSpec(architecture, shape, classes, dataset_name or task.name)
    return LoadedTask(task, spec, structure, digest)


def _exchangeable(task: Task) -> nn.Module:
    model = task.model()
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"task {task.name!r}: model() returned {type(model).__name__}, not a torch nn.Module"
        )
    return make_exchangeable(model)


def _seeded_build(task: Task) -> nn.Module:
    with user_code(task.name, "building the model"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _exchangeable(task)


def _first_unequal(a: nn.Module, b: nn.Module) -> str | None:
    sa, sb = a.state_dict(), b.state_dict()
    if list(sa) != list(sb):
        return "the names of its tensors"
    for name in sa:
        if sa[name].shape != sb[name].shape or not torch.equal(sa[name], sb[name]):
            return name
    return None


def _output_classes(task: Task, model: nn.Module, sample_x: np.ndarray) -> int:
    """C from the logits of a forward pass in eval mode; refuses anything but (B, C >= 2)."""
    model.eval()
    with user_code(task.name, "a forward pass of the model"), torch.no_grad():
        out = model(torch.tensor(np.asarray(sample_x, dtype=np.float32)))
    if not isinstance(out, Tensor) or out.ndim != 2 or len(out) != len(sample_x):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(
            f"task {task.name!r}: the model must map inputs (B, ...) to logits (B, C); on "
            f"{len(sample_x)} inputs of shape {tuple(sample_x.shape[1:])} it gave {shape}"
        )
    if out.shape[1] < 2 or not out.is_floating_point():
        raise ConfigError(f"task {task.name!r}: the model must output C >= 2 float logits")
    return int(out.shape[1])


# ---- the built-in tasks ----------------------------------------------------------------------


def builtin_task(dataset: str, architecture: str = "") -> Task:
    """`--dataset` (digits, mnist5k or an .npz path) and `--architecture` (mlp, cnn; empty: the
    dataset's default) as a task of this API."""
    ds = load_dataset(dataset)
    arch = architecture or default_architecture(ds.name)
    if arch not in BUILTIN_ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {arch!r}; expected one of {sorted(BUILTIN_ARCHITECTURES)}"
        )
    builder = ARCHITECTURES[arch]
    return Task(
        name=_builtin_name(ds.name),
        model=lambda: builder(ds.input_shape, ds.num_classes),
        data=lambda _request: ds,
        architecture=arch,
    )


def _builtin_name(dataset_name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", dataset_name).lstrip("._-") or "data"
    return cleaned[:64]


def majority_rate(labels: np.ndarray) -> float:
    """The accuracy of always answering the most common label: the floor a model must beat."""
    labels = np.asarray(labels, dtype=np.int64)
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else 0.0


__all__ = [
    "DataRequest",
    "Dataset",
    "EvalResult",
    "Examples",
    "LoadedTask",
    "Task",
    "bind",
    "builtin_task",
    "for_client",
    "for_server",
    "majority_rate",
    "split",
]
