"""A CNN of 1.03M parameters on the full Fashion-MNIST (60,000 training, 10,000 test images).

    apt-get install dataset-fashion-mnist    # Debian's package: the original IDX files
    forsaken demo --task examples/fashion_cnn.py:task --clients 3 --rounds 1 --local-epochs 1 \\
        --round-timeout 600 --out fashion-out

That run (tests/test_fashion_example.py) scored 0.571 after its one training round and 0.872
after client 0's ForgetMe (two unlearning rounds and one recovery round among the other two
clients), with the receipt's loss-threshold MIA AUC at 0.497 on client 0's 18,000 images.

The images are read from `--data-dir` (both daemons, and `forsaken demo`, pass it on), by
default where Debian's package puts them, /usr/share/datasets/fashion-mnist; any folder with
the four files of the original distribution (gzipped or not) works. The ten classes are
balanced: always answering the most common test label scores 0.100.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
from torch import Tensor, nn

from forsaken.common.datasets import Dataset
from forsaken.common.task import DataRequest, Task, split

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


class FashionCNN(nn.Module):
    """(B, 1, 28, 28) images -> (B, 10) logits: two convolutions and a 1M-weight dense layer."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),  # (B, 32, 28, 28)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 64, 7, 7)
        )
        self.classify = nn.Sequential(
            nn.Flatten(),  # (B, 3136)
            nn.Linear(64 * 7 * 7, 320),  # 1,003,840 weights and biases
            nn.ReLU(),
            nn.Linear(320, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file of unsigned bytes (the MNIST format), gzipped or not, as an array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} holds {data.size} values, its header promises {shape}")
    return data.reshape(shape)


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"{folder} has no {stem}[.gz]; install Debian's dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist) or pass --data-dir to a folder that has it"
    )


def fashion_mnist(request: DataRequest) -> Dataset:
    """The original split, as (N, 1, 28, 28) float32 images in [0, 1]."""
    folder = request.data_dir or DEBIAN_DIR
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in FILES.items()}
    images = {k: (arrays[k].astype(np.float32) / 255.0)[:, None] for k in ("x_train", "x_test")}
    return split(
        "fashion-mnist", images["x_train"], arrays["y_train"], images["x_test"], arrays["y_test"]
    )


task = Task(name="fashion-cnn", model=FashionCNN, data=fashion_mnist)
