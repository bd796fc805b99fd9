"""The evaluation protocol of docs/evaluation.md, run in one process on the real code paths.

Per seed: train O with the backdoor on the forgetting client; then from O run each method the
way the daemons would (the forgetting client's engine step in place of its training, the other
clients training normally in the same rounds, the ordinary weighted FedAvg aggregate, then
recovery rounds without the forgetting client), and compare every model with R, the retrain from
scratch without the forget data under the same seed (`run_fedavg(..., forget_ids=...)`), and R',
the same retrain under another seed (the noise floor). Secure aggregation's quantization (about
1e-6 relative) is ignored: the plaintext mean is what it reproduces.

    python -m forsaken.common.unlearning.reference --dataset digits --rounds 30 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from forsaken.common import metrics as M
from forsaken.common.backdoor import (
    PoisonedData,
    dataset_trigger,
    poison_client,
    triggered_test_set,
)
from forsaken.common.datasets import Dataset, load_dataset
from forsaken.common.fedavg import apply_update, weighted_average
from forsaken.common.models import build_model, default_architecture
from forsaken.common.partition import ClientData, client_split
from forsaken.common.simulation import client_round_seed, run_fedavg
from forsaken.common.tensors import flatten
from forsaken.common.training import TrainConfig, load_vector, train_local
from forsaken.common.types import ModelSpec
from forsaken.common.unlearning.engine import ForgetEngine, ForsakenConfig, ForsakenEngine
from forsaken.common.unlearning.pga import PGAConfig, PGAEngine

R_PRIME_SEED_OFFSET = 1000


@dataclass(frozen=True, slots=True)
class ProtocolConfig:
    dataset: str = "digits"
    rounds: int = 30  # T: rounds of training before ForgetMe
    clients: int = 5
    local_epochs: int = 5
    seeds: tuple[int, ...] = (0, 1, 2)
    forget_client: int = 0
    target: int = 0
    poison_fraction: float = 0.8
    recovery_rounds: int = 1  # after Forsaken's unlearning rounds
    pga_recovery_rounds: int = 1
    further_rounds: int = 10  # normal rounds after U, to check the backdoor stays gone
    forsaken: ForsakenConfig = field(default_factory=ForsakenConfig)
    pga: PGAConfig = field(default_factory=PGAConfig)


@dataclass(frozen=True, slots=True)
class ModelReport:
    """Metrics of one model; cost fields count work after ForgetMe (all of it, for R)."""

    accuracy: float
    asr: float
    kl_forget: float  # KL(R ‖ model), mean over forget-set and triggered test inputs
    mia_auc: float  # forget set (members) vs test set (non-members), loss threshold
    mia_tpr_1fpr: float
    forgetting_rate: float  # FR vs O under the median-test-loss oracle
    grad_evals: int  # client per-sample gradient evaluations after ForgetMe, all clients
    grad_evals_unlearning: int  # minus the others' ordinary training in unlearning rounds
    grad_evals_forgetter: int  # of which the forgetting client's (generator training etc.)
    rounds: int
    bytes_up: int  # uploads x (params + 1 count slot) x 4 bytes (uint32 after quantization)
    seconds: float  # client compute time (local training + engine), summed


@dataclass
class _Bed:
    """One seed's federation: data, the probes, and the model skeleton."""

    ds: Dataset
    seed: int
    cfg: ProtocolConfig
    train: TrainConfig
    spec: ModelSpec
    local: list[ClientData]
    poisoned: PoisonedData
    trig_x: np.ndarray
    model: torch.nn.Module
    last_forgetter_update: np.ndarray | None = None  # its own last delta, kept client-side

    @property
    def forget(self) -> ClientData:
        return self.poisoned.data

    def others(self) -> list[int]:
        return [i for i in range(self.cfg.clients) if i != self.cfg.forget_client]

    def upload_bytes(self) -> int:
        return (sum(p.numel() for p in self.model.parameters()) + 1) * 4


