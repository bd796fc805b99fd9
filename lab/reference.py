"""The unlearning evaluation protocol, run in one process on the daemons' code paths.

Per seed, on a test bed from `forsaken.common.testbeds` (who holds what, what is forgotten):
train O; from O run each method the way the daemons would (the forgetting client's engine step
in place of its training while the others train as usual, the ordinary weighted FedAvg, then
recovery rounds); and compare every model with R, the retrain from scratch without the forget
data under the same seed (`run_fedavg(..., forget_ids=...)`), and R', the same retrain under
another seed (the noise floor). With `shadows` > 0 a per-example membership attack (LiRA) is
calibrated on shadow federations trained with the same code (`shadows.py`) and run against
every model; with `ulira` the shadows are also unlearned by Forsaken for U-LiRA.

    python -m forsaken.lab.reference --test-bed clean --dataset digits \\
        --rounds 30 --seeds 3 --shadows 16
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from forsaken.common import metrics as M
from forsaken.common.datasets import load_dataset
from forsaken.common.lira import (
    LiraCalibration,
    forgetting_score,
    lira_attack,
    per_example_epsilon,
)
from forsaken.common.models import default_architecture
from forsaken.common.simulation import run_fedavg
from forsaken.common.tensors import specs_of
from forsaken.common.testbeds import TestBed, build_test_bed
from forsaken.common.training import load_vector
from forsaken.common.unlearning.engine import ForsakenConfig, ForsakenEngine
from forsaken.common.unlearning.fedquit import FedQuitConfig, FedQuitEngine
from forsaken.common.unlearning.negation import DEFAULT_LAYERS, negate
from forsaken.common.unlearning.pga import PGAConfig, PGAEngine
from forsaken.common.unlearning.rounds import Cost, InProcessFederation, Unlearning
from forsaken.common.unlearning.shadows import (
    Candidates,
    ShadowSet,
    statistics,
    train_shadows,
    unlearned_shadows,
)

R_PRIME_SEED_OFFSET = 1000
BASELINES = ("finetune", "pga", "fedquit", "not")


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    dataset: str = "digits"
    test_bed: str = "backdoor"  # a name from forsaken.common.testbeds
    architecture: str = ""  # "": the dataset's default
    rounds: int = 30  # T: rounds of training before ForgetMe
    clients: int = 5
    local_epochs: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    forget_client: int = 0
    recovery_rounds: int = 1  # after Forsaken's unlearning rounds
    pga_recovery_rounds: int = 1
    fedquit_recovery_rounds: int = 1
    not_recovery_rounds: int = 2  # NoT is all recovery: as many as the cost bar allows
    not_layers: int = DEFAULT_LAYERS
    further_rounds: int = 10  # normal rounds after U, to check the effect stays gone
    shadows: int = 0  # shadow federations for LiRA; 0: no per-example attack
    ulira: bool = False  # also unlearn every shadow with Forsaken (U-LiRA)
    baselines: tuple[str, ...] = BASELINES
    forsaken: ForsakenConfig = field(default_factory=ForsakenConfig)
    pga: PGAConfig = field(default_factory=PGAConfig)
    fedquit: FedQuitConfig = field(default_factory=FedQuitConfig)

    @property
    def arch(self) -> str:
        return self.architecture or default_architecture(self.dataset)


@dataclass(frozen=True, slots=True)
class ModelScores:
    """What the protocol measures on one model (None where the test bed has no such probe)."""

    accuracy: float
    kl_forget: float  # KL(R ‖ model), mean over forget-set (and triggered test) inputs
    mia_auc: float  # loss threshold: forget set (members) vs test set (non-members)
    mia_tpr_1fpr: float
    conf_auc: float  # label-free confidence threshold, same sets: over-forgetting shows here
    forgetting_rate: float  # FR vs O under the median-test-loss oracle
    asr: float | None = None  # trigger test beds
    flip_rate: float | None = None  # label-flip: share of flipped samples still given the flip
    lira_auc: float | None = None
    lira_tpr_1pct: float | None = None
    lira_tpr_01pct: float | None = None
    lira_offline_auc: float | None = None
    lira_recentred_auc: float | None = None  # LiRA with the model's global shift removed
    lira_recentred_tpr_1pct: float | None = None


@dataclass(frozen=True, slots=True)
class ModelReport(ModelScores):
    """Scores plus the cost after ForgetMe (all of it, for R)."""

    grad_evals: int = 0  # client per-sample gradient evaluations after ForgetMe, all clients
    grad_evals_unlearning: int = 0  # minus the others' ordinary training in unlearning rounds
    grad_evals_forgetter: int = 0  # of which the forgetting client's (generator training etc.)
    rounds: int = 0
    bytes_up: int = 0  # uploads x (params + 1 count slot) x 4 bytes (uint32 after quantization)
    seconds: float = 0.0  # client compute time (local training + engine), summed

    @classmethod
    def of(cls, scores: ModelScores, cost: Cost, upload_bytes: int) -> ModelReport:
        return cls(
            **asdict(scores),
            grad_evals=cost.evals,
            grad_evals_unlearning=cost.evals - cost.concurrent,
            grad_evals_forgetter=cost.forgetter,
            rounds=cost.rounds,
            bytes_up=cost.uploads * upload_bytes,
            seconds=cost.seconds,
        )


# ---- scoring ----------------------------------------------------------------------------------


@dataclass
class Anchor:
    """What every model of one seed is scored against: R's outputs, O's members, the LiRA
    calibration. Built once per seed; the daemons' models are scored with the same one."""

    fed: InProcessFederation
    r_side: np.ndarray  # R's logits on the forget-side inputs
    members_o: np.ndarray  # the oracle's members under O
    candidates: Candidates
    calibration: LiraCalibration | None

    @classmethod
    def build(
        cls,
        fed: InProcessFederation,
        r_vec: np.ndarray,
        o_vec: np.ndarray,
        shadows: ShadowSet | None,
    ) -> Anchor:
        bed = fed.bed
        r_side = _outputs(fed, r_vec, _side_inputs(bed))
        forget = M.per_sample_losses(_outputs(fed, o_vec, bed.forget_x), bed.forget_y)
        test = M.per_sample_losses(_outputs(fed, o_vec, bed.dataset.x_test), bed.dataset.y_test)
        calibration = shadows.calibration() if shadows is not None else None
        return cls(fed, r_side, M.oracle_members(forget, test), Candidates.of(bed), calibration)

    def score(self, vec: np.ndarray) -> ModelScores:
        bed, fed = self.fed.bed, self.fed
        ds = bed.dataset
        out_forget = _outputs(fed, vec, bed.forget_x)
        out_test = _outputs(fed, vec, ds.x_test)
        forget_losses = M.per_sample_losses(out_forget, bed.forget_y)
        test_losses = M.per_sample_losses(out_test, ds.y_test)
        side = [out_forget]
        asr = flip = None
        if bed.trigger is not None:
            out_trig = _outputs(fed, vec, bed.trigger.x)
            side.append(out_trig)
            asr = M.attack_success_rate(out_trig, bed.trigger.target)
        flipped = bed.flipped()
        if flipped.any():
            flip = M.accuracy(out_forget[flipped], bed.forget_y[flipped])
        conf_forget = M.softmax(out_forget).max(axis=1)
        conf_test = M.softmax(out_test).max(axis=1)
        lira: dict[str, float | None] = {}
        if self.calibration is not None:
            stat = statistics(fed, vec, self.candidates)
            res = lira_attack(
                self.calibration, stat, self.candidates.member, self.candidates.nonmember
            )
            lira = {
                "lira_auc": res.auc,
                "lira_tpr_1pct": res.tpr[0.01],
                "lira_tpr_01pct": res.tpr[0.001],
                "lira_offline_auc": res.offline_auc,
                "lira_recentred_auc": res.recentred_auc,
                "lira_recentred_tpr_1pct": res.recentred_tpr[0.01],
            }
        return ModelScores(
            accuracy=M.accuracy(out_test, ds.y_test),
            kl_forget=M.kl_divergence(M.softmax(self.r_side), M.softmax(np.concatenate(side))),
            mia_auc=M.mia_auc(forget_losses, test_losses),
            mia_tpr_1fpr=M.tpr_at_fpr(forget_losses, test_losses, 0.01),
            # "higher confidence = member", read by mia_auc as "lower loss = member".
            conf_auc=M.mia_auc(-conf_forget, -conf_test),
            forgetting_rate=M.forgetting_rate(
                self.members_o, M.oracle_members(forget_losses, test_losses)
            ),
            asr=asr,
            flip_rate=flip,
            **lira,
        )


