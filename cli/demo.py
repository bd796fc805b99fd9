"""`forsaken demo`: one server and N clients as separate OS processes on loopback.

Client 0 holds the backdoor test bed of DESIGN §5 (`forsaken client --backdoor`). After the
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
from forsaken.common.datasets import Dataset, load_dataset
from forsaken.common.task import DataRequest, LoadedTask, for_client, for_server, majority_rate
from forsaken.common.task_loader import absolute_reference, load_task
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
        "--task",
        default="",
        help="your own task for both daemons (module:attr or path/to/file.py:attr) instead of "
        "--dataset/--architecture; client 0 then plants no backdoor and R is not computed",
    )
    p.add_argument(
        "--data-dir", default="", help="directory the task reads its data from (see --task)"
    )
    p.add_argument(
        "--forget-method",
        default="forsaken",
        choices=("forsaken", "pga", "finetune", "retrain"),
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
    if args.task:
        args.task = absolute_reference(args.task)
    # Load the task here first: a task that fails to import or build is a CLI error naming it.
    subject = _Subject.open(args)
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
            task=args.task,
            data_dir=args.data_dir,
            backdoor=not args.task,
        ),
    )
    started = time.monotonic()
    try:
        planted = "" if args.task else " (client 0 with the backdoor)"
        console.print(
            f"server on {fed.address}, {args.clients} clients{planted}, {subject.what}; "
            f"logs in {out / 'logs'}"
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
    models, note = subject.compare(vectors, args, console)
    report = _report(run, models, note, args, time.monotonic() - started)
    report["majority_class_rate"] = subject.majority_rate
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


class _Subject:
    """What the demo trains: a built-in dataset (scored against R in process) or a task."""

    def __init__(self, what: str, labels: np.ndarray, task: LoadedTask | None = None) -> None:
        self.what = what
        self.majority_rate = majority_rate(labels)
        self.task = task
        self.validation: Dataset | None = None

    @classmethod
    def open(cls, args: argparse.Namespace) -> _Subject:
        if not args.task:
            labels = load_dataset(args.dataset).y_test
            return cls(f"dataset {args.dataset}", labels)
        data_dir = Path(args.data_dir) if args.data_dir else None
        request = DataRequest(seed=args.seed, data_dir=data_dir)
        loaded, validation = for_server(load_task(args.task), request)
        subject = cls(f"task {loaded.name} (model {loaded.spec.architecture})", validation.y_test)
        subject.task, subject.validation = loaded, validation
        return subject

    def compare(
        self, vectors: dict[str, np.ndarray], args: argparse.Namespace, console: Console
    ) -> tuple[dict[str, dict[str, float]], str]:
        if self.task is None:
            return _compare(vectors, args, console)
        return _task_models(self.task, self.validation, vectors, args)


def _task_models(
    task: LoadedTask,
    validation: Dataset | None,
    vectors: dict[str, np.ndarray],
    args: argparse.Namespace,
) -> tuple[dict[str, dict[str, float]], str]:
    """O and U of a task: validation accuracy, and how client 0's forgotten data (all of its
    training samples) compares with the validation set under a loss-threshold attack."""
    from forsaken.common import metrics as M
    from forsaken.common.training import load_vector

    assert validation is not None
    request = DataRequest(
        0,
        args.clients,
        args.scheme,
        args.alpha,
        args.seed,
        task.spec and (Path(args.data_dir) if args.data_dir else None),
    )
    _, own, _ = for_client(task.task, request, held_out_fraction=0.1)
    model = task.build_model(args.seed)
    models = {}
    for name, vec in vectors.items():
        load_vector(model, vec)
        forget = M.per_sample_losses(M.model_outputs(model, own.x_train), own.y_train)
        test_logits = M.model_outputs(model, validation.x_test)
        test = M.per_sample_losses(test_logits, validation.y_test)
        models[name] = {
            "test_acc": task.evaluate(model, validation.x_test, validation.y_test).accuracy,
            "mia_auc": M.mia_auc(forget, test),
        }
    return models, "a task: no backdoor is planted and R is not retrained in process"


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
        "dataset": args.dataset if not args.task else None,
        "task": args.task or None,
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
    ax.set_title(
        f"forsaken demo: {report['task'] or report['dataset']}, {report['clients']} clients"
    )
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
    retrained = ", R retrained without its data" if "R" in forget["models"] else ""
    compare = Table(
        title=f"forgetting client 0 ({forget['method']}): O after round "
        f"{forget['requested_after_round']}, U after round {forget['unlearned_round']}" + retrained
    )
    for col in ("model", "test acc", "backdoor ASR", "MIA AUC", "KL(R‖·) forget", "FR"):
        compare.add_column(col, justify="right")
    shown = lambda m, k, f: format(m[k], f) if m.get(k) is not None else "-"  # noqa: E731
    for name, m in forget["models"].items():
        compare.add_row(
            name,
            shown(m, "test_acc", ".4f"),
            shown(m, "asr", ".4f"),
            shown(m, "mia_auc", ".4f"),
            shown(m, "kl_forget", ".4f") if "R" in forget["models"] else "-",
            shown(m, "fr", ".3f"),
        )
    console.print(compare)
    if forget["note"]:
        console.print(f"[yellow]{forget['note']}[/yellow]")
    final = report["final"]
    console.print(
        f"[bold]final test accuracy: {final['test_acc']:.4f}[/bold] (round {final['round']}; "
        f"majority-class rate {report['majority_class_rate']:.4f}; wall {report['wall_s']:.1f}s)"
    )