def _bed(cfg: ProtocolConfig, seed: int) -> _Bed:
    ds = load_dataset(cfg.dataset)
    local = [client_split(ds, i, cfg.clients, seed=seed) for i in range(cfg.clients)]
    poisoned = poison_client(
        local[cfg.forget_client], cfg.target, cfg.poison_fraction, seed, dataset_trigger(ds)
    )
    local[cfg.forget_client] = poisoned.data
    arch = default_architecture(ds.name)
    spec = ModelSpec(arch, ds.input_shape, ds.num_classes, ds.name)
    trig_x, _ = triggered_test_set(ds, cfg.target, poisoned.trigger)
    return _Bed(
        ds,
        seed,
        cfg,
        TrainConfig(local_epochs=cfg.local_epochs),
        spec,
        local,
        poisoned,
        trig_x,
        build_model(arch, ds.input_shape, ds.num_classes, seed),
    )


@dataclass
class _Cost:
    evals: int = 0
    concurrent: int = 0  # the others' training during unlearning rounds
    forgetter: int = 0
    uploads: int = 0
    seconds: float = 0.0
    rounds: int = 0


def _round(
    bed: _Bed,
    vec: np.ndarray,
    r: int,
    cost: _Cost,
    engine: ForgetEngine | None = None,
    with_forgetter: bool = False,
) -> tuple[np.ndarray, dict[str, float] | None, bool]:
    """One FedAvg round from `vec`: the non-forgetting clients train; the forgetting client
    trains too (`with_forgetter`, as during O), runs its engine, or sits out."""
    updates: list[tuple[np.ndarray, int]] = []
    info, done = None, True
    f = bed.cfg.forget_client
    if engine is not None:
        total = sum(len(bed.local[i].y_train) for i in range(bed.cfg.clients))
        started = time.perf_counter()
        step = engine.step(
            vec,
            bed.forget.x_train,
            bed.forget.y_train,
            bed.forget.x_held_out,
            bed.forget.y_held_out,
            bed.forget.x_train[:0],
            bed.forget.y_train[:0],
            r,
            total_weight=total,
        )
        cost.seconds += time.perf_counter() - started
        cost.evals += step.gradient_evaluations
        cost.forgetter += step.gradient_evaluations
        info, done = step.metrics, step.done
        if step.num_samples > 0:
            updates.append((step.update, step.num_samples))
            cost.uploads += 1
        else:
            # The forgetting client sat the round out: for the others it is a recovery round.
            engine = None
    clients = bed.others() + ([f] if with_forgetter else [])
    for i in sorted(clients):
        load_vector(bed.model, vec)
        started = time.perf_counter()
        res = train_local(
            bed.model,
            bed.local[i].x_train,
            bed.local[i].y_train,
            bed.train,
            client_round_seed(bed.seed, i, r),
        )
        cost.seconds += time.perf_counter() - started
        cost.evals += res.gradient_evaluations
        cost.concurrent += res.gradient_evaluations if engine is not None else 0
        cost.uploads += 1
        updates.append((res.delta, res.num_samples))
        if i == f:
            bed.last_forgetter_update = res.delta
    cost.rounds += 1
    return apply_update(vec, weighted_average(updates)), info, done


def _train_original(bed: _Bed) -> np.ndarray:
    vec = flatten(bed.model.state_dict())
    for r in range(1, bed.cfg.rounds + 1):
        vec, _, _ = _round(bed, vec, r, _Cost(), with_forgetter=True)
    return vec


def _unlearn(
    bed: _Bed, start: np.ndarray, engine: ForgetEngine, max_rounds: int, recovery: int
) -> tuple[np.ndarray, _Cost, list[dict[str, float]], tuple[np.ndarray, _Cost]]:
    """Unlearning rounds until the engine says done (or `max_rounds`), then recovery rounds.

    Also returns the model and cost as they stood before the first recovery round."""
    cost, log = _Cost(), []
    vec, r = start, bed.cfg.rounds
    for _ in range(max_rounds):
        r += 1
        vec, info, done = _round(bed, vec, r, cost, engine=engine)
        log.append(info or {})
        if done:
            break
    before_recovery = (vec, replace(cost))
    for _ in range(recovery):
        r += 1
        vec, _, _ = _round(bed, vec, r, cost)
    return vec, cost, log, before_recovery


def _normal(
    bed: _Bed, start: np.ndarray, first_round: int, rounds: int
) -> tuple[np.ndarray, _Cost]:
    cost, vec = _Cost(), start
    for r in range(first_round, first_round + rounds):
        vec, _, _ = _round(bed, vec, r, cost)
    return vec, cost