def _side_inputs(bed: TestBed) -> np.ndarray:
    parts = [bed.forget_x] + ([bed.trigger.x] if bed.trigger is not None else [])
    return np.concatenate(parts)


def _outputs(fed: InProcessFederation, vec: np.ndarray, x: np.ndarray) -> np.ndarray:
    load_vector(fed.model, vec)
    return M.model_outputs(fed.model, x)


# ---- the methods, from O -----------------------------------------------------------------------


def federation(cfg: ProtocolConfig, seed: int) -> InProcessFederation:
    ds = load_dataset(cfg.dataset)
    bed = build_test_bed(cfg.test_bed, ds, cfg.clients, seed, cfg.forget_client)
    return InProcessFederation.of(bed, cfg.arch, cfg.local_epochs)


def forsaken_unlearn(
    cfg: ProtocolConfig, fed: InProcessFederation, start: np.ndarray
) -> Unlearning:
    fcfg = replace(cfg.forsaken, seed=fed.bed.seed)
    engine = ForsakenEngine(fed.spec, fcfg, contribution=fed.forgetter_contribution)
    return fed.unlearn(start, cfg.rounds + 1, engine, fcfg.max_rounds, cfg.recovery_rounds)


def baseline_unlearn(
    cfg: ProtocolConfig, fed: InProcessFederation, start: np.ndarray, name: str, rounds: int
) -> Unlearning:
    """A baseline from O; `rounds` is U's round count (what finetune gets)."""
    seed, first = fed.bed.seed, cfg.rounds + 1
    if name == "finetune":
        vec, cost = fed.normal(start, first, rounds)
        return Unlearning(vec, cost, [], vec, cost)
    if name == "not":
        negated = negate(start, specs_of(fed.model.state_dict()), cfg.not_layers)
        vec, cost = fed.normal(negated, first, cfg.not_recovery_rounds)
        return Unlearning(vec, cost, [], negated, Cost())
    if name == "pga":
        bed = fed.bed
        share = len(bed.forget_y) / fed.total_weight
        pga = PGAEngine(
            fed.spec,
            replace(cfg.pga, seed=seed),
            last_update=fed.last_forgetter_update,
            last_weight_share=share,
        )
        return fed.unlearn(start, first, pga, 1, cfg.pga_recovery_rounds)
    if name == "fedquit":
        engine = FedQuitEngine(fed.spec, replace(cfg.fedquit, seed=seed))
        return fed.unlearn(start, first, engine, 1, cfg.fedquit_recovery_rounds)
    raise ValueError(f"unknown baseline {name!r}; expected one of {BASELINES}")


