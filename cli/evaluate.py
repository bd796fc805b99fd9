"""`forsaken evaluate`: the evaluation of docs/evaluation.md, with U from the real daemons.

See HOW_IT_WORKS below and forsaken.evaluation_scoring.COST_BASIS (both are printed by
`forsaken evaluate --help`). The daemons run in forsaken.evaluation_run; scoring and cost are in
forsaken.evaluation_scoring; the output in forsaken.evaluation_report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forsaken.evaluation_report import (
    DISTRIBUTED,
    FURTHER_ROUNDS,
    MODEL_KEYS,
    REFERENCE_NAMES,
    SeedResult,
    detail_json,
    evaluation_json,
    plot,
    print_tables,
)
from forsaken.evaluation_run import (
    FORGETTER,
    EventCallback,
    Federation,
    FederationConfig,
    FederationError,
    RoundCallback,
    train_then_forget,
)
from forsaken.evaluation_scoring import (
    COST_BASIS,
    Cost,
    Scorer,
    Scores,
    check_scorer,
    unlearning_cost,
)

if TYPE_CHECKING:
    from forsaken.common.certs import Layout
    from forsaken.common.unlearning.reference import ProtocolConfig
    from forsaken.evaluation_run import ForgetRun

HOW_IT_WORKS = """\
Per seed, one server and N client daemons run as separate OS processes (mutual TLS, secure
aggregation); client 0 holds the backdoor test bed (`forsaken client --backdoor`).

1. Training: the server runs exactly T rounds (`--rounds T`) and the daemons stop on its STOP.
   O is the checkpoint of round T.
2. Forgetting: the federation restarts from its ledger and checkpoints with `--rounds 0` (it
   runs until stopped). Client 0 comes up first and its owner files ForgetMe through the Owner
   API (as `forsaken forget` does) before the other daemons reconnect. A round needs all N
   daemons, so unlearning starts exactly from O, in round T + 1, as in the in-process runner.
   The server drives unlearning, recovery and verification; U is the model its receipt names
   (model_sha256_after). Then 10 more ordinary rounds run: U+10.
   The daemons compute what the in-process runner computes for the same seed: bit for bit in
   plaintext, and under secure aggregation up to its quantization (about 1e-7 per round),
   which T rounds of training amplify; evaluation_detail.json lists the in-process O, U and U+10
   beside the daemons' for comparison.