def _report(bed: _Bed, vec: np.ndarray, ref: dict[str, np.ndarray], cost: _Cost) -> ModelReport:
    """Every metric of model `vec` against the probes `ref` (R's outputs and O's members)."""
    load_vector(bed.model, vec)
    out = {k: M.model_outputs(bed.model, x) for k, x in _probes(bed).items()}
    forget_losses = M.per_sample_losses(out["forget"], bed.forget.y_train)
    test_losses = M.per_sample_losses(out["test"], bed.ds.y_test)
    side = np.concatenate([out["forget"], out["trig"]])
    return ModelReport(
        accuracy=M.accuracy(out["test"], bed.ds.y_test),
        asr=M.attack_success_rate(out["trig"], bed.cfg.target),
        kl_forget=M.kl_divergence(M.softmax(ref["side"]), M.softmax(side)),
        mia_auc=M.mia_auc(forget_losses, test_losses),
        mia_tpr_1fpr=M.tpr_at_fpr(forget_losses, test_losses, 0.01),
        forgetting_rate=M.forgetting_rate(
            ref["members_o"], M.oracle_members(forget_losses, test_losses)
        ),
        grad_evals=cost.evals,
        grad_evals_unlearning=cost.evals - cost.concurrent,
        grad_evals_forgetter=cost.forgetter,
        rounds=cost.rounds,
        bytes_up=cost.uploads * bed.upload_bytes(),
        seconds=cost.seconds,
    )


def _probes(bed: _Bed) -> dict[str, np.ndarray]:
    return {"forget": bed.forget.x_train, "trig": bed.trig_x, "test": bed.ds.x_test}


def _reference_outputs(bed: _Bed, r_vec: np.ndarray, o_vec: np.ndarray) -> dict[str, np.ndarray]:
    load_vector(bed.model, r_vec)
    side = M.model_outputs(bed.model, np.concatenate([bed.forget.x_train, bed.trig_x]))
    load_vector(bed.model, o_vec)
    forget = M.per_sample_losses(M.model_outputs(bed.model, bed.forget.x_train), bed.forget.y_train)
    test = M.per_sample_losses(M.model_outputs(bed.model, bed.ds.x_test), bed.ds.y_test)
    return {"side": side, "members_o": M.oracle_members(forget, test)}


def run_seed(cfg: ProtocolConfig, seed: int) -> tuple[dict[str, ModelReport], dict[str, object]]:
    """Every model of the protocol for one seed: O, U, U+10, pga, finetune, R, R'."""
    torch.set_num_threads(1)  # bit-determinism: the same seed gives the same numbers
    bed = _bed(cfg, seed)
    o_vec = _train_original(bed)
    forget_ids = bed.forget.ids_train.tolist()
    r_sim = run_fedavg(
        bed.ds, cfg.clients, cfg.rounds, seed=seed, train_cfg=bed.train, forget_ids=forget_ids
    )
    r2_sim = run_fedavg(
        bed.ds,
        cfg.clients,
        cfg.rounds,
        seed=seed + R_PRIME_SEED_OFFSET,
        train_cfg=bed.train,
        forget_ids=forget_ids,
    )
    ref = _reference_outputs(bed, r_sim.final_vector, o_vec)
    r_cost = _Cost(
        evals=r_sim.gradient_evaluations,
        rounds=cfg.rounds,
        uploads=cfg.rounds * len(bed.others()),
        seconds=r_sim.train_seconds,
    )

    fcfg = replace(cfg.forsaken, seed=seed, expected_clients=cfg.clients)
    u_vec, u_cost, u_log, (u0_vec, u0_cost) = _unlearn(
        bed, o_vec, ForsakenEngine(bed.spec, fcfg), fcfg.max_rounds, cfg.recovery_rounds
    )
    u10_vec, extra = _normal(bed, u_vec, cfg.rounds + u_cost.rounds + 1, cfg.further_rounds)
    u10_cost = replace(
        extra,
        evals=extra.evals + u_cost.evals,
        rounds=extra.rounds + u_cost.rounds,
        concurrent=u_cost.concurrent,
        forgetter=u_cost.forgetter,
        uploads=extra.uploads + u_cost.uploads,
        seconds=extra.seconds + u_cost.seconds,
    )
    share = len(bed.forget.y_train) / sum(len(d.y_train) for d in bed.local)
    pga = PGAEngine(
        bed.spec,
        replace(cfg.pga, seed=seed, expected_clients=cfg.clients),
        last_update=bed.last_forgetter_update,
        last_weight_share=share,
    )
    p_vec, p_cost, p_log, _ = _unlearn(bed, o_vec, pga, 1, cfg.pga_recovery_rounds)
    ft_vec, ft_cost = _normal(bed, o_vec, cfg.rounds + 1, u_cost.rounds)
    models: dict[str, tuple[np.ndarray, _Cost]] = {
        "O": (o_vec, _Cost()),
        "U0": (u0_vec, u0_cost),
        "U": (u_vec, u_cost),
        "U+10": (u10_vec, u10_cost),
        "R": (r_sim.final_vector, r_cost),
        "R'": (r2_sim.final_vector, r_cost),
        "finetune": (ft_vec, ft_cost),
        "pga": (p_vec, p_cost),
    }
    reports = {name: _report(bed, vec, ref, cost) for name, (vec, cost) in models.items()}
    return reports, {"forsaken_rounds": u_log, "pga": p_log}


