"""`forsaken demo`: one server and N clients as separate OS processes on loopback.

Client 0 holds the backdoor test bed (`forsaken client --test-bed backdoor`). After the
training rounds its owner asks the federation to forget all its data (ForgetMe); the demo
follows the request to its receipt and then stops. The federation restarts between the two
phases (from its ledger and checkpoints), so that the request is on record before round T + 1
can start; see `forsaken.lab.evaluation_run.train_then_forget`.

Shows progress per round, prints a table of per-round accuracy, backdoor success and
membership, and a before/after table of O (after training), U (after forgetting) and R
(retrained without client 0's data, in process, same seed), and writes report.json and
accuracy.png to --out. Every child is torn down on exit, on Ctrl-C too. COLUMNS (shown by
`forsaken demo --help`) says what every column means.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from forsaken.common.certs import init_federation
from forsaken.common.datasets import Dataset, load_dataset
from forsaken.common.forget_methods import METHOD_NAMES
from forsaken.common.receipts import verdict
from forsaken.common.task import DataRequest, LoadedTask, for_client, for_server, majority_rate
from forsaken.common.task_loader import absolute_reference, load_task
from forsaken.lab.evaluation_run import (
    FORGETTER,
    Federation,
    FederationConfig,
    FederationError,
    ForgetRun,
    train_then_forget,
)
from forsaken.lab.evaluation_scoring import Scorer

# Each model's (O, U, R) scores by evaluation.json's names; None where a probe does not apply.
ModelScores = dict[str, dict[str, float | None]]

COLUMNS = """\
What the tables and the plot show (the protocol behind them: docs/evaluation.md):

per-round table, one row per completed round (accuracy.png plots the same curves)
  phase         training (all clients), unlearning (client 0 uploads its forget steps),
                recovery (ordinary rounds without client 0), after (rounds that closed
                before client 0 verified its request)
  test_acc      accuracy of that round's model on the test split no client trains on
                (the server's own evaluation)
  asr           backdoor attack success rate: the share of test images of other classes,
                stamped with client 0's trigger, that the model calls the target class.
                High while client 0's data is in the model; it falls when it is forgotten
  mia_auc       membership inference: AUC of a loss-threshold attack telling client 0's
                training samples from test images (0.5: indistinguishable). Compare it
                with R's, not with 0.5: most of client 0's samples carry the backdoor's
                wrong label, so a model that never saw them gives them a higher loss than
                test images and its AUC lies well below 0.5
  participants  clients whose updates the round aggregated
  duration_s    the round's wall time, as the server measured it

O / U / R table
  O             the model when client 0 asked to forget (after --rounds rounds)
  U             the model the forget receipt names (after unlearning and recovery)
  R             retrained from scratch without client 0's data, same seed, in process:
                what perfect forgetting looks like (only with --scheme iid and the
                default model)
  test acc, backdoor ASR, MIA AUC   as above
  KL(R‖·) forget  mean KL divergence (nats) from R's predictions to the model's on
                client 0's samples and the triggered test images: 0 means it predicts
                what the retrain predicts where client 0's data mattered
  FR            forgetting rate (Forsaken paper): (AF - BF) / BT, where BT is the share
                of client 0's samples that look memorised on O (loss below the median
                test loss of the same model), BF = 1 - BT, and AF the share that no longer
                do; 1: all that looked memorised no longer does, 0: no change (O is 0)

The demo shows one seed; `forsaken evaluate` runs the whole protocol over several.
"""


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = COLUMNS
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
            # The backdoor test bed needs the built-in image data; a user's task runs clean.
            test_bed="" if args.task else "backdoor",
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
    models, note, scorer = subject.compare(vectors, args, console)
    curves = _curves(fed, run, scorer) if scorer is not None else {}
    report = _report(run, models, note, curves, args, time.monotonic() - started)
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
    ) -> tuple[ModelScores, str, Any]:
        """The models' scores, a note, and the scorer of per-round curves (built-in data only)."""
        if self.task is None:
            return _compare(vectors, args, console)
        return (*_task_models(self.task, self.validation, vectors, args), None)


def _task_models(
    task: LoadedTask,
    validation: Dataset | None,
    vectors: dict[str, np.ndarray],
    args: argparse.Namespace,
) -> tuple[ModelScores, str]:
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
        Path(args.data_dir) if args.data_dir else None,
    )
    _, own, _ = for_client(task.task, request, held_out_fraction=0.1)
    model = task.build_model(args.seed)
    models: ModelScores = {}
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
) -> tuple[ModelScores, str, Scorer | None]:
    """O, U and (where the in-process runner can reproduce this federation's data) R; the
    scorer too when its probes are this federation's (client 0's data, the model)."""
    from forsaken.common.training import TrainConfig
    from forsaken.lab.reference import ProtocolConfig

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
        matched = False
    else:
        with console.status("retraining without client 0's data in process (R)"):
            r_vec = scorer.retrain()
        scorer.anchor(r_vec, vectors["O"])
        vectors = {**vectors, "R": r_vec}
        matched = True
    models = {name: scorer.score(vec) for name, vec in vectors.items()}
    return models, note, scorer if matched else None


