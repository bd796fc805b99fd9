"""The client's unlearning executor: forget engines per request, their durable state, this
node's record of what it contributed, and the evidence measured on the final model.

The engine returns the same kind of result as local training (a flat update and a weight), so
the daemon masks and uploads it through the ordinary path; the server cannot tell them apart.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import torch

from forsaken.common.errors import CorruptState
from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.fsutil import atomic_write
from forsaken.common.lira import logit_confidence
from forsaken.common.metrics import (
    accuracy,
    auc_resolution,
    mia_auc,
    model_outputs,
    oracle_member_rate,
    per_sample_losses,
    softmax,
)
from forsaken.common.partition import ClientData
from forsaken.common.tensors import flatten
from forsaken.common.training import load_vector
from forsaken.common.types import ModelSpec
from forsaken.common.unlearning import make_engine
from forsaken.common.unlearning.engine import (
    ForgetData,
    ForgetEngine,
    ForgetStep,
    ForsakenConfig,
    RoundWeights,
)

log = logging.getLogger(__name__)


def split_forget(data: ClientData, sample_ids: tuple[int, ...]) -> ForgetData:
    """The samples to forget (all training samples when `sample_ids` is empty) and the rest."""
    if sample_ids:
        mask = np.isin(data.ids_train, np.asarray(sample_ids, dtype=np.int64))
    else:
        mask = np.ones(len(data.ids_train), dtype=bool)
    return ForgetData(
        forget_x=data.x_train[mask],
        forget_y=data.y_train[mask],
        retained_x=data.x_train[~mask],
        retained_y=data.y_train[~mask],
        held_out_x=data.x_held_out,
        held_out_y=data.y_held_out,
    )


CONTRIBUTION_FILE = "contribution.npz"


class ContributionRecord:
    """Σ_t w_t Δ_t over the training updates this node had accepted, on disk.

    Each round's mean carried w_t Δ_t / W_t of this node's update, so the record (over the
    round total W at ForgetMe) is the node's own share of the global model to first order:
    what Forsaken reverses in its first unlearning round. The node keeps it about itself; the
    server keeps no per-client history. One model-sized float64 vector plus the last round
    counted, rewritten atomically after each accepted update; a round counted twice (a retry
    after a restart) is skipped by its number."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def load(self) -> tuple[np.ndarray | None, int]:
        """(the sum, the last round counted); (None, 0) before any."""
        if not self.path.exists():
            return None, 0
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                total = np.asarray(saved["sum"], np.float64)
                return (total if total.size else None), int(saved["last_round"])
        except (OSError, ValueError, KeyError) as exc:
            raise CorruptState(f"{self.path} is not a valid contribution record: {exc}") from None

    def add(self, round_number: int, update: np.ndarray, weight: int) -> None:
        total, last = self.load()
        if round_number <= last or weight <= 0:
            return
        weighted = np.asarray(update, np.float64) * weight
        if total is not None and total.shape != weighted.shape:
            raise CorruptState(
                f"{self.path} holds {total.size} entries, the update {weighted.size}"
            )
        self._write(weighted if total is None else total + weighted, round_number)

    def reset(self) -> None:
        """After a reversal: what was recorded has been taken back out of the model."""
        _, last = self.load()
        if self.path.exists():
            self.path.unlink()
        if last:
            # Keep the round counter so a late duplicate of an old round is still skipped.
            self._write(None, last)

    def _write(self, total: np.ndarray | None, last_round: int) -> None:
        buffer = io.BytesIO()
        arrays: dict[str, np.ndarray] = {"last_round": np.array(last_round, dtype=np.int64)}
        arrays["sum"] = np.zeros(0) if total is None else total
        np.savez(buffer, allow_pickle=False, **arrays)
        atomic_write(self.path, buffer.getvalue(), mode=0o600)


_STEP_PREFIX = "step."