3. References: the in-process runner (forsaken.common.unlearning.reference.run_seed) gives R
   (retrain without client 0's data, same seed), R' (seed + 1000), finetune and pga.

Every model is scored with forsaken.common.metrics on reference.py's probes (the test set, the
triggered non-target test images, client 0's poisoned training set). The scorer checks itself
against run_seed's scores of R, so it cannot drift from reference.py unnoticed.
"""

DETAIL_FILE = "evaluation_detail.json"
METHODS = ("forsaken", "pga", "finetune", "retrain")


# ---- one seed ------------------------------------------------------------------------------


def protocol_config(args: argparse.Namespace, seed: int) -> ProtocolConfig:
    from forsaken.common.unlearning.reference import ProtocolConfig

    return ProtocolConfig(
        dataset=args.dataset,
        rounds=args.rounds,
        clients=args.clients,
        local_epochs=args.local_epochs,
        seeds=(seed,),
        forget_client=FORGETTER,
        recovery_rounds=args.recovery_rounds,
        further_rounds=FURTHER_ROUNDS,
    )


def evaluate_seed(
    args: argparse.Namespace,
    seed: int,
    pki: Layout,
    on_round: RoundCallback,
    on_event: EventCallback,
) -> SeedResult:
    from forsaken.common.unlearning.reference import run_seed

    fed = Federation(
        args.out / "runs" / f"seed-{seed}",
        pki,
        FederationConfig(
            dataset=args.dataset,
            clients=args.clients,
            seed=seed,
            local_epochs=args.local_epochs,
            recovery_rounds=args.recovery_rounds,
            round_timeout_s=args.round_timeout,
            method=args.method,
        ),
    )
    try:
        run = train_then_forget(fed, args.rounds, FURTHER_ROUNDS, args.timeout, on_round, on_event)
        if run.after_round is None:
            raise FederationError("the run stopped before the rounds after U")
        vectors = {
            "original": fed.model(run.sha(run.forget_round)),
            "unlearned": fed.model(run.sha(run.unlearned_round)),
            "unlearned_after_10_rounds": fed.model(run.sha(run.after_round)),
        }
    finally:
        fed.stop()
    notes = _run_notes(run, args.clients)

    on_event("in-process references: R, R', finetune, pga (and O, U, U+10 for comparison)")
    cfg = protocol_config(args, seed)
    reports, _ = run_seed(cfg, seed)
    scorer = Scorer(cfg, seed)
    r_vec = scorer.retrain()
    scorer.anchor(r_vec, vectors["original"])
    check_scorer(scorer.score(r_vec), reports["R"], f"seed {seed}, R")
    scores = {key: scorer.score(vec) for key, vec in vectors.items()}
    for key in MODEL_KEYS:
        if key not in DISTRIBUTED:
            scores[key] = Scores.of_report(reports[REFERENCE_NAMES[key]])
    in_process = {key: Scores.of_report(reports[REFERENCE_NAMES[key]]) for key in DISTRIBUTED}

    unlearning = unlearning_cost(run, args.local_epochs, len(r_vec))
    training = sum(run.by_round(r)["duration_s"] for r in range(1, run.trained_rounds + 1))
    r, pga = reports["R"], reports["pga"]
    cost = {
        "unlearned": unlearning.counted,
        "retrained": Cost(r.grad_evals, training, r.bytes_up),
        "pga": Cost(pga.grad_evals_unlearning, pga.seconds, pga.bytes_up),
    }
    if unlearning.receipt_grad_evals != unlearning.forgetter_grad_evals:
        notes.append(
            f"the receipt's client_progress reports {unlearning.receipt_grad_evals} gradient "
            f"evaluations; the daemon's engine computed {unlearning.forgetter_grad_evals} over "
            f"{len(run.steps)} steps (the receipt keeps only the last step's metrics)"
        )
    return SeedResult(seed, scores, cost, unlearning, run, in_process, notes)


def _run_notes(run: ForgetRun, clients: int) -> list[str]:
    """Deviations of the distributed run from the in-process protocol, stated, not hidden."""
    notes = []
    if run.forget_round != run.trained_rounds:
        notes.append(f"unlearning started after round {run.forget_round}, not {run.trained_rounds}")
    short = [
        r["round"]
        for r in run.rounds
        if 1 <= r["round"] <= run.trained_rounds and len(r["participants"]) != clients
    ]
    if short:
        notes.append(f"training rounds without every client: {short}")
    extra = run.unlearned_round - run.forget_round - int(run.receipt["unlearning_rounds"])
    extra -= int(run.receipt["recovery_rounds"])
    if extra:
        notes.append(
            f"U is the model after round {run.unlearned_round}: {extra} ordinary round(s) "
            "closed between recovery and the client's verification"
        )
    return notes


# ---- command line -----------------------------------------------------------------------------


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = HOW_IT_WORKS + "\n" + COST_BASIS
    p.add_argument("--dataset", default="digits", help="digits or mnist5k (default: %(default)s)")
    p.add_argument(
        "--clients",
        type=int,
        default=5,
        help="client daemons; client 0 holds the backdoor and forgets (default: %(default)s)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=30,
        help="T: training rounds before ForgetMe (default: %(default)s)",
    )
    p.add_argument(
        "--local-epochs",
        type=int,
        default=5,
        help="local epochs per round, daemons and in-process runner (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="number of seeds, 0..N-1; one federation each (default: %(default)s)",
    )
    p.add_argument(
        "--method",
        default="forsaken",
        choices=METHODS,
        help="the method the daemons unlearn with; U and its cost come from it "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--recovery-rounds",
        type=int,
        default=1,
        help="recovery rounds after unlearning, daemons and in-process runner "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("evaluation-out"),
        help="output directory, replaced if it exists: evaluation.json, evaluation.png, "
        f"{DETAIL_FILE} (per seed, the ledger, the receipt, the forget steps), and the "
        "daemons' state and logs under runs/ (default: %(default)s)",
    )
    p.add_argument(
        "--round-timeout",
        type=float,
        default=120.0,
        help="the server's round deadline in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=1800.0,
        help="give up on one seed's federation after this many seconds (default: %(default)s)",
    )


def run_evaluate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from forsaken.common.certs import init_federation

    console = Console()
    for name in ("clients", "rounds", "local_epochs", "seeds"):
        if getattr(args, name) < 1:
            console.print(f"[red]--{name.replace('_', '-')} must be >= 1[/red]")
            return 2
    if args.clients < 2 or args.recovery_rounds < 0:
        console.print("[red]need --clients >= 2 and --recovery-rounds >= 0[/red]")
        return 2
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    started = time.monotonic()
    pki = init_federation(out / "pki", ["localhost"], args.clients, operators=("admin",))
    results: list[SeedResult] = []
    with Progress(
        TextColumn("[bold]{task.fields[seed]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} rounds"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        for seed in range(args.seeds):
            total = args.rounds + FURTHER_ROUNDS
            task = progress.add_task("starting", total=total, seed=f"seed {seed}")

            def on_round(r: dict[str, Any], task: Any = task) -> None:
                done = int(r["round"])
                if done > progress.tasks[task].total:
                    progress.update(task, total=done + FURTHER_ROUNDS)
                progress.update(task, completed=done, description=f"acc {r['test_acc']:.4f}")

            def on_event(text: str, seed: int = seed) -> None:
                progress.console.print(f"seed {seed}: {text}")

            try:
                result = evaluate_seed(args, seed, pki, on_round, on_event)
            except FederationError as exc:
                logs = out / "runs" / f"seed-{seed}" / "logs"
                progress.console.print(f"[red]seed {seed}: {exc} (logs in {logs})[/red]")
                return 1
            for note in result.notes:
                progress.console.print(f"[yellow]seed {seed}: {note}[/yellow]")
            results.append(result)
            progress.update(task, description="done")
    report = evaluation_json(args, results)
    (out / "evaluation.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / DETAIL_FILE).write_text(json.dumps(detail_json(args, results), indent=1) + "\n")
    plot(report, results, out / "evaluation.png")
    print_tables(report, console)
    passed = [k for k, b in report["bars"].items() if b["pass"]]
    failed = [k for k, b in report["bars"].items() if not b["pass"]]
    console.print(f"bars passed: {', '.join(passed) or 'none'}")
    console.print(f"bars failed: {', '.join(failed) or 'none'}")
    console.print(
        f"wrote {out / 'evaluation.json'}, {out / 'evaluation.png'}, {out / DETAIL_FILE} "
        f"(wall {time.monotonic() - started:.0f}s)"
    )
    return 0
