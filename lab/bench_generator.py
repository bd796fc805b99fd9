"""`forsaken bench generator`: what Forsaken's dummy-gradient generator costs on a model.

For each tensor of the model: the head the generator gives it (dense, or low-rank over a
matrix view) and its weights, beside what a dense head would need. Then the time of one
unlearning round's generator training per step, as a ratio to one plain SGD step of the same
model on a batch of the same size, both measured here in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

SEED = 0


def add_generator_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        default="",
        help="measure this task's model (module:attr or file.py:attr); default: a 20M-parameter "
        "CNN with a 4096x4096 layer and 3x3 convolutions of 590k weights",
    )
    p.add_argument("--data-dir", default="", help="handed to the task's data function")
    p.add_argument("--steps", type=int, default=5, help="generator steps timed per repeat")
    p.add_argument("--repeats", type=int, default=3, help="repeats; the median is reported")
    p.add_argument("--json", action="store_true", help="print JSON only")


class _Wide(nn.Module):
    """The default subject: tensors far beyond the generator's dense limit, of rank 2 and 4."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 256, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 256, 8, 8)
            nn.Conv2d(256, 256, 3, padding=1),  # 590k weights
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 256, 4, 4)
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(4096, 4096),  # 16.8M weights
            nn.ReLU(),
            nn.Linear(4096, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _subject(reference: str, data_dir: str) -> tuple[Any, np.ndarray, np.ndarray]:
    """(the bound task, inputs, labels) to measure on."""
    from pathlib import Path

    from forsaken.common.task import DataRequest, Task, bind, for_server, split
    from forsaken.common.task_loader import load_task

    if reference:
        request = DataRequest(data_dir=Path(data_dir) if data_dir else None)
        loaded, ds = for_server(load_task(reference), request)
        return loaded, np.asarray(ds.x_test[:200]), np.asarray(ds.y_test[:200])
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(200, 3, 16, 16)).astype(np.float32)
    y = rng.integers(0, 10, size=200)
    task = Task(name="bench-wide", model=_Wide, data=lambda _r: split("bench-wide", x, y))
    return bind(task, x[:2]), x, y


def _median_s(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_generator(reference: str, data_dir: str, steps: int, repeats: int) -> dict[str, Any]:
    from dataclasses import replace

    from forsaken.common.tensors import flatten
    from forsaken.common.training import TrainConfig, sgd_fit
    from forsaken.common.unlearning.engine import (
        ForgetData,
        ForsakenConfig,
        ForsakenEngine,
        RoundWeights,
    )
    from forsaken.common.unlearning.generator import head_parameters

    torch.set_num_threads(1)
    loaded, x, y = _subject(reference, data_dir)
    config = replace(ForsakenConfig(seed=SEED), steps_per_round=steps, min_rounds=1)
    engine = ForsakenEngine(loaded.spec, config)
    gen = config.generator
    params = dict(engine.model.named_parameters())
    tensors: list[dict[str, object]] = []
    dense_total = 0
    for name in engine.generator.names:
        shape = tuple(params[name].shape)
        kind, head_weights = head_parameters(shape, gen)
        dense = (gen.hidden + 1) * params[name].numel()
        dense_total += dense
        tensors.append(
            {
                "tensor": name,
                "shape": list(shape),
                "head": kind,
                "head_weights": head_weights,
                "dense_head_weights": dense,
            }
        )
    model_params = sum(p.numel() for p in params.values())
    gen_params = sum(p.numel() for p in engine.generator.parameters())
    vector = flatten(loaded.build_model(SEED).state_dict())
    n = len(x) // 2
    # One unlearning round: the oracle's forward passes plus `steps` generator steps.
    fresh = lambda: ForsakenEngine(loaded.spec, config)  # noqa: E731 - a new G each repeat
    data = ForgetData(x[:n], y[:n], x[:0], y[:0], x[n:], y[n:])
    weights = RoundWeights(n, 5 * n)  # one of five equal clients
    round_s = _median_s(lambda: fresh().step(vector, data, 1, weights), repeats)
    # Baseline: the same number of plain SGD steps on a batch the size of a generator step's.
    batch = config.forget_batch + 2 * config.keep_batch + config.transplant_batch
    model = loaded.build_model(SEED)
    cfg = TrainConfig(local_epochs=1, batch_size=batch)
    reps = np.resize(np.arange(len(x)), batch * steps)
    sgd_s = _median_s(lambda: sgd_fit(model, x[reps], y[reps], cfg, SEED), repeats)
    return {
        "model": loaded.spec.architecture,
        "model_parameters": model_params,
        "generator_parameters": gen_params,
        "generator_to_model": round(gen_params / model_params, 4),
        "dense_heads_would_need": dense_total,
        "low_rank_saving": round(dense_total / max(1, gen_params), 1),
        "generator_round_s": round(round_s, 3),
        "sgd_steps_s": round(sgd_s, 3),
        "round_to_sgd_steps": round(round_s / sgd_s, 2),
        "steps": steps,
        "sgd_batch": batch,
        "tensors": tensors,
        "note": "round: a fresh generator's first unlearning round (oracle passes + steps); "
        "baseline: the same number of SGD steps of the model at the generator's batch size",
    }


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"generator heads for {result['model']}")
    for col in ("tensor", "shape", "head", "weights", "dense would need"):
        table.add_column(col, justify="right")
    for t in result["tensors"]:
        table.add_row(
            t["tensor"],
            "x".join(map(str, t["shape"])),
            t["head"],
            f"{t['head_weights']:,}",
            f"{t['dense_head_weights']:,}",
        )
    Console().print(table)
