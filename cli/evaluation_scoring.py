"""Scoring for `forsaken evaluate`: the protocol's metrics of a model (Scores, Scorer, checked
against reference.py) and the distributed U's cost after ForgetMe (see COST_BASIS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from forsaken.common.datasets import Dataset
    from forsaken.common.partition import ClientData
    from forsaken.common.unlearning.reference import ModelReport, ProtocolConfig
    from forsaken.evaluation_run import ForgetRun

COST_BASIS = """\
Cost (evaluation.json `cost`) is the work after ForgetMe, per seed, averaged over seeds:
  client_grad_evals: per-sample gradient evaluations as reference.py's grad_evals_unlearning
    counts them: the forgetting client's engine (recorded per step inside its daemon) plus every
    client's training in rounds in which the forgetting client uploaded no step (recovery); the
    others' training during unlearning rounds is left out. evaluation_detail.json also has the
    strict count (everything after ForgetMe). R: the retrain's training; pga: reference.py's.
  bytes_up: uploads x (parameters + 1) x 4 bytes, the masked uint32 vector a client sends per
    secure round; key advertisements, shares and unmasking messages are not counted (the
    server's byte counter sees plaintext uploads only). U's uploads are the ledger's
    participants of every round from T + 1 to U's round; R and pga: reference.py's count.
  wall_s: U: from the start of round T + 1 to the receipt (server clock). R: the T training
    rounds of this federation, which a retrain repeats (ledger durations). pga: client compute
    seconds in the in-process runner (there is no distributed pga run; a lower bound on its
    wall time).
"""

BYTES_PER_ENTRY = 4  # a masked secure-aggregation input is a uint32 vector


# ---- scores -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scores:
    """The protocol's metrics of one model (evaluation.json's field names)."""

    test_acc: float
    asr: float
    mia_auc: float
    mia_tpr_at_1fpr: float
    kl_forget: float  # KL(R ‖ model) over the forget set's and the triggered test inputs
    fr: float  # forgetting rate vs O under the median-test-loss oracle

    @classmethod
    def of_report(cls, report: ModelReport) -> Scores:
        return cls(
            test_acc=report.accuracy,
            asr=report.asr,
            mia_auc=report.mia_auc,
            mia_tpr_at_1fpr=report.mia_tpr_1fpr,
            kl_forget=report.kl_forget,
            fr=report.forgetting_rate,
        )


METRICS = tuple(Scores.__dataclass_fields__)


class Scorer:
    """Scores models on reference.py's probes for one seed, against R's outputs and O's members.

    The probes are built as reference.py builds them: client 0's `client_split` part poisoned by
    `poison_client` with the protocol's target, fraction and seed; the triggered set is every
    non-target test image stamped with the same trigger.
    """

    def __init__(self, cfg: ProtocolConfig, seed: int) -> None:
        from forsaken.common.backdoor import dataset_trigger, poison_client, triggered_test_set
        from forsaken.common.datasets import load_dataset
        from forsaken.common.models import build_model, default_architecture
        from forsaken.common.partition import client_split

        self.cfg = cfg
        self.seed = seed
        self.ds: Dataset = load_dataset(cfg.dataset)
        own = client_split(self.ds, cfg.forget_client, cfg.clients, seed=seed)
        planted = poison_client(
            own, cfg.target, cfg.poison_fraction, seed, dataset_trigger(self.ds)
        )
        self.forget: ClientData = planted.data
        self.trig_x, _ = triggered_test_set(self.ds, cfg.target, planted.trigger)
        self.model: torch.nn.Module = build_model(
            default_architecture(self.ds.name), self.ds.input_shape, self.ds.num_classes, seed
        )
        self._r_side: np.ndarray | None = None
        self._members_o: np.ndarray | None = None

    def retrain(self) -> np.ndarray:
        """R's vector: `run_fedavg` without client 0's data, exactly as reference.run_seed."""
        import torch

        from forsaken.common.simulation import run_fedavg
        from forsaken.common.training import TrainConfig

        torch.set_num_threads(1)  # as reference.run_seed: the same seed gives the same bits
        result = run_fedavg(
            self.ds,
            self.cfg.clients,
            self.cfg.rounds,
            seed=self.seed,
            train_cfg=TrainConfig(local_epochs=self.cfg.local_epochs),
            forget_ids=self.forget.ids_train.tolist(),
        )
        return result.final_vector

    def anchor(self, r_vec: np.ndarray, o_vec: np.ndarray) -> None:
        """Fix the references: R's outputs (for KL) and O's members (for FR)."""
        from forsaken.common import metrics as M

        self._r_side = self._outputs(r_vec, np.concatenate([self.forget.x_train, self.trig_x]))
        forget = M.per_sample_losses(self._outputs(o_vec, self.forget.x_train), self.forget.y_train)
        test = M.per_sample_losses(self._outputs(o_vec, self.ds.x_test), self.ds.y_test)
        self._members_o = M.oracle_members(forget, test)

    def score(self, vec: np.ndarray) -> Scores:
        from forsaken.common import metrics as M

        if self._r_side is None or self._members_o is None:
            raise RuntimeError("Scorer.anchor must run before Scorer.score")
        out_forget = self._outputs(vec, self.forget.x_train)
        out_trig = self._outputs(vec, self.trig_x)
        out_test = self._outputs(vec, self.ds.x_test)
        forget_losses = M.per_sample_losses(out_forget, self.forget.y_train)
        test_losses = M.per_sample_losses(out_test, self.ds.y_test)
        side = np.concatenate([out_forget, out_trig])
        return Scores(
            test_acc=M.accuracy(out_test, self.ds.y_test),
            asr=M.attack_success_rate(out_trig, self.cfg.target),
            mia_auc=M.mia_auc(forget_losses, test_losses),
            mia_tpr_at_1fpr=M.tpr_at_fpr(forget_losses, test_losses, 0.01),
            kl_forget=M.kl_divergence(M.softmax(self._r_side), M.softmax(side)),
            fr=M.forgetting_rate(self._members_o, M.oracle_members(forget_losses, test_losses)),
        )

    def _outputs(self, vec: np.ndarray, x: np.ndarray) -> np.ndarray:
        from forsaken.common import metrics as M
        from forsaken.common.training import load_vector

        load_vector(self.model, vec)
        return M.model_outputs(self.model, x)


def check_scorer(mine: Scores, theirs: ModelReport, what: str) -> None:
    """Fail loudly if this module's scoring no longer matches reference.py's on one model.

    FR is left out: it is relative to O, and the daemons' O differs from the in-process O by
    secure aggregation's quantization."""
    expected = Scores.of_report(theirs)
    for name in ("test_acc", "asr", "mia_auc", "mia_tpr_at_1fpr"):
        a, b = getattr(mine, name), getattr(expected, name)
        if not np.isclose(a, b, rtol=0, atol=1e-9):
            raise RuntimeError(
                f"{what}: {name} is {a} here but {b} in reference.py; the scorer has drifted "
                "from forsaken.common.unlearning.reference"
            )


