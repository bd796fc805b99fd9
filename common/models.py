"""The model zoo: the built-in classifiers, and a registry that tasks add their models to.

`build_model(architecture, ...)` is the one way any component (the daemons, the forget engines,
the in-process references) builds a model, so a model registered by a task (see
`forsaken.common.task`) is built exactly as a built-in one is. The built-ins have no buffers:
their whole state is their parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from forsaken.common.errors import ConfigError

MLP_HIDDEN = (128, 64)
CNN_CHANNELS = (16, 32)
CNN_HIDDEN = 64

# (input_shape, num_classes) -> a freshly initialised model; called under a seeded torch RNG.
Builder = Callable[[tuple[int, ...], int], nn.Module]


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ConfigError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")
    c, h, w = input_shape
    return c, h, w


def _mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c, h, w = _image_shape(input_shape)
    layers: list[nn.Module] = [nn.Flatten()]  # (B, C, H, W) -> (B, C*H*W)
    width = c * h * w
    for hidden in MLP_HIDDEN:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c, h, w = _image_shape(input_shape)
    if h < 4 or w < 4:
        raise ConfigError(f"the cnn needs images of at least 4x4, got {h}x{w}")
    c1, c2 = CNN_CHANNELS
    return nn.Sequential(
        nn.Conv2d(c, c1, kernel_size=3, padding=1),  # (B, c1, H, W)
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, c1, H/2, W/2)
        nn.Conv2d(c1, c2, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # (B, c2, H/4, W/4)
        nn.Flatten(),  # (B, c2 * H/4 * W/4)
        nn.Linear(c2 * (h // 4) * (w // 4), CNN_HIDDEN),
        nn.ReLU(),
        nn.Linear(CNN_HIDDEN, num_classes),
    )


ARCHITECTURES: dict[str, Builder] = {"mlp": _mlp, "cnn": _cnn}
BUILTIN_ARCHITECTURES = frozenset(ARCHITECTURES)


def register_architecture(name: str, builder: Builder) -> None:
    """Make `build_model(name, ...)` call `builder`; a task registers its model this way.

    Registering a name again replaces its builder (a process that loads the same task twice);
    the built-in names are reserved.
    """
    if name in BUILTIN_ARCHITECTURES:
        raise ConfigError(f"architecture name {name!r} is reserved for a built-in model")
    ARCHITECTURES[name] = builder


# Chosen by the experiments recorded with the training defaults; unknown (user) data gets the
# MLP, which works for any input shape.
DEFAULT_ARCHITECTURES: dict[str, str] = {"digits": "mlp", "mnist5k": "mlp", "fashion": "cnn"}
FALLBACK_ARCHITECTURE = "mlp"


def default_architecture(dataset_name: str) -> str:
    """The architecture to use for a dataset when the operator does not choose one."""
    return DEFAULT_ARCHITECTURES.get(dataset_name, FALLBACK_ARCHITECTURE)


def build_model(
    architecture: str, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> nn.Module:
    """Build a freshly initialised model; the same arguments give bit-identical parameters.

    Initialisation draws from torch's global generator (PyTorch's default layer init), so it
    runs inside `fork_rng` with a fixed seed: reproducible, and the caller's RNG is untouched.
    """
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {architecture!r}; expected one of {sorted(ARCHITECTURES)}"
        )
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least 2 classes, got {num_classes}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHITECTURES[architecture](tuple(input_shape), num_classes)
    return model