def _step_to_state(round_number: int, step: ForgetStep) -> dict[str, np.ndarray]:
    """The last step as plain arrays beside the engine's state (no pickle)."""
    names = sorted(step.metrics)
    return {
        "step.round": np.array(round_number, dtype=np.int64),
        "step.update": np.asarray(step.update, dtype=np.float32),
        "step.num_samples": np.array(step.num_samples, dtype=np.int64),
        "step.done": np.array(step.done),
        "step.gradient_evaluations": np.array(step.gradient_evaluations, dtype=np.int64),
        "step.metric_names": np.array(names, dtype=np.str_),
        "step.metric_values": np.array([step.metrics[n] for n in names], dtype=np.float64),
    }


def _step_from_state(state: dict[str, np.ndarray]) -> tuple[int, ForgetStep] | None:
    if "step.round" not in state:
        return None  # written before any step finished
    names = [str(n) for n in state["step.metric_names"].reshape(-1)]
    values = state["step.metric_values"].reshape(-1)
    if len(names) != len(values):
        raise ValueError("the saved step's metric names and values differ in length")
    step = ForgetStep(
        update=np.asarray(state["step.update"], dtype=np.float32),
        num_samples=int(state["step.num_samples"]),
        done=bool(state["step.done"]),
        metrics={n: float(v) for n, v in zip(names, values, strict=True)},
        gradient_evaluations=int(state["step.gradient_evaluations"]),
    )
    return int(state["step.round"]), step