def summarize(
    per_seed: Sequence[dict[str, ModelReport]],
) -> dict[str, dict[str, tuple[float, float]]]:
    """Mean and (population) std over seeds of every metric of every model."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name in per_seed[0]:
        rows = [asdict(seed_reports[name]) for seed_reports in per_seed]
        out[name] = {
            k: (float(np.mean([r[k] for r in rows])), float(np.std([r[k] for r in rows])))
            for k in rows[0]
        }
    return out


def check_bars(summary: dict[str, dict[str, tuple[float, float]]], dataset: str) -> dict[str, bool]:
    """docs/evaluation.md's bars on the seed means (validity thresholds per the issue's table)."""
    m: Callable[[str, str], float] = lambda model, key: summary[model][key][0]  # noqa: E731
    o_bar = {"mnist5k": 0.80, "digits": 0.50}.get(dataset, 0.80)
    return {
        "valid_O_asr": m("O", "asr") >= o_bar,
        "valid_R_asr": m("R", "asr") <= 0.05,
        "asr_U": m("U", "asr") <= m("R", "asr") + 0.02,
        "asr_U+10": m("U+10", "asr") <= m("R", "asr") + 0.02,
        "acc_U": abs(m("U", "accuracy") - m("R", "accuracy")) <= 0.01,
        "kl_U": m("U", "kl_forget") <= 3 * m("R'", "kl_forget"),
        "mia_U": abs(m("U", "mia_auc") - m("R", "mia_auc")) <= 0.03,
        "cost_U": m("U", "grad_evals_unlearning") <= m("R", "grad_evals") / 10,
        "cost_U_strict": m("U", "grad_evals") <= m("R", "grad_evals") / 10,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--local-epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--recovery-rounds", type=int, default=1)
    p.add_argument("--json", help="write the full per-seed and summary result here")
    a = p.parse_args(argv)
    cfg = ProtocolConfig(
        dataset=a.dataset,
        rounds=a.rounds,
        clients=a.clients,
        local_epochs=a.local_epochs,
        seeds=tuple(range(a.seeds)),
        recovery_rounds=a.recovery_rounds,
    )
    started = time.perf_counter()
    runs = [run_seed(cfg, s) for s in cfg.seeds]
    summary = summarize([r for r, _ in runs])
    bars = check_bars(summary, cfg.dataset)
    print(format_table(summary))
    print("bars:", " ".join(f"{k}={'PASS' if v else 'FAIL'}" for k, v in bars.items()))
    print(f"wall {time.perf_counter() - started:.0f}s")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(
                {
                    "config": repr(cfg),
                    "summary": summary,
                    "bars": bars,
                    "per_seed": [{k: asdict(v) for k, v in r.items()} for r, _ in runs],
                    "logs": [log for _, log in runs],
                },
                fh,
                indent=1,
            )


_COLUMNS = (
    "accuracy",
    "asr",
    "kl_forget",
    "mia_auc",
    "mia_tpr_1fpr",
    "forgetting_rate",
    "grad_evals_unlearning",
    "grad_evals",
    "rounds",
)


def format_table(summary: dict[str, dict[str, tuple[float, float]]]) -> str:
    """A markdown table of mean ± std per model."""
    lines = ["| model | " + " | ".join(_COLUMNS) + " |", "|---" * (len(_COLUMNS) + 1) + "|"]
    for name, row in summary.items():
        cells = [f"{row[c][0]:.4g} ± {row[c][1]:.2g}" for c in _COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