# ---- one seed ----------------------------------------------------------------------------------


@dataclass
class SeedRun:
    reports: dict[str, ModelReport]
    logs: dict[str, object]
    anchor: Anchor
    vectors: dict[str, np.ndarray]
    shadows: ShadowSet | None = None
    ulira: dict[str, float] | None = None


def references(
    cfg: ProtocolConfig,
    seed: int,
    cache: Path | None = None,
    on_event: Callable[[str], None] | None = None,
) -> tuple[InProcessFederation, dict[str, np.ndarray], ShadowSet | None, dict[str, Cost]]:
    """O, R, R' and the shadows of one seed (read from `cache` when it holds them)."""
    torch.set_num_threads(1)  # bit-determinism: the same seed gives the same numbers
    say = on_event or (lambda _text: None)
    fed = federation(cfg, seed)
    bed = fed.bed
    path = None if cache is None else cache / f"refs-{_cache_key(cfg, seed)}.npz"
    if path is not None and path.exists():
        with np.load(path, allow_pickle=False) as saved:
            stored = {k: saved[k] for k in saved.files}
        vectors = {k: stored[k] for k in ("O", "R", "R'")}
        costs = {"R": Cost(**json.loads(str(stored["r_cost"])))}
        fed.last_forgetter_update = stored["last_forgetter_update"]
        if "forgetter_contribution" not in stored:  # a cache written before it was kept
            if not np.array_equal(fed.train_rounds(cfg.rounds), stored["O"]):
                raise RuntimeError(f"{path} does not match this code's O; delete it")
            stored["forgetter_contribution"] = fed.forgetter_contribution
            np.savez(path, **stored)
        fed.forgetter_contribution = stored["forgetter_contribution"]
        shadows = None
        if cfg.shadows:
            shadows = train_shadows(
                fed,
                cfg.rounds,
                cfg.shadows,
                vectors=stored["shadows"],
                contributions=stored.get("shadow_contributions"),
            )
        return fed, vectors, shadows, costs
    say("training O")
    o_vec = fed.train_rounds(cfg.rounds)
    forget_ids = bed.forget_ids.tolist()
    say("retraining without the forget set: R and R'")
    sims = [
        run_fedavg(
            bed.dataset,
            cfg.clients,
            cfg.rounds,
            scheme=bed.scheme,
            alpha=bed.alpha,
            seed=s,
            train_cfg=fed.train,
            architecture=cfg.arch,
            forget_ids=forget_ids,
        )
        for s in (seed, seed + R_PRIME_SEED_OFFSET)
    ]
    others = cfg.clients - (1 if bed.forget_all else 0)
    r_cost = Cost(
        evals=sims[0].gradient_evaluations,
        rounds=cfg.rounds,
        uploads=cfg.rounds * others,
        seconds=sims[0].train_seconds,
    )
    vectors = {"O": o_vec, "R": sims[0].final_vector, "R'": sims[1].final_vector}
    shadows = None
    if cfg.shadows:
        say(f"training {cfg.shadows} shadow federations for LiRA")
        shadows = train_shadows(fed, cfg.rounds, cfg.shadows)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {}
        if shadows is not None:
            assert shadows.contributions is not None
            extra = {"shadows": shadows.vectors, "shadow_contributions": shadows.contributions}
        assert fed.last_forgetter_update is not None
        assert fed.forgetter_contribution is not None
        # allow_pickle=False as the cache is read; it also tells mypy that none of the
        # unpacked arrays is that flag.
        np.savez(
            path,
            allow_pickle=False,
            **vectors,
            last_forgetter_update=fed.last_forgetter_update,
            forgetter_contribution=fed.forgetter_contribution,
            r_cost=np.array(json.dumps(asdict(r_cost))),
            **extra,
        )
    return fed, vectors, shadows, {"R": r_cost}


