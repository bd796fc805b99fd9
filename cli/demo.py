"""`forsaken demo`: one server and N clients as separate OS processes on loopback.

Client 0 holds the backdoor test bed (`forsaken client --test-bed backdoor`). After the
training rounds its owner asks the federation to forget all its data (ForgetMe); the demo
follows the request to its receipt and then stops. The federation restarts between the two
phases (from its ledger and checkpoints), so that the request is on record before round T + 1
can start; see `forsaken.evaluation_run.train_then_forget`.

Shows progress per round, prints a table of per-round accuracy and a before/after table of O
(after training), U (after forgetting) and R (retrained without client 0's data, in process,
same seed), and writes report.json and accuracy.png to --out. Every child is torn down on exit,
on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from forsaken.common.certs import init_federation
from forsaken.common.forget_methods import METHOD_NAMES
from forsaken.evaluation_run import (
    FORGETTER,
    Federation,
    FederationConfig,
    FederationError,
    ForgetRun,
    train_then_forget,
)
from forsaken.evaluation_scoring import Scorer


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="mnist5k",
        help="digits, mnist5k or an .npz path (default: %(default)s)",
    )
    p.add_argument(
        "--clients", type=int, default=5, help="number of client processes (default: %(default)s)"
    )
    p.add_argument("--rounds", type=int, default=10, help="training rounds (default: %(default)s)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("demo-out"),
        help="output directory, replaced if it exists (default: %(default)s)",
    )
    p.add_argument(
        "--scheme",
        choices=("iid", "dirichlet"),
        default="iid",
        help="partition scheme (default: %(default)s)",
    )
    p.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet alpha (default: %(default)s)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for model, partitions and training (default: %(default)s)",
    )
    p.add_argument("--architecture", default="", help="mlp or cnn (default: the dataset's default)")
    p.add_argument(
        "--local-epochs",
        type=int,
        default=None,
        help="local epochs per round (default: the server's default)",
    )
    p.add_argument(
        "--round-timeout",
        type=float,
        default=60.0,
        help="round deadline in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--port", type=int, default=0, help="server port on 127.0.0.1 (default: a free port)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="give up after this many seconds (default: %(default)s)",
    )
    p.add_argument(
        "--forget-method",
        default="forsaken",
        choices=METHOD_NAMES,
        help="how the federation forgets client 0's data after training (default: %(default)s)",
    )


def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    if args.clients < 2:
        console.print("[red]--clients must be >= 2: client 0 forgets, the others remain[/red]")
        return 2
    if args.rounds < 1:
        console.print("[red]--rounds must be >= 1[/red]")
        return 2
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    pki = init_federation(out / "pki", ["localhost"], args.clients, operators=("admin",))
    fed = Federation(
        out,
        pki,
        FederationConfig(
            dataset=args.dataset,
            clients=args.clients,
            seed=args.seed,
            local_epochs=args.local_epochs,
            round_timeout_s=args.round_timeout,
            architecture=args.architecture,
            scheme=args.scheme,
            alpha=args.alpha,
            port=args.port,
            method=args.forget_method,
            test_bed="backdoor",
        ),
    )
    started = time.monotonic()
    try:
        console.print(
            f"server on {fed.address}, {args.clients} clients (client 0 with the backdoor), "
            f"dataset {args.dataset}; logs in {out / 'logs'}"
        )
        run = _follow(fed, args, console)
        vectors = {
            "O": fed.model(run.sha(run.forget_round)),
            "U": fed.model(run.sha(run.unlearned_round)),
        }
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopping all processes[/yellow]")
        return 130
    except FederationError as exc:
        console.print(f"[red]{exc}[/red]")
        return 1
    finally:
        fed.stop()
    models, note = _compare(vectors, args, console)
    report = _report(run, models, note, args, time.monotonic() - started)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, out / "accuracy.png")
    _table(report, console)
    console.print(f"report: {out / 'report.json'}, plot: {out / 'accuracy.png'}")
    return 0


def _follow(fed: Federation, args: argparse.Namespace, console: Console) -> ForgetRun:
    with Progress(
        TextColumn("[bold]rounds"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("waiting for clients", total=args.rounds)

        def on_round(r: dict[str, Any]) -> None:
            progress.console.print(
                f"round {r['round']:3d}: acc {r['test_acc']:.4f}  participants "
                f"{len(r['participants'])}  {r['duration_s']:.2f}s"
            )
            done = int(r["round"])
            progress.update(bar, completed=done, total=max(args.rounds, done))

        def on_event(text: str) -> None:
            progress.console.print(f"[bold]{text}[/bold]")
            progress.update(bar, description=text.split(";")[0])

        return train_then_forget(fed, args.rounds, 0, args.timeout, on_round, on_event)


def _compare(
    vectors: dict[str, np.ndarray], args: argparse.Namespace, console: Console
) -> tuple[dict[str, dict[str, float]], str]:
    """O, U and (where the in-process runner can reproduce this federation's data) R."""
    from forsaken.common.training import TrainConfig
    from forsaken.common.unlearning.reference import ProtocolConfig

    cfg = ProtocolConfig(
        dataset=args.dataset,
        rounds=args.rounds,
        clients=args.clients,
        local_epochs=args.local_epochs or TrainConfig().local_epochs,
        seeds=(args.seed,),
        forget_client=FORGETTER,
    )
    scorer = Scorer(cfg, args.seed)
    note = ""
    if args.scheme != "iid" or args.architecture:
        # The in-process runner partitions IID with the dataset's default architecture.
        note = "R skipped: the in-process runner covers only --scheme iid and the default model"
        scorer.anchor(vectors["O"], vectors["O"])
    else:
        with console.status("retraining without client 0's data in process (R)"):
            r_vec = scorer.retrain()
        scorer.anchor(r_vec, vectors["O"])
        vectors = {**vectors, "R": r_vec}
    return {name: asdict(scorer.score(vec)) for name, vec in vectors.items()}, note


def _report(
    run: ForgetRun,
    models: dict[str, dict[str, float]],
    note: str,
    args: argparse.Namespace,
    wall_s: float,
) -> dict[str, Any]:
    rounds = [
        {
            "round": r["round"],
            "test_acc": r["test_acc"],
            "participants": len(r["participants"]),
            "duration_s": round(r["duration_s"], 4),
        }
        for r in run.rounds
        if r["round"] > 0
    ]
    receipt = run.receipt
    return {
        "dataset": args.dataset,
        "clients": args.clients,
        "rounds": rounds,
        "aborted_attempts": [{"round": r["round"], "reason": r["reason"]} for r in run.aborted],
        # The last round that closed before the demo stopped (U's, or one after it).
        "final": {
            "test_acc": rounds[-1]["test_acc"] if rounds else None,
            "round": rounds[-1]["round"] if rounds else None,
        },
        "secure_aggregation": run.secure_aggregation,
        "model_sha256": run.sha(run.unlearned_round),
        "wall_s": round(wall_s, 2),
        "forget": {
            "client": FORGETTER,
            "method": receipt["method"],
            "requested_after_round": run.forget_round,
            "unlearning_rounds": receipt["unlearning_rounds"],
            "recovery_rounds": receipt["recovery_rounds"],
            "unlearned_round": run.unlearned_round,
            "model_sha256_before": receipt["model_sha256_before"],
            "model_sha256_after": receipt["model_sha256_after"],
            "evidence": receipt["evidence"],
            "models": models,  # O, U and R: test_acc, asr, mia_auc, mia_tpr_at_1fpr, kl_forget, fr
            "note": note,
            "phase_wall_s": {k: round(v, 2) for k, v in run.seconds.items()},
        },
    }


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["round"] for r in report["rounds"]]
    ys = [r["test_acc"] for r in report["rounds"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o")
    forget = report["forget"]
    ax.axvline(forget["requested_after_round"] + 0.5, color="red", linestyle="--", label="ForgetMe")
    ax.axvline(forget["unlearned_round"], color="green", linestyle=":", label="U (receipt)")
    ax.legend()
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"forsaken demo: {report['dataset']}, {report['clients']} clients")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(report: dict[str, Any], console: Console) -> None:
    table = Table(title="per-round test accuracy")
    for col in ("round", "test_acc", "participants", "duration_s"):
        table.add_column(col, justify="right")
    for r in report["rounds"]:
        table.add_row(
            str(r["round"]),
            f"{r['test_acc']:.4f}",
            str(r["participants"]),
            f"{r['duration_s']:.2f}",
        )
    console.print(table)
    forget = report["forget"]
    compare = Table(
        title=f"forgetting client 0 ({forget['method']}): O after round "
        f"{forget['requested_after_round']}, U after round {forget['unlearned_round']}, "
        "R retrained without its data"
    )
    for col in ("model", "test acc", "backdoor ASR", "MIA AUC", "KL(R‖·) forget", "FR"):
        compare.add_column(col, justify="right")
    for name, m in forget["models"].items():
        compare.add_row(
            name,
            f"{m['test_acc']:.4f}",
            f"{m['asr']:.4f}",
            f"{m['mia_auc']:.4f}",
            f"{m['kl_forget']:.4f}" if "R" in forget["models"] else "-",
            f"{m['fr']:.3f}",
        )
    console.print(compare)
    if forget["note"]:
        console.print(f"[yellow]{forget['note']}[/yellow]")
    final = report["final"]
    console.print(
        f"[bold]final test accuracy: {final['test_acc']:.4f}[/bold] (round {final['round']}; "
        f"wall {report['wall_s']:.1f}s)"
    )
