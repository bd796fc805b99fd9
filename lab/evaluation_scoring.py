"""Scoring for `forsaken evaluate`: the protocol's metrics of a model under evaluation.json's
names (the in-process runner's own scoring, so the two cannot drift apart) and the distributed
U's cost after ForgetMe (see COST_BASIS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from forsaken.lab.evaluation_run import ForgetRun
    from forsaken.lab.reference import Anchor, ModelScores, ProtocolConfig

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

# evaluation.json's name for each of reference.ModelScores' fields.
JSON_NAMES = {
    "accuracy": "test_acc",
    "asr": "asr",
    "flip_rate": "flip_rate",
    "kl_forget": "kl_forget",
    "mia_auc": "mia_auc",
    "mia_tpr_1fpr": "mia_tpr_at_1fpr",
    "conf_auc": "conf_auc",
    "forgetting_rate": "fr",
    "lira_auc": "lira_auc",
    "lira_tpr_1pct": "lira_tpr_at_1pct_fpr",
    "lira_tpr_01pct": "lira_tpr_at_0.1pct_fpr",
    "lira_offline_auc": "lira_offline_auc",
    "lira_recentred_auc": "lira_recentred_auc",
    "lira_recentred_tpr_1pct": "lira_recentred_tpr_at_1pct_fpr",
}
METRICS = tuple(JSON_NAMES.values())


def json_scores(scores: ModelScores) -> dict[str, float | None]:
    """One model's scores under evaluation.json's names (None: not measured on this test bed)."""
    return {JSON_NAMES[k]: getattr(scores, k) for k in JSON_NAMES}


class Scorer:
    """Scores models of one seed's federation with the in-process runner's own scoring
    (reference.Anchor): the same probes, R's outputs, O's members and, with shadows, LiRA."""

    def __init__(self, cfg: ProtocolConfig, seed: int) -> None:
        from forsaken.lab.reference import federation

        self.cfg = cfg
        self.seed = seed
        self.fed = federation(cfg, seed)
        self._anchor: Anchor | None = None

    def retrain(self) -> np.ndarray:
        """R's vector: `run_fedavg` without the forget set, exactly as reference.references."""
        import torch

        from forsaken.common.simulation import run_fedavg

        torch.set_num_threads(1)  # as the in-process runner: the same seed gives the same bits
        bed = self.fed.bed
        return run_fedavg(
            bed.dataset,
            self.cfg.clients,
            self.cfg.rounds,
            scheme=bed.scheme,
            alpha=bed.alpha,
            seed=self.seed,
            train_cfg=self.fed.train,
            architecture=self.cfg.arch,
            forget_ids=bed.forget_ids.tolist(),
        ).final_vector

    def anchor(self, r_vec: np.ndarray, o_vec: np.ndarray) -> None:
        """Fix the references: R's outputs (for KL) and O's members (for FR)."""
        from forsaken.lab.reference import Anchor

        self._anchor = Anchor.build(self.fed, r_vec, o_vec, None)

    def score(self, vec: np.ndarray) -> dict[str, float | None]:
        if self._anchor is None:
            raise RuntimeError("Scorer.anchor must run before Scorer.score")
        return json_scores(self._anchor.score(vec))


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
        uploaded = int(step["num_samples"]) if step is not None else 0
        stepped = uploaded > 0
        others = int(rec["total_samples"]) - uploaded
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
