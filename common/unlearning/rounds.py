"""Federated rounds in one process, for the unlearning evaluation: the daemons' code paths
(`train_local`, `weighted_average`, `apply_update`, `client_round_seed`) without processes.

A round before ForgetMe trains every client on its data. After ForgetMe the forgetting client
either runs its forget engine in place of training (an unlearning round, while the others train
as usual, exactly as the daemons do it) or trains on what it keeps, if it keeps anything (a
recovery or ordinary round). Secure aggregation's quantization (about 1e-6 relative) is
ignored: the plaintext mean is what it reproduces.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from forsaken.common.fedavg import apply_update, weighted_average
from forsaken.common.models import build_model
from forsaken.common.simulation import client_round_seed
from forsaken.common.tensors import flatten
from forsaken.common.testbeds import TestBed
from forsaken.common.training import TrainConfig, load_vector, train_local
from forsaken.common.types import ModelSpec
from forsaken.common.unlearning.engine import ForgetData, ForgetEngine, RoundWeights


@dataclass
class Cost:
    """Work after ForgetMe, as the cost bar counts it (see docs/unlearning.md)."""

    evals: int = 0  # every client's per-sample gradient evaluations
    concurrent: int = 0  # of which the others' training during unlearning rounds
    forgetter: int = 0  # of which the forgetting client's engine
    uploads: int = 0
    seconds: float = 0.0  # client compute time, summed
    rounds: int = 0

    def plus(self, other: Cost) -> Cost:
        return Cost(
            self.evals + other.evals,
            self.concurrent + other.concurrent,
            self.forgetter + other.forgetter,
            self.uploads + other.uploads,
            self.seconds + other.seconds,
            self.rounds + other.rounds,
        )


@dataclass
class InProcessFederation:
    """One federation's data and model skeleton. `bed.seed` seeds the initial model and every
    client's batch order, as `--seed` does for the daemons."""

    bed: TestBed
    train: TrainConfig
    spec: ModelSpec
    total_weight: int  # Σ samples as the round's participants declare them during unlearning
    model: torch.nn.Module
    last_forgetter_update: np.ndarray | None = None  # its own last delta, kept client-side
    # Σ_t w_t Δ_t over the rounds the forgetting client trained in: its own record of what it
    # contributed (each round's mean carries w_t Δ_t / W_t of it), kept client-side.
    forgetter_contribution: np.ndarray | None = None

    @classmethod
    def of(cls, bed: TestBed, architecture: str, local_epochs: int) -> InProcessFederation:
        ds = bed.dataset
        spec = ModelSpec(architecture, ds.input_shape, ds.num_classes, ds.name)
        return cls(
            bed=bed,
            train=TrainConfig(local_epochs=local_epochs),
            spec=spec,
            total_weight=sum(len(c.y_train) for c in bed.clients),
            model=build_model(architecture, ds.input_shape, ds.num_classes, bed.seed),
        )

    def with_bed(self, bed: TestBed) -> InProcessFederation:
        """The same federation recipe on other data (a shadow model's)."""
        return replace(
            self,
            bed=bed,
            total_weight=sum(len(c.y_train) for c in bed.clients),
            last_forgetter_update=None,
            forgetter_contribution=None,
        )

    @property
    def forget_client(self) -> int:
        return self.bed.forget_client

    def initial(self) -> np.ndarray:
        ds = self.bed.dataset
        init = build_model(self.spec.architecture, ds.input_shape, ds.num_classes, self.bed.seed)
        return flatten(init.state_dict())

    def upload_bytes(self) -> int:
        return (sum(p.numel() for p in self.model.parameters()) + 1) * 4

    # ---- rounds ---------------------------------------------------------------------------

    def round(
        self,
        vec: np.ndarray,
        r: int,
        cost: Cost,
        engine: ForgetEngine | None = None,
        before_forget: bool = False,
    ) -> tuple[np.ndarray, dict[str, float] | None, bool]:
        """One FedAvg round from `vec`; returns the new model, the engine's metrics, its done.

        `before_forget`: every client trains on all its data (the rounds that make O). Else the
        forgetting client runs `engine` (an unlearning round) or trains on what it keeps."""
        bed, f = self.bed, self.forget_client
        updates: list[tuple[np.ndarray, int]] = []
        info, done = None, True
        if engine is not None:
            started = time.perf_counter()
            data = ForgetData(
                forget_x=bed.forget_x,
                forget_y=bed.forget_y,
                retained_x=bed.retained_x,
                retained_y=bed.retained_y,
                held_out_x=bed.forgetter.x_held_out,
                held_out_y=bed.forgetter.y_held_out,
            )
            # As the server announces it: the forgetter keeps the weight it trained with.
            weight = len(bed.forget_y) + len(bed.retained_y)
            step = engine.step(vec, data, r, RoundWeights(weight, self.total_weight))
            cost.seconds += time.perf_counter() - started
            cost.evals += step.gradient_evaluations
            cost.forgetter += step.gradient_evaluations
            info, done = step.metrics, step.done
            if step.num_samples > 0:
                updates.append((step.update, step.num_samples))
                cost.uploads += 1
            else:
                engine = None  # it sat the round out: for the others a recovery round
        for i, client in enumerate(bed.clients):
            if i == f and not before_forget:
                if info is not None or len(bed.retained_y) == 0:
                    continue
                x, y = bed.retained_x, bed.retained_y
            else:
                x, y = client.x_train, client.y_train
            load_vector(self.model, vec)
            started = time.perf_counter()
            res = train_local(self.model, x, y, self.train, client_round_seed(bed.seed, i, r))
            cost.seconds += time.perf_counter() - started
            cost.evals += res.gradient_evaluations
            cost.concurrent += res.gradient_evaluations if engine is not None else 0
            cost.uploads += 1
            updates.append((res.delta, res.num_samples))
            if i == f:
                self.last_forgetter_update = res.delta
                weighted = res.delta.astype(np.float64) * res.num_samples
                if self.forgetter_contribution is None:
                    self.forgetter_contribution = weighted
                else:
                    self.forgetter_contribution = self.forgetter_contribution + weighted
        cost.rounds += 1
        return apply_update(vec, weighted_average(updates)), info, done

    def train_rounds(self, rounds: int) -> np.ndarray:
        """O: `rounds` rounds from the initial model with every client on all its data."""
        vec = self.initial()
        for r in range(1, rounds + 1):
            vec, _, _ = self.round(vec, r, Cost(), before_forget=True)
        return vec

    def unlearn(
        self,
        start: np.ndarray,
        first_round: int,
        engine: ForgetEngine,
        max_rounds: int,
        recovery: int,
    ) -> Unlearning:
        """Unlearning rounds until the engine says done (or `max_rounds`), then recovery."""
        cost, log = Cost(), []
        vec, r = start, first_round - 1
        for _ in range(max_rounds):
            r += 1
            vec, info, done = self.round(vec, r, cost, engine=engine)
            log.append(info or {})
            if done:
                break
        before_recovery, cost_before = vec, replace(cost)
        vec, extra = self.normal(vec, r + 1, recovery)
        return Unlearning(vec, cost.plus(extra), log, before_recovery, cost_before)

    def normal(self, start: np.ndarray, first_round: int, rounds: int) -> tuple[np.ndarray, Cost]:
        """Ordinary rounds after ForgetMe (the forgetting client trains on what it keeps)."""
        cost, vec = Cost(), start
        for r in range(first_round, first_round + rounds):
            vec, _, _ = self.round(vec, r, cost)
        return vec, cost


@dataclass
class Unlearning:
    vector: np.ndarray  # after the recovery rounds
    cost: Cost
    log: list[dict[str, float]]  # the engine's metrics per unlearning round
    before_recovery: np.ndarray
    cost_before_recovery: Cost
