"""The report of `forsaken evaluate`: aggregation over seeds, docs/evaluation.md's bars,
evaluation.json and its detail file, the PNG and the rich tables.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forsaken.evaluation_scoring import COST_BASIS, METRICS, Cost

if TYPE_CHECKING:
    from rich.console import Console

    from forsaken.evaluation_run import ForgetRun
    from forsaken.evaluation_scoring import Scores, UnlearningCost

FURTHER_ROUNDS = 10  # the protocol's U+10 (the key `unlearned_after_10_rounds` names it)

# evaluation.json model keys, and reference.py's names for the same models.
MODEL_KEYS = (
    "original",
    "unlearned",
    "retrained",
    "retrained_alt",
    "finetune",
    "pga",
    "unlearned_after_10_rounds",
)
REFERENCE_NAMES = {
    "original": "O",
    "unlearned": "U",
    "unlearned_after_10_rounds": "U+10",
    "retrained": "R",
    "retrained_alt": "R'",
    "finetune": "finetune",
    "pga": "pga",
}
# Models that come from the daemons; the others from the in-process runner.
DISTRIBUTED = ("original", "unlearned", "unlearned_after_10_rounds")
COST_KEYS = ("unlearned", "retrained", "pga")


@dataclass
class SeedResult:
    seed: int
    scores: dict[str, Scores]  # by evaluation.json model key
    cost: dict[str, Cost]
    unlearning: UnlearningCost
    run: ForgetRun
    in_process: dict[str, Scores]  # the in-process O, U and U+10, for comparison
    notes: list[str]


# ---- summary, bars and output ---------------------------------------------------------------


def summarize_models(results: Sequence[SeedResult]) -> dict[str, dict[str, float]]:
    """Mean and population std over seeds of every metric of every model."""
    out: dict[str, dict[str, float]] = {}
    for key in MODEL_KEYS:
        row: dict[str, float] = {}
        for metric in METRICS:
            values = [getattr(res.scores[key], metric) for res in results]
            row[metric] = float(np.mean(values))
            row[f"{metric}_std"] = float(np.std(values))
        out[key] = row
    return out


def summarize_cost(results: Sequence[SeedResult]) -> dict[str, dict[str, float]]:
    return {
        key: {
            name: float(np.mean([getattr(res.cost[key], name) for res in results]))
            for name in Cost.__dataclass_fields__
        }
        for key in COST_KEYS
    }


# docs/evaluation.md's margins, as reference.check_bars applies them; `bars` checks both agree.
ASR_MARGIN = 0.02
ACC_MARGIN = 0.01
KL_FACTOR = 3.0
AUC_MARGIN = 0.03
COST_FACTOR = 10.0
R_ASR_CEILING = 0.05
O_ASR_FLOOR = {"mnist5k": 0.80, "digits": 0.50}  # validity; reference.check_bars' table


def bars(
    models: dict[str, dict[str, float]],
    cost: dict[str, dict[str, float]],
    strict_grad_evals: float,
    dataset: str,
    secure: bool,
) -> dict[str, dict[str, Any]]:
    """Which bars of docs/evaluation.md pass, with the numbers compared (means over seeds).

    Pass/fail comes from `reference.check_bars` on the same numbers; the limits shown here are
    checked against its verdicts, so the two cannot silently disagree."""
    from forsaken.common.unlearning.reference import check_bars

    m = {k: {f: (v, 0.0) for f, v in row.items()} for k, row in models.items()}
    summary = {
        "O": {"asr": m["original"]["asr"]},
        "R": {
            "accuracy": m["retrained"]["test_acc"],
            "asr": m["retrained"]["asr"],
            "mia_auc": m["retrained"]["mia_auc"],
            "grad_evals": (cost["retrained"]["client_grad_evals"], 0.0),
        },
        "R'": {"kl_forget": m["retrained_alt"]["kl_forget"]},
        "U": {
            "accuracy": m["unlearned"]["test_acc"],
            "asr": m["unlearned"]["asr"],
            "kl_forget": m["unlearned"]["kl_forget"],
            "mia_auc": m["unlearned"]["mia_auc"],
            "grad_evals_unlearning": (cost["unlearned"]["client_grad_evals"], 0.0),
            "grad_evals": (strict_grad_evals, 0.0),
        },
        "U+10": {"asr": m["unlearned_after_10_rounds"]["asr"]},
    }
    verdicts = check_bars(summary, dataset)
    o, u, u10 = models["original"], models["unlearned"], models["unlearned_after_10_rounds"]
    r, r2 = models["retrained"], models["retrained_alt"]
    retrain_evals = cost["retrained"]["client_grad_evals"]
    rows: dict[str, tuple[str, float, float, bool]] = {
        # name: (rule, value, limit, value >= limit rather than <=)
        "valid_O_asr": (
            "validity: ASR(O) >= floor",
            o["asr"],
            O_ASR_FLOOR.get(dataset, 0.80),
            True,
        ),
        "valid_R_asr": ("validity: ASR(R) <= ceiling", r["asr"], R_ASR_CEILING, False),
        "asr_U": ("ASR(U) <= ASR(R) + 0.02", u["asr"], r["asr"] + ASR_MARGIN, False),
        "asr_U+10": ("ASR(U+10) <= ASR(R) + 0.02", u10["asr"], r["asr"] + ASR_MARGIN, False),
        "acc_U": (
            "|acc(U) - acc(R)| <= 0.01",
            abs(u["test_acc"] - r["test_acc"]),
            ACC_MARGIN,
            False,
        ),
        "kl_U": (
            "KL(R‖U) <= 3 KL(R‖R')",
            u["kl_forget"],
            KL_FACTOR * r2["kl_forget"],
            False,
        ),
        "mia_U": ("|AUC(U) - AUC(R)| <= 0.03", abs(u["mia_auc"] - r["mia_auc"]), AUC_MARGIN, False),
        "cost_U": (
            "grad evals (counted) <= R/10",
            cost["unlearned"]["client_grad_evals"],
            retrain_evals / COST_FACTOR,
            False,
        ),
        "cost_U_strict": (
            "grad evals (strict) <= R/10",
            strict_grad_evals,
            retrain_evals / COST_FACTOR,
            False,
        ),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, (rule, value, limit, at_least) in rows.items():
        mine = value >= limit if at_least else value <= limit
        if mine != verdicts[name]:
            raise RuntimeError(f"bar {name}: {value} vs {limit} disagrees with check_bars")
        out[name] = {"pass": bool(verdicts[name]), "value": value, "limit": limit, "rule": rule}
    missing = set(verdicts) - set(out)
    if missing:
        raise RuntimeError(f"check_bars has bars this report does not show: {sorted(missing)}")
    out["no_client_update_history"] = {
        "pass": secure,
        "value": None,
        "limit": None,
        "rule": "no per-client update history on the server (secure aggregation)",
    }
    return out


def evaluation_json(args: argparse.Namespace, results: Sequence[SeedResult]) -> dict[str, Any]:
    models = summarize_models(results)
    cost = summarize_cost(results)
    strict = float(np.mean([res.unlearning.strict_grad_evals for res in results]))
    secure = all(res.run.secure_aggregation for res in results)
    return {
        "dataset": args.dataset,
        "clients": args.clients,
        "rounds": args.rounds,
        "seeds": [res.seed for res in results],
        "secure_aggregation": secure,
        "models": models,
        "cost": cost,
        "bars": bars(models, cost, strict, args.dataset, secure),
    }


def detail_json(args: argparse.Namespace, results: Sequence[SeedResult]) -> dict[str, Any]:
    return {
        "command": "forsaken evaluate " + " ".join(sys.argv[2:]),
        "config": {
            "dataset": args.dataset,
            "clients": args.clients,
            "rounds": args.rounds,
            "local_epochs": args.local_epochs,
            "recovery_rounds": args.recovery_rounds,
            "further_rounds": FURTHER_ROUNDS,
            "method": args.method,
        },
        "cost_basis": COST_BASIS,
        "per_seed": [
            {
                "seed": res.seed,
                "notes": res.notes,
                "scores": {k: asdict(v) for k, v in res.scores.items()},
                "in_process": {k: asdict(v) for k, v in res.in_process.items()},
                "cost": {k: asdict(v) for k, v in res.cost.items()},
                "unlearning_cost": asdict(res.unlearning),
                "rounds": {
                    "trained": res.run.trained_rounds,
                    "forget_started_after": res.run.forget_round,
                    "unlearned": res.run.unlearned_round,
                    "after": res.run.after_round,
                },
                "receipt": res.run.receipt,
                "forget_steps": res.run.steps,
                "seconds": res.run.seconds,
                "ledger": [
                    {
                        k: r[k]
                        for k in (
                            "round",
                            "attempt",
                            "test_acc",
                            "total_samples",
                            "duration_s",
                            "model_sha256",
                        )
                    }
                    | {"participants": len(r["participants"])}
                    for r in res.run.rounds
                ],
            }
            for res in results
        ],
    }


def plot(report: dict[str, Any], results: Sequence[SeedResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    order = [k for k in REFERENCE_NAMES if k in models]
    labels = [REFERENCE_NAMES[k] for k in order]
    colors = ["#4c72b0" if k in DISTRIBUTED else "#999999" for k in order]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = (("test_acc", "test accuracy"), ("asr", "attack success rate"), ("mia_auc", "MIA AUC"))
    for ax, (metric, title) in zip(axes.flat, panels, strict=False):
        means = [models[k][metric] for k in order]
        stds = [models[k][f"{metric}_std"] for k in order]
        ax.bar(labels, means, yerr=stds, color=colors, capsize=3)
        ax.set_title(title)
        ax.set_ylim(0, 1.05)
        ax.grid(True, axis="y", alpha=0.3)
        for i, v in enumerate(means):
            ax.text(i, min(v + 0.02, 1.0), f"{v:.3f}", ha="center", fontsize=7)
    ax = axes.flat[3]
    for res in results:
        last = res.run.after_round or res.run.unlearned_round
        rounds = [r for r in res.run.rounds if 0 < r["round"] <= last]
        ax.plot(
            [r["round"] for r in rounds],
            [r["test_acc"] for r in rounds],
            marker=".",
            linewidth=1,
            label=f"seed {res.seed}",
        )
    first = results[0].run
    ax.axvline(first.forget_round + 0.5, color="red", linestyle="--", label="ForgetMe")
    ax.axvspan(first.forget_round + 0.5, first.unlearned_round + 0.5, color="red", alpha=0.08)
    ax.axvline(first.unlearned_round, color="green", linestyle=":", label="U (receipt)")
    if first.after_round is not None:
        ax.axvline(first.after_round, color="purple", linestyle=":", label="U+10")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (server, per round)")
    ax.set_title("accuracy before and after the request (daemons)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(
        f"forsaken evaluate: {report['dataset']}, {report['clients']} clients, "
        f"T={report['rounds']}, seeds {report['seeds']} (blue: daemons, grey: in-process)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_HEADERS = {
    "test_acc": "acc",
    "asr": "ASR",
    "mia_auc": "MIA AUC",
    "mia_tpr_at_1fpr": "TPR@1%FPR",
    "kl_forget": "KL(R‖·)",
    "fr": "FR",
}


def print_tables(report: dict[str, Any], console: Console) -> None:
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"models: mean ± std over seeds {report['seeds']}",
        caption="* from the daemons (secure aggregation); the others from the in-process runner",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("model")
    for metric in METRICS:
        table.add_column(_HEADERS[metric], justify="right")
    for key in MODEL_KEYS:
        row = report["models"][key]
        cells = [f"{row[m]:.3f}\n±{row[f'{m}_std']:.3f}" for m in METRICS]
        mark = "*" if key in DISTRIBUTED else ""
        table.add_row(f"{REFERENCE_NAMES[key]}{mark}", *cells)
    console.print(table)

    costs = Table(title="cost after ForgetMe (mean over seeds)", box=box.SIMPLE_HEAD)
    for col in ("", "client grad evals", "wall s", "bytes up"):
        costs.add_column(col, justify="right")
    for key, row in report["cost"].items():
        costs.add_row(
            REFERENCE_NAMES[key],
            f"{row['client_grad_evals']:,.0f}",
            f"{row['wall_s']:.1f}",
            f"{row['bytes_up'] / 1e6:.2f} MB",
        )
    console.print(costs)

    verdicts = Table(title="bars of docs/evaluation.md (means over seeds)", box=box.SIMPLE_HEAD)
    verdicts.add_column("bar")
    for col in ("value", "limit", ""):
        verdicts.add_column(col, justify="right")
    for bar in report["bars"].values():
        value = "" if bar["value"] is None else f"{bar['value']:.4g}"
        limit = "" if bar["limit"] is None else f"{bar['limit']:.4g}"
        verdict = "[green]PASS[/green]" if bar["pass"] else "[red]FAIL[/red]"
        verdicts.add_row(bar["rule"], value, limit, verdict)
    console.print(verdicts)