# ---- cost -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cost:
    client_grad_evals: float
    wall_s: float
    bytes_up: float


@dataclass(frozen=True, slots=True)
class UnlearningCost:
    """The distributed U's cost with its parts, per seed."""

    counted: Cost  # reference.py's grad_evals_unlearning reading
    strict_grad_evals: int  # every client's every gradient after ForgetMe
    forgetter_grad_evals: int  # the forgetting client's engine steps
    forgetter_seconds: float  # their compute time inside the daemon
    receipt_grad_evals: float | None  # what the receipt's client_progress says
    uploads: int


def unlearning_cost(run: ForgetRun, local_epochs: int, num_params: int) -> UnlearningCost:
    """Count the work from round T + 1 to U's round, as reference.py counts its U."""
    steps = {int(s["round"]): s for s in run.steps}
    forgetter = sum(int(s["gradient_evaluations"]) for s in run.steps)
    counted, strict, uploads = forgetter, forgetter, 0
    for r in range(run.forget_round + 1, run.unlearned_round + 1):
        rec = run.by_round(r)
        step = steps.get(r)
        stepped = step is not None and int(step["num_samples"]) > 0
        others = int(rec["total_samples"]) - (int(step["num_samples"]) if stepped else 0)
        strict += others * local_epochs
        if not stepped:  # a recovery round, or one in which the forgetter uploaded nothing
            counted += others * local_epochs
        uploads += len(rec["participants"])
    first = run.by_round(run.forget_round + 1)
    round_start_ms = first["finished_unix_ms"] - first["duration_s"] * 1000
    wall = (run.receipt["completed_ms"] - round_start_ms) / 1000
    receipt_evals = run.receipt.get("client_progress", {}).get("gradient_evaluations")
    return UnlearningCost(
        counted=Cost(counted, wall, uploads * (num_params + 1) * BYTES_PER_ENTRY),
        strict_grad_evals=strict,
        forgetter_grad_evals=forgetter,
        forgetter_seconds=float(sum(s["seconds"] for s in run.steps)),
        receipt_grad_evals=receipt_evals,
        uploads=uploads,
    )