def _cache_key(cfg: ProtocolConfig, seed: int) -> str:
    parts: tuple[str | int, ...] = (
        cfg.dataset,
        cfg.test_bed,
        cfg.arch,
        cfg.rounds,
        cfg.clients,
        cfg.local_epochs,
    )
    parts += (cfg.forget_client, cfg.shadows, seed, 2)  # 2: the cache layout's version
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def run_seed(
    cfg: ProtocolConfig,
    seed: int,
    cache: Path | None = None,
    on_event: Callable[[str], None] | None = None,
) -> SeedRun:
    """Every model of the protocol for one seed: O, U0, U, U+10, R, R' and the baselines."""
    say = on_event or (lambda _text: None)
    fed, vectors, shadows, costs = references(cfg, seed, cache, on_event)
    o_vec = vectors["O"]
    say("unlearning with forsaken")
    u = forsaken_unlearn(cfg, fed, o_vec)
    u10, extra = fed.normal(u.vector, cfg.rounds + u.cost.rounds + 1, cfg.further_rounds)
    models: dict[str, tuple[np.ndarray, Cost]] = {
        "O": (o_vec, Cost()),
        "U0": (u.before_recovery, u.cost_before_recovery),
        "U": (u.vector, u.cost),
        "U+10": (u10, replace(u.cost.plus(extra), concurrent=u.cost.concurrent)),
        "R": (vectors["R"], costs["R"]),
        "R'": (vectors["R'"], costs["R"]),
    }
    logs: dict[str, object] = {"forsaken_rounds": u.log}
    for name in cfg.baselines:
        say(f"unlearning with {name}")
        b = baseline_unlearn(cfg, fed, o_vec, name, u.cost.rounds)
        models[name] = (b.vector, b.cost)
        logs[name] = b.log
    anchor = Anchor.build(fed, vectors["R"], o_vec, shadows)
    upload = fed.upload_bytes()
    reports = {
        name: ModelReport.of(anchor.score(vec), cost, upload)
        for name, (vec, cost) in models.items()
    }
    ulira = None
    if cfg.ulira and shadows is not None:
        say(f"U-LiRA: unlearning the {cfg.shadows} shadow federations with forsaken")
        ulira = ulira_scores(fed, shadows, lambda sf, v: forsaken_unlearn(cfg, sf, v).vector)
    return SeedRun(reports, logs, anchor, {k: v for k, (v, _) in models.items()}, shadows, ulira)