class ForgetExecutor:
    def __init__(self, state_dir: Path, data: ClientData, seed: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.data = data
        self.seed = seed
        self._engines: dict[str, ForgetEngine] = {}
        self._steps: dict[str, tuple[int, ForgetStep]] = {}  # the last step per request
        self.contributions = ContributionRecord(self.state_dir / CONTRIBUTION_FILE)

    def record_contribution(self, round_number: int, update: np.ndarray, weight: int) -> None:
        """A training update of this node that the server accepted in `round_number`."""
        self.contributions.add(round_number, update, weight)

    def _state_path(self, forget_id: str) -> Path:
        return self.state_dir / f"forget-{forget_id}.npz"

    def _engine(self, forget_id: str, method: str, spec: ModelSpec) -> ForgetEngine:
        engine = self._engines.get(forget_id)
        if engine is not None:
            return engine
        # The node's seed drives the generator's init, batches and noise, as in the reference
        # runner, so the same seeds give the same unlearning.
        options: dict[str, object] = {}
        if method == ForgetMethod.FORSAKEN:
            recorded, _ = self.contributions.load()
            options = {"config": ForsakenConfig(seed=self.seed), "contribution": recorded}
        engine = make_engine(method, spec, **options)
        if engine is None:
            raise ValueError(f"method {method!r} has no client-side engine")
        path = self._state_path(forget_id)
        if path.exists():
            # Resume after a restart: plain arrays, never pickled.
            try:
                with np.load(path, allow_pickle=False) as saved:
                    state = {k: saved[k] for k in saved.files}
                engine.load_state_dict(
                    {k: v for k, v in state.items() if not k.startswith(_STEP_PREFIX)}
                )
                last = _step_from_state(state)
            except (OSError, ValueError, KeyError) as exc:
                raise CorruptState(f"{path} is not a valid engine state: {exc}") from None
            if last is not None:
                self._steps[forget_id] = last
        self._engines[forget_id] = engine
        return engine

    def step(
        self,
        forget_id: str,
        method: str,
        spec: ModelSpec,
        sample_ids: tuple[int, ...],
        global_vector: np.ndarray,
        round_number: int,
        weights: RoundWeights,
    ) -> ForgetStep:
        """One unlearning round: the engine's update, with its state saved before it is sent.

        A round that is asked for again (its first attempt aborted) gets the same step, also
        after a restart: the engine moves on only once per round, so Forsaken's reversal of
        the record happens in exactly one round whatever fails around it."""
        engine = self._engine(forget_id, method, spec)
        last = self._steps.get(forget_id)
        if last is not None and last[0] == round_number:
            return last[1]
        parts = split_forget(self.data, sample_ids)
        before = self._before_path(forget_id)
        if not before.exists():
            # The model when unlearning began: the receipt's paired test compares against it.
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(global_vector, dtype=np.float32))
            atomic_write(before, buffer.getvalue(), mode=0o600)
        step = engine.step(global_vector, parts, round_number, weights)
        # The engine's state and the step it produced in one atomic file, so a restart finds
        # both or neither.
        buffer = io.BytesIO()
        np.savez(
            buffer, allow_pickle=False, **engine.state_dict(), **_step_to_state(round_number, step)
        )
        atomic_write(self._state_path(forget_id), buffer.getvalue(), mode=0o600)
        self._steps[forget_id] = (round_number, step)
        return step

    def _before_path(self, forget_id: str) -> Path:
        return self.state_dir / f"forget-{forget_id}-before.npy"

    def evidence(
        self, model: torch.nn.Module, sample_ids: tuple[int, ...], forget_id: str = ""
    ) -> dict[str, float]:
        """What the receipt records about the final model, and how much it can show.

        Population tests against this node's held-out slice (which no model trained on): a
        loss threshold (`mia_auc`) and a label-free confidence threshold (`conf_auc`), each
        with `auc_resolution`, the smallest distance from 0.5 that these sample sizes can tell
        from chance (95%, two-sided). Where the node computed the unlearning itself, also a
        paired per-sample test between the model at the request and the final one:
        `excess_confidence_drop` is how much more the forgotten samples' logit confidence fell
        than the held-out samples' did (a memorised sample loses what only it gave it; an
        unseen one only the general drift), with its 95% half-width. None of these compares the
        model with one retrained without the data; per-example memorisation below the
        resolution is invisible here (see docs/unlearning.md for the shadow-model evaluation
        that measures it)."""
        parts = split_forget(self.data, sample_ids)
        forget_logits = model_outputs(model, parts.forget_x)
        held_logits = model_outputs(model, self.data.x_held_out)
        forget_losses = per_sample_losses(forget_logits, parts.forget_y)
        held_losses = per_sample_losses(held_logits, self.data.y_held_out)
        n_f, n_h = len(parts.forget_y), len(self.data.y_held_out)
        out = {
            "mia_auc": mia_auc(forget_losses, held_losses),
            "conf_auc": mia_auc(
                -softmax(forget_logits).max(axis=1), -softmax(held_logits).max(axis=1)
            ),
            "auc_resolution": auc_resolution(n_f, n_h),
            "forget_acc": accuracy(forget_logits, parts.forget_y),
            "held_out_acc": accuracy(held_logits, self.data.y_held_out),
            "forget_mean_loss": float(forget_losses.mean()),
            "held_out_mean_loss": float(held_losses.mean()),
            "oracle_member_rate": oracle_member_rate(forget_losses, held_losses),
            "forget_samples": float(n_f),
            "held_out_samples": float(n_h),
        }
        before = self._before_path(forget_id) if forget_id else None
        if before is not None and before.exists():
            start = np.load(before, allow_pickle=False)
            now = flatten(model.state_dict())
            if start.shape == now.shape:
                load_vector(model, start)
                phi_f0 = logit_confidence(model_outputs(model, parts.forget_x), parts.forget_y)
                phi_h0 = logit_confidence(
                    model_outputs(model, self.data.x_held_out), self.data.y_held_out
                )
                load_vector(model, now)
                drop_f = phi_f0 - logit_confidence(forget_logits, parts.forget_y)
                drop_h = phi_h0 - logit_confidence(held_logits, self.data.y_held_out)
                out["excess_confidence_drop"] = float(drop_f.mean() - drop_h.mean())
                if n_f > 1 and n_h > 1:  # a spread needs two samples on each side
                    var = drop_f.var(ddof=1) / n_f + drop_h.var(ddof=1) / n_h
                    out["excess_confidence_drop_ci95"] = 1.96 * float(np.sqrt(var))
        return out

    def discard(self, forget_id: str, reversed_contribution: bool = False) -> None:
        """Forget a completed request's engine; after a Forsaken reversal also the record,
        whose content has been taken back out of the model."""
        self._engines.pop(forget_id, None)
        self._steps.pop(forget_id, None)
        self._state_path(forget_id).unlink(missing_ok=True)
        self._before_path(forget_id).unlink(missing_ok=True)
        if reversed_contribution:
            self.contributions.reset()