def _curves(fed: Federation, run: ForgetRun, scorer: Scorer) -> dict[int, dict[str, float]]:
    """Backdoor ASR and membership AUC of every round's model (from its checkpoint), on the
    scorer's probes; rounds whose checkpoint retention has deleted are left out."""
    from forsaken.common import metrics as M
    from forsaken.common.errors import ForsakenError
    from forsaken.common.training import load_vector

    bed = scorer.fed.bed
    model = scorer.fed.model
    out: dict[int, dict[str, float]] = {}
    for r in run.rounds:
        if r["round"] <= 0:
            continue
        try:
            vector = fed.model(r["model_sha256"])
        except (ForsakenError, OSError, KeyError):
            continue
        load_vector(model, vector)
        members = M.per_sample_losses(M.model_outputs(model, bed.forget_x), bed.forget_y)
        test = bed.dataset
        others = M.per_sample_losses(M.model_outputs(model, test.x_test), test.y_test)
        point = {"mia_auc": M.mia_auc(members, others)}
        if bed.trigger is not None:
            trig = M.model_outputs(model, bed.trigger.x)
            point["asr"] = M.attack_success_rate(trig, bed.trigger.target)
        out[int(r["round"])] = point
    return out


def _phase(round_: int, run: ForgetRun) -> str:
    receipt = run.receipt
    unlearning_end = run.forget_round + int(receipt["unlearning_rounds"])
    if round_ <= run.forget_round:
        return "training"
    if round_ <= unlearning_end:
        return "unlearning"
    if round_ <= unlearning_end + int(receipt["recovery_rounds"]):
        return "recovery"
    return "after"


def _report(
    run: ForgetRun,
    models: ModelScores,
    note: str,
    curves: dict[int, dict[str, float]],
    args: argparse.Namespace,
    wall_s: float,
) -> dict[str, Any]:
    rounds = [
        {
            "round": r["round"],
            "phase": _phase(r["round"], run),
            "test_acc": r["test_acc"],
            "asr": curves.get(r["round"], {}).get("asr"),
            "mia_auc": curves.get(r["round"], {}).get("mia_auc"),
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
            "verdict": receipt.get("verdict") or verdict(receipt),
            "models": models,  # O, U and R: test_acc, asr, mia_auc, mia_tpr_at_1fpr, kl_forget, fr
            "note": note,
            "phase_wall_s": {k: round(v, 2) for k, v in run.seconds.items()},
        },
    }


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report["rounds"]
    forget = report["forget"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    spans = {"unlearning": ("#d62728", "unlearning rounds"), "recovery": ("#1f77b4", "recovery")}
    for phase, (color, label) in spans.items():
        xs = [r["round"] for r in rounds if r["phase"] == phase]
        if xs:
            ax.axvspan(min(xs) - 0.5, max(xs) + 0.5, color=color, alpha=0.12, label=label)
    ax.axvline(forget["requested_after_round"] + 0.5, color="red", linestyle="--", label="ForgetMe")
    ax.axvline(forget["unlearned_round"], color="green", linestyle=":", label="U (receipt)")
    lines: tuple[tuple[str, str, str], ...] = (
        ("test_acc", "test accuracy", "#2ca02c"),
        ("asr", "backdoor ASR", "#d62728"),
    )
    lines += (("mia_auc", "MIA AUC (client 0 vs test)", "#9467bd"),)
    retrained = forget["models"].get("R")
    for key, label, color in lines:
        points = [(r["round"], r[key]) for r in rounds if r.get(key) is not None]
        if not points:
            continue
        ax.plot(*zip(*points, strict=True), marker="o", markersize=3, color=color, label=label)
        if retrained is not None and key != "test_acc":
            ax.axhline(retrained[key], color=color, linestyle=":", linewidth=1, alpha=0.7)
    if retrained is not None:
        ax.plot([], [], color="grey", linestyle=":", label="R's value (retrained without it)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy, ASR, AUC")
    ax.set_title(
        f"forsaken demo: {report['task'] or report['dataset']}, {report['clients']} clients, "
        f"client 0 forgets ({forget['method']})"
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(report: dict[str, Any], console: Console) -> None:
    table = Table(title="per round (columns: forsaken demo --help)")
    for col in ("round", "phase", "test_acc", "asr", "mia_auc", "participants", "duration_s"):
        table.add_column(col, justify="right")
    for r in report["rounds"]:
        table.add_row(
            str(r["round"]),
            r["phase"],
            f"{r['test_acc']:.4f}",
            "-" if r["asr"] is None else f"{r['asr']:.4f}",
            "-" if r["mia_auc"] is None else f"{r['mia_auc']:.4f}",
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
    console.print(f"[bold]receipt verdict[/bold]: {forget['verdict']}")
    if forget["note"]:
        console.print(f"[yellow]{forget['note']}[/yellow]")
    final = report["final"]
    console.print(
        f"[bold]final test accuracy: {final['test_acc']:.4f}[/bold] (round {final['round']}; "
        f"majority-class rate {report['majority_class_rate']:.4f}; wall {report['wall_s']:.1f}s)"
    )