def ulira_scores(
    fed: InProcessFederation,
    shadows: ShadowSet,
    unlearn: Callable[[InProcessFederation, np.ndarray], np.ndarray],
) -> dict[str, float]:
    """U-LiRA on the forgotten samples: the forgetting score F (1 = no sample leaks) of
    "trained on it, then unlearned" against "never saw it", and F of two halves of the "never
    saw it" models against each other (the estimate's own floor with this many shadows)."""
    stats = unlearned_shadows(fed, shadows, unlearn)
    cand = shadows.candidates
    cols = np.flatnonzero(cand.member)
    is_in = shadows.is_in[:, cols]
    per_in = int(is_in[:, 0].sum())
    take_in = np.argsort(~is_in, axis=0, kind="stable")[:per_in]  # rows of the IN shadows
    take_out = np.argsort(is_in, axis=0, kind="stable")[: len(is_in) - per_in]
    s = stats[:, cols]
    a = np.take_along_axis(s, take_in, axis=0)
    b = np.take_along_axis(s, take_out, axis=0)
    eps = per_example_epsilon(a, b)
    half = len(b) // 2
    floor = per_example_epsilon(b[:half], b[half:]) if half >= 2 else np.full(len(cols), np.nan)
    return {
        "ulira_forgetting_score": forgetting_score(eps),
        "ulira_median_epsilon": float(np.median(eps)),
        "ulira_floor_forgetting_score": (
            forgetting_score(floor) if np.isfinite(floor).all() else float("nan")
        ),
        "ulira_unlearned_models": float(per_in),
        "ulira_never_models": float(len(b)),
        # 1: each shadow's node unlearned with its own contribution record, as real nodes do.
        "ulira_with_records": float(shadows.contributions is not None),
    }


# ---- over seeds ---------------------------------------------------------------------------------


def summarize(
    per_seed: Sequence[dict[str, ModelReport]],
) -> dict[str, dict[str, tuple[float, float] | None]]:
    """Mean and (population) std over seeds of every metric of every model (None: not measured)."""
    out: dict[str, dict[str, tuple[float, float] | None]] = {}
    for name in per_seed[0]:
        rows = [asdict(seed_reports[name]) for seed_reports in per_seed]
        row: dict[str, tuple[float, float] | None] = {}
        for k in rows[0]:
            values = [r[k] for r in rows]
            if any(v is None for v in values):
                row[k] = None
            else:
                row[k] = (float(np.mean(values)), float(np.std(values)))
        out[name] = row
    return out


