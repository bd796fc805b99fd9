"""A task that is not an image classifier: a 1-D convolutional network (with BatchNorm) on
MNIST-1D sequences.

    pip install -e '.[examples]'      # mnist1d; `make venv` installs it
    forsaken demo --task examples/sequence.py:task --clients 3 --rounds 5 --out seq-out

MNIST-1D (Greydanus, 2020) turns ten 1-D digit templates into sequences of 40 values by
padding, shear, translation and correlated noise. `make_dataset()` generates its standard
5,000 sequences (4,000 training, 1,000 test) here, from a fixed seed, in about a second; this
task never calls the package's downloading loader. The classes are balanced: always answering
the most common test label scores 0.106.

The BatchNorm layers show what a model with buffers does in a federation: their running mean
and variance are averaged with the weights through secure aggregation, and their batch
counters stay on each node.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from forsaken.common.datasets import Dataset
from forsaken.common.task import DataRequest, Task, split

SEQUENCE_LENGTH = 40


class SequenceNet(nn.Module):
    """(B, 1, 40) sequences -> (B, 10) logits: three convolutions, then two dense layers."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 32, kernel_size=5, padding=2),  # (B, 32, 40)
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Conv1d(32, 32, kernel_size=3, padding=1),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.MaxPool1d(2),  # (B, 32, 20)
            nn.Conv1d(32, 64, kernel_size=3, padding=1),
            nn.BatchNorm1d(64),
            nn.ReLU(),
            nn.MaxPool1d(2),  # (B, 64, 10)
        )
        self.classify = nn.Sequential(
            nn.Flatten(),  # (B, 640)
            nn.Linear(64 * SEQUENCE_LENGTH // 4, 64),
            nn.ReLU(),
            nn.Linear(64, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


def mnist1d(request: DataRequest) -> Dataset:
    """MNIST-1D's standard generated split, as (N, 1, 40) float32 sequences."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:
        raise RuntimeError(
            "examples/sequence.py needs the mnist1d package: pip install -e '.[examples]'"
        ) from exc
    # make_dataset seeds numpy's global generator; leave the daemon's own state as it was.
    state = np.random.get_state()
    try:
        generated = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    return split(
        "mnist1d",
        generated["x"][:, None, :],  # (4000, 40) -> (4000, 1, 40)
        generated["y"],
        generated["x_test"][:, None, :],
        generated["y_test"],
    )


task = Task(name="mnist1d-conv", model=SequenceNet, data=mnist1d)
