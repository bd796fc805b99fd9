"""The Forsaken dummy-gradient generator (Liu et al., "Learn to Forget", §4).

Each client owns a generator G: it reads a summary of how the current global model behaves on the
client's forget set and writes a dummy gradient g for the model's parameters. The client trains G
for a few steps every unlearning round (its parameters and optimizer persist across rounds, so G
learns how this model family reacts to its gradients), then uploads g through the ordinary
update channel.

Shape choices (see docs/unlearning.md for the experiments): a small tanh trunk over the summary,
then one zero-initialised head per generated parameter tensor. A tensor with at most
`dense_limit` entries gets a dense head (hidden x entries weights). Any larger tensor gets a
rank-`rank` factorisation A Bᵀ of a matrix view of it (the heads emit A and B), which keeps G's
size linear in the view's side lengths: a weight of any rank is viewed as (out, fan-in), its
natural matrix, unless that view is so lopsided (or the tensor is 1-D) that a near-square view
of its flattened entries is cheaper by more than half. A dense head for a 4096 x 4096 layer
would be 1.1e9 weights; the low-rank one is 4.2e6 (`forsaken bench generator` measures this).
Zero heads mean g = 0 before any training: an untrained generator is harmless.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from forsaken.common.errors import ConfigError


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """G's shape. `targets` names the model parameters to generate for; empty means all."""

    hidden: int = 64
    noise_dim: int = 4  # a little seeded noise in the input, as in the paper's generator
    dense_limit: int = 200_000  # larger 2-D tensors get a low-rank head
    rank: int = 8
    targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.rank < 1 or self.noise_dim < 0 or self.dense_limit < 1:
            raise ConfigError(f"invalid generator config {self}")


class _DenseHead(nn.Module):
    def __init__(self, hidden: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape
        self.out = nn.Linear(hidden, math.prod(shape))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(h).reshape(self.shape)  # (hidden,) -> shape


class _LowRankHead(nn.Module):
    """g = A Bᵀ with A (rows, r) and B (cols, r) both emitted by the head, reshaped to the
    tensor (see `matrix_view` for rows x cols).

    Only B starts at zero: with both at zero the product's gradient vanishes for both factors
    and the head could never leave zero. A starts small and random (seeded by the caller).
    """

    def __init__(self, hidden: int, shape: tuple[int, ...], rank: int) -> None:
        super().__init__()
        self.shape, self.numel = shape, math.prod(shape)
        self.rows, self.cols = matrix_view(shape)
        self.rank = rank
        self.a = nn.Linear(hidden, self.rows * rank)
        self.b = nn.Linear(hidden, self.cols * rank)
        nn.init.zeros_(self.b.weight)
        nn.init.zeros_(self.b.bias)

    def forward(self, h: Tensor) -> Tensor:
        a = self.a(h).reshape(self.rows, self.rank)  # (rows, r)
        b = self.b(h).reshape(self.cols, self.rank)  # (cols, r)
        g = a @ b.T / math.sqrt(self.rank)  # (rows, cols)
        if self.rows * self.cols != self.numel:  # a padded near-square view
            g = g.reshape(-1)[: self.numel]
        return g.reshape(self.shape)


def matrix_view(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, cols) of the matrix a low-rank head factorises for a tensor of `shape`.

    The natural (out, fan-in) view for tensors of rank >= 2, unless its side lengths add up to
    more than twice those of a near-square view of the flattened entries (then that view,
    padded to rows x cols >= numel and cut back after the product)."""
    numel = math.prod(shape)
    rows = math.isqrt(numel - 1) + 1 if numel > 1 else 1  # ceil(sqrt(numel))
    square = (rows, -(-numel // rows))
    if len(shape) >= 2:
        natural = (shape[0], numel // shape[0])
        if sum(natural) <= 2 * sum(square):
            return natural
    return square


def head_parameters(shape: tuple[int, ...], config: GeneratorConfig) -> tuple[str, int]:
    """The kind of head G gives a tensor of `shape`, and its number of weights."""
    numel = math.prod(shape)
    if numel <= config.dense_limit:
        return "dense", (config.hidden + 1) * numel
    rows, cols = matrix_view(shape)
    return "low-rank", (config.hidden + 1) * config.rank * (rows + cols)


class DummyGradientGenerator(nn.Module):
    """G: summary (summary_dim,) -> {parameter name: dummy gradient of that parameter's shape}.

    `scales` multiplies each head's output (typically the RMS of that parameter tensor at
    start), so a generator output of order one means a step of the size of the weights
    themselves, whatever the layer.
    """

    scales: Tensor  # a buffer (register_buffer); declared so that it reads as a Tensor

    def __init__(
        self,
        summary_dim: int,
        param_shapes: Sequence[tuple[str, tuple[int, ...]]],
        config: GeneratorConfig,
        scales: Sequence[float],
        seed: int,
    ) -> None:
        super().__init__()
        if len(scales) != len(param_shapes) or not param_shapes:
            raise ConfigError("need one scale per generated tensor, and at least one tensor")
        self.config = config
        self.names = tuple(name for name, _ in param_shapes)
        with torch.random.fork_rng(devices=[]):  # reproducible init, caller's RNG untouched
            torch.manual_seed(seed)
            self.trunk = nn.Sequential(
                nn.Linear(summary_dim + config.noise_dim, config.hidden),
                nn.Tanh(),
                nn.Linear(config.hidden, config.hidden),
                nn.Tanh(),
            )
            self.heads = nn.ModuleList(self._head(shape) for _, shape in param_shapes)
        self.register_buffer("scales", torch.tensor(list(scales), dtype=torch.float32))

    def _head(self, shape: tuple[int, ...]) -> nn.Module:
        if head_parameters(shape, self.config)[0] == "low-rank":
            return _LowRankHead(self.config.hidden, shape, self.config.rank)
        return _DenseHead(self.config.hidden, shape)

    def forward(self, summary: Tensor, noise: Tensor) -> dict[str, Tensor]:
        h = self.trunk(torch.cat([summary, noise]))  # (hidden,)
        scales = self.scales
        return {
            name: head(h) * scales[i]
            for i, (name, head) in enumerate(zip(self.names, self.heads, strict=True))
        }