# The bars, as margins (docs/unlearning.md states them and why).
ASR_MARGIN = 0.02
ACC_MARGIN = 0.01
KL_FACTOR = 3.0
AUC_MARGIN = 0.03  # population attacks (loss, confidence): |U - R|
LIRA_AUC_MARGIN = 0.02
LIRA_TPR_MARGIN = 0.01
COST_FACTOR = 10.0
R_ASR_CEILING = 0.05
O_ASR_FLOOR = {"mnist5k": 0.80, "digits": 0.50}


@dataclass(frozen=True, slots=True)
class Bar:
    rule: str
    value: float
    limit: float
    at_least: bool = False  # pass when value >= limit (else value <= limit)

    @property
    def passed(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit


def bars(summary: dict[str, dict[str, tuple[float, float] | None]], dataset: str) -> dict[str, Bar]:
    """The bars that apply to what was measured (means over seeds). Two-sided where a model
    can miss by looking *less* like a member than R (over-forgetting is detectable too)."""

    def m(model: str, key: str) -> float | None:
        v = summary[model].get(key)
        return None if v is None else v[0]

    def gap(key: str) -> float:
        return abs(_num(m("U", key)) - _num(m("R", key)))

    out = {
        "acc_U": Bar("|acc(U) - acc(R)| <= 0.01", gap("accuracy"), ACC_MARGIN),
        "mia_U": Bar("|loss-MIA AUC(U) - AUC(R)| <= 0.03", gap("mia_auc"), AUC_MARGIN),
        "conf_U": Bar("|confidence-MIA AUC(U) - AUC(R)| <= 0.03", gap("conf_auc"), AUC_MARGIN),
        "cost_U": Bar(
            "grad evals (counted) <= R/10",
            _num(m("U", "grad_evals_unlearning")),
            _num(m("R", "grad_evals")) / COST_FACTOR,
        ),
        "cost_U_strict": Bar(
            "grad evals (strict) <= R/10",
            _num(m("U", "grad_evals")),
            _num(m("R", "grad_evals")) / COST_FACTOR,
        ),
    }
    if m("U", "lira_auc") is not None:
        out["lira_auc_U"] = Bar("|LiRA AUC(U) - AUC(R)| <= 0.02", gap("lira_auc"), LIRA_AUC_MARGIN)
        out["lira_tpr_U"] = Bar(
            "|LiRA TPR@1%FPR(U) - R| <= 0.01", gap("lira_tpr_1pct"), LIRA_TPR_MARGIN
        )
        out["lira_recentred_auc_U"] = Bar(
            "|recentred LiRA AUC(U) - AUC(R)| <= 0.02",
            gap("lira_recentred_auc"),
            LIRA_AUC_MARGIN,
        )
        out["lira_recentred_tpr_U"] = Bar(
            "|recentred LiRA TPR@1%FPR(U) - R| <= 0.01",
            gap("lira_recentred_tpr_1pct"),
            LIRA_TPR_MARGIN,
        )
    if m("U", "asr") is not None:
        r_asr = _num(m("R", "asr"))
        out |= {
            "valid_O_asr": Bar(
                "validity: ASR(O) >= floor",
                _num(m("O", "asr")),
                O_ASR_FLOOR.get(dataset, 0.80),
                at_least=True,
            ),
            "valid_R_asr": Bar("validity: ASR(R) <= 0.05", r_asr, R_ASR_CEILING),
            "asr_U": Bar("ASR(U) <= ASR(R) + 0.02", _num(m("U", "asr")), r_asr + ASR_MARGIN),
            "asr_U+10": Bar(
                "ASR(U+10) <= ASR(R) + 0.02", _num(m("U+10", "asr")), r_asr + ASR_MARGIN
            ),
        }
    if m("U", "flip_rate") is not None:
        r_flip = _num(m("R", "flip_rate"))
        out |= {
            "flip_U": Bar(
                "flip rate(U) <= flip rate(R) + 0.02", _num(m("U", "flip_rate")), r_flip + 0.02
            ),
            "flip_U+10": Bar(
                "flip rate(U+10) <= flip rate(R) + 0.02",
                _num(m("U+10", "flip_rate")),
                r_flip + 0.02,
            ),
        }
    if m("U", "asr") is not None or m("U", "flip_rate") is not None:
        out["kl_U"] = Bar(
            "KL(R‖U) <= 3 KL(R‖R')",
            _num(m("U", "kl_forget")),
            KL_FACTOR * _num(m("R'", "kl_forget")),
        )
    return out


def _num(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def check_bars(
    summary: dict[str, dict[str, tuple[float, float] | None]], dataset: str
) -> dict[str, bool]:
    return {name: bar.passed for name, bar in bars(summary, dataset).items()}


# ---- command line ---------------------------------------------------------------------------


_COLUMNS = (
    "accuracy",
    "asr",
    "flip_rate",
    "kl_forget",
    "mia_auc",
    "conf_auc",
    "lira_auc",
    "lira_tpr_1pct",
    "lira_tpr_01pct",
    "lira_recentred_auc",
    "lira_recentred_tpr_1pct",
    "grad_evals_unlearning",
    "rounds",
)


def format_table(summary: dict[str, dict[str, tuple[float, float] | None]]) -> str:
    """A markdown table of mean ± std per model (columns that were measured)."""
    cols = [c for c in _COLUMNS if any(row.get(c) is not None for row in summary.values())]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in summary.items():
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("-" if v is None else f"{v[0]:.4g} ± {v[1]:.2g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _say_for_seed(seed: int, text: str) -> None:
    print(f"seed {seed}: {text}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    from forsaken.common.testbeds import TEST_BEDS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--test-bed", default="backdoor", choices=sorted(TEST_BEDS))
    p.add_argument("--dataset", default="digits")
    p.add_argument("--architecture", default="")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--local-epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--recovery-rounds", type=int, default=1)
    p.add_argument("--shadows", type=int, default=0)
    p.add_argument("--ulira", action="store_true")
    p.add_argument("--baselines", default=",".join(BASELINES))
    p.add_argument("--cache", type=Path, help="keep O, R, R' and the shadows here")
    p.add_argument("--json", help="write the full per-seed and summary result here")
    a = p.parse_args(argv)
    cfg = ProtocolConfig(
        dataset=a.dataset,
        test_bed=a.test_bed,
        architecture=a.architecture,
        rounds=a.rounds,
        clients=a.clients,
        local_epochs=a.local_epochs,
        seeds=tuple(range(a.first_seed, a.first_seed + a.seeds)),
        recovery_rounds=a.recovery_rounds,
        shadows=a.shadows,
        ulira=a.ulira,
        baselines=tuple(b for b in a.baselines.split(",") if b),
    )
    started = time.perf_counter()
    runs = []
    for s in cfg.seeds:
        runs.append(run_seed(cfg, s, a.cache, functools.partial(_say_for_seed, s)))
    summary = summarize([r.reports for r in runs])
    verdicts = bars(summary, cfg.dataset)
    print(format_table(summary))
    if any(r.ulira for r in runs):
        for r, s in zip(runs, cfg.seeds, strict=True):
            print(f"seed {s} U-LiRA:", json.dumps(r.ulira))
    print("bars:", " ".join(f"{k}={'PASS' if b.passed else 'FAIL'}" for k, b in verdicts.items()))
    print(f"wall {time.perf_counter() - started:.0f}s")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(
                {
                    "config": repr(cfg),
                    "summary": summary,
                    "bars": {k: asdict(b) | {"pass": b.passed} for k, b in verdicts.items()},
                    "per_seed": [{k: asdict(v) for k, v in r.reports.items()} for r in runs],
                    "ulira": [r.ulira for r in runs],
                    "logs": [r.logs for r in runs],
                },
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
