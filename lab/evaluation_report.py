"""The report of `forsaken evaluate`: aggregation over seeds, the bars, evaluation.json and its
detail file, the PNG and the rich tables.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forsaken.lab.evaluation_scoring import COST_BASIS, JSON_NAMES, METRICS, Cost

if TYPE_CHECKING:
    from rich.console import Console

    from forsaken.lab.evaluation_run import ForgetRun
    from forsaken.lab.evaluation_scoring import UnlearningCost

FURTHER_ROUNDS = 10  # the protocol's U+10 (the key `unlearned_after_10_rounds` names it)

# evaluation.json model keys, and the in-process runner's names for the same models.
REFERENCE_NAMES = {
    "original": "O",
    "unlearned": "U",
    "unlearned_after_10_rounds": "U+10",
    "retrained": "R",
    "retrained_alt": "R'",
    "finetune": "finetune",
    "pga": "pga",
    "fedquit": "fedquit",
    "not": "not",
}
MODEL_KEYS = tuple(REFERENCE_NAMES)
# Models that come from the daemons; the others from the in-process runner.
DISTRIBUTED = ("original", "unlearned", "unlearned_after_10_rounds")
BASELINE_KEYS = ("finetune", "pga", "fedquit", "not")
COST_KEYS = ("unlearned", "retrained", "pga", "fedquit", "not")
FIELD_OF = {json_name: field for field, json_name in JSON_NAMES.items()}


@dataclass
class SeedResult:
    seed: int
    scores: dict[str, dict[str, float | None]]  # by evaluation.json model key, then metric
    cost: dict[str, Cost]
    unlearning: UnlearningCost
    run: ForgetRun
    in_process: dict[str, dict[str, float | None]]  # the in-process O, U and U+10
    notes: list[str]
    ulira: dict[str, float] | None = None


# ---- summary, bars and output ---------------------------------------------------------------


def summarize_models(results: Sequence[SeedResult]) -> dict[str, dict[str, float | None]]:
    """Mean and population std over seeds of every metric of every model (None: not measured
    on this test bed, e.g. ASR without a trigger)."""
    out: dict[str, dict[str, float | None]] = {}
    for key in results[0].scores:
        row: dict[str, float | None] = {}
        for metric in METRICS:
            values = [res.scores[key][metric] for res in results]
            measured = [v for v in values if v is not None]
            if len(measured) < len(values):
                row[metric] = row[f"{metric}_std"] = None
            else:
                row[metric] = float(np.mean(measured))
                row[f"{metric}_std"] = float(np.std(measured))
        out[key] = row
    return out


def summarize_cost(results: Sequence[SeedResult]) -> dict[str, dict[str, float]]:
    keys = [k for k in COST_KEYS if k in results[0].cost]
    return {
        key: {
            name: float(np.mean([getattr(res.cost[key], name) for res in results]))
            for name in Cost.__dataclass_fields__
        }
        for key in keys
    }


def bars(
    models: dict[str, dict[str, float | None]],
    cost: dict[str, dict[str, float]],
    strict_grad_evals: float,
    dataset: str,
    secure: bool,
) -> dict[str, dict[str, Any]]:
    """Which bars pass, with the numbers compared (means over seeds): the in-process runner's
    own `reference.bars`, applied to U from the daemons."""
    from forsaken.lab.reference import bars as reference_bars

    summary: dict[str, dict[str, tuple[float, float] | None]] = {}
    for key, row in models.items():
        summary[REFERENCE_NAMES[key]] = {
            FIELD_OF[metric]: (None if (value := row[metric]) is None else (float(value), 0.0))
            for metric in METRICS
        }
    summary["U"]["grad_evals_unlearning"] = (cost["unlearned"]["client_grad_evals"], 0.0)
    summary["U"]["grad_evals"] = (strict_grad_evals, 0.0)
    summary["R"]["grad_evals"] = (cost["retrained"]["client_grad_evals"], 0.0)
    out: dict[str, dict[str, Any]] = {
        name: {"pass": bar.passed, "value": bar.value, "limit": bar.limit, "rule": bar.rule}
        for name, bar in reference_bars(summary, dataset).items()
    }
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
    out: dict[str, Any] = {
        "dataset": args.dataset,
        "scenario": args.scenario,
        "architecture": args.architecture or None,
        "method": args.method,
        "clients": args.clients,
        "rounds": args.rounds,
        "seeds": [res.seed for res in results],
        "shadow_models": args.shadows,
        "secure_aggregation": secure,
        "models": models,
        "cost": cost,
        "bars": bars(models, cost, strict, args.dataset, secure),
    }
    ulira = [res.ulira for res in results if res.ulira]
    if ulira:
        # U-LiRA of the in-process runner's forsaken (the shadows themselves unlearned).
        out["ulira"] = {k: float(np.mean([u[k] for u in ulira])) for k in ulira[0]} | {
            "per_seed": ulira
        }
    return out


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
            "scenario": args.scenario,
            "architecture": args.architecture or None,
            "shadows": args.shadows,
        },
        "cost_basis": COST_BASIS,
        "per_seed": [
            {
                "seed": res.seed,
                "notes": res.notes,
                "scores": res.scores,
                "in_process": res.in_process,
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
    first = models[order[0]]
    third = next((m for m in ("asr", "flip_rate") if first.get(m) is not None), "conf_auc")
    titles = {
        "asr": "attack success rate",
        "flip_rate": "flipped labels still given",
        "conf_auc": "confidence-MIA AUC",
        "lira_auc": "LiRA AUC (per-example)",
        "mia_auc": "loss-MIA AUC",
    }
    second = "lira_auc" if first.get("lira_auc") is not None else "mia_auc"
    panels = (("test_acc", "test accuracy"), (second, titles[second]), (third, titles[third]))
    for ax, (metric, title) in zip(axes.flat, panels, strict=False):
        means = [float(models[k][metric] or 0.0) for k in order]
        stds = [float(models[k][f"{metric}_std"] or 0.0) for k in order]
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
        f"forsaken evaluate --scenario {report['scenario']}: {report['dataset']}, "
        f"{report['clients']} clients, "
        f"T={report['rounds']}, seeds {report['seeds']} (blue: daemons, grey: in-process)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_HEADERS = {
    "test_acc": "acc",
    "asr": "ASR",
    "flip_rate": "flip",
    "kl_forget": "KL(R‖·)",
    "mia_auc": "loss AUC",
    "conf_auc": "conf AUC",
    "lira_auc": "LiRA AUC",
    "lira_tpr_at_1pct_fpr": "LiRA TPR@1%",
    "lira_tpr_at_0.1pct_fpr": "LiRA TPR@0.1%",
    "lira_recentred_auc": "LiRA-rc AUC",
}


def print_tables(report: dict[str, Any], console: Console) -> None:
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"models: mean ± std over seeds {report['seeds']}",
        caption="* from the daemons (secure aggregation); the others from the in-process runner",
        box=box.SIMPLE_HEAD,
    )
    models = report["models"]
    shown = [m for m in _HEADERS if any(row.get(m) is not None for row in models.values())]
    table.add_column("model")
    for metric in shown:
        table.add_column(_HEADERS[metric], justify="right")
    for key in MODEL_KEYS:
        if key not in models:
            continue
        row = models[key]
        cells = ["-" if row[m] is None else f"{row[m]:.3f}\n±{row[f'{m}_std']:.3f}" for m in shown]
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

    if "ulira" in report:
        u = report["ulira"]
        console.print(
            f"U-LiRA (in-process forsaken, shadows unlearned): forgetting score F "
            f"{u['ulira_forgetting_score']:.3f} (1 = no sample leaks; two halves of the "
            f"never-trained shadows give {u['ulira_floor_forgetting_score']:.3f})"
        )
    verdicts = Table(title="bars (means over seeds)", box=box.SIMPLE_HEAD)
    verdicts.add_column("bar")
    for col in ("value", "limit", ""):
        verdicts.add_column(col, justify="right")
    for bar in report["bars"].values():
        value = "" if bar["value"] is None else f"{bar['value']:.4g}"
        limit = "" if bar["limit"] is None else f"{bar['limit']:.4g}"
        verdict = "[green]PASS[/green]" if bar["pass"] else "[red]FAIL[/red]"
        verdicts.add_row(bar["rule"], value, limit, verdict)
    console.print(verdicts)
