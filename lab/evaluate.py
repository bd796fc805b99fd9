"""`forsaken evaluate`: the unlearning evaluation, with U from the real daemons.

See HOW_IT_WORKS below and forsaken.lab.evaluation_scoring.COST_BASIS (both are printed by
`forsaken evaluate --help`). The daemons run in forsaken.lab.evaluation_run; scoring and cost are in
forsaken.lab.evaluation_scoring; the output in forsaken.lab.evaluation_report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forsaken.common.forget_methods import METHOD_NAMES
from forsaken.common.testbeds import SCENARIOS
from forsaken.lab.evaluation_report import (
    BASELINE_KEYS,
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
from forsaken.lab.evaluation_run import (
    FORGETTER,
    EventCallback,
    Federation,
    FederationConfig,
    FederationError,
    RoundCallback,
    train_then_forget,
)
from forsaken.lab.evaluation_scoring import COST_BASIS, Cost, json_scores, unlearning_cost

if TYPE_CHECKING:
    from forsaken.common.certs import Layout
    from forsaken.lab.evaluation_run import ForgetRun
    from forsaken.lab.reference import ProtocolConfig

HOW_IT_WORKS = """\
Per seed, one server and N client daemons run as separate OS processes (mutual TLS, secure
aggregation); the scenario (--scenario) decides what client 0 holds and what it forgets:
  clean            ordinary data; it forgets all of it (the primary scenario)
  clean-subset     ordinary data; it forgets a random 30% of it and keeps training on the rest
  clean-dirichlet  label-skewed partitions (Dirichlet 0.5); it forgets all its data
  backdoor         a bright corner-square trigger on 80% of its other-class samples, relabelled
                   to class 0 (`forsaken client --test-bed backdoor`)
  backdoor-patch   another trigger: a half-bright square in the opposite corner
  backdoor-blend   a trigger spread over the image: a random pattern blended in at 20%
  label-flip       half its samples carry a random wrong label

1. Training: the server runs exactly T rounds (`--rounds T`) and the daemons stop on its STOP.
   O is the checkpoint of round T.
2. Forgetting: the federation restarts from its ledger and checkpoints with `--rounds 0` (it
   runs until stopped). Client 0 comes up first and its owner files ForgetMe through the Owner
   API (as `forsaken forget` does) before the other daemons reconnect. A round needs all N
   daemons, so unlearning starts exactly from O, in round T + 1, as in the in-process runner.
   The server drives unlearning, recovery and verification; U is the model its receipt names
   (model_sha256_after). Then 10 more ordinary rounds run: U+10.
3. References, from the in-process runner (forsaken.lab.reference), which uses
   the daemons' training code: R (retrain without the forgotten data, same seed), R' (seed +
   1000: the noise floor), the baselines (finetune, pga, fedquit, not) and, with --shadows K,
   K shadow federations that calibrate a per-example membership attack (LiRA, Carlini et al.
   2022): each shadow trains like O with client 0 holding a random share of the candidates
   (the forgotten samples and the test set), so every candidate is IN for some shadows and OUT
   for the others. With --ulira the shadows are also unlearned by forsaken (U-LiRA).

Every model, the daemons' included, is scored by the in-process runner's own scoring on the
same probes: test accuracy; LiRA AUC and TPR at 1% and 0.1% FPR (members: the forgotten
samples, non-members: the test set; also "recentred", with the model's own global shift in
confidence removed first); the population attacks (loss and label-free confidence thresholds);
KL(R ‖ model) on forget-side inputs; ASR on a trigger scenario, the flip rate on label-flip.
The bars are two-sided where a model can miss by looking less like a member than R does.
"""

DETAIL_FILE = "evaluation_detail.json"


# ---- one seed ------------------------------------------------------------------------------


def protocol_config(args: argparse.Namespace, seed: int) -> ProtocolConfig:
    from forsaken.lab.reference import ProtocolConfig

    return ProtocolConfig(
        dataset=args.dataset,
        test_bed=args.scenario,
        architecture="" if args.architecture == "auto" else args.architecture,
        rounds=args.rounds,
        clients=args.clients,
        local_epochs=args.local_epochs,
        seeds=(seed,),
        forget_client=FORGETTER,
        recovery_rounds=args.recovery_rounds,
        further_rounds=FURTHER_ROUNDS,
        shadows=args.shadows,
        ulira=args.ulira,
    )


def evaluate_seed(
    args: argparse.Namespace,
    seed: int,
    pki: Layout,
    on_round: RoundCallback,
    on_event: EventCallback,
) -> SeedResult:
    from forsaken.lab.reference import federation, run_seed

    cfg = protocol_config(args, seed)
    bed = federation(cfg, seed).bed
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
            architecture="" if args.architecture == "auto" else args.architecture,
            scheme=bed.scheme,
            alpha=bed.alpha,
            test_bed=bed.scenario.plant,
            sample_ids=bed.request_ids(),
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

    on_event("in-process references: R, R', the baselines and the shadow models")
    ref = run_seed(cfg, seed, cache=args.cache, on_event=on_event)
    scores = {key: json_scores(ref.anchor.score(vec)) for key, vec in vectors.items()}
    for key in MODEL_KEYS:
        if key not in DISTRIBUTED and REFERENCE_NAMES[key] in ref.reports:
            scores[key] = json_scores(ref.reports[REFERENCE_NAMES[key]])
    in_process = {key: json_scores(ref.reports[REFERENCE_NAMES[key]]) for key in DISTRIBUTED}

    unlearning = unlearning_cost(run, args.local_epochs, len(vectors["original"]))
    training = sum(run.by_round(r)["duration_s"] for r in range(1, run.trained_rounds + 1))
    r = ref.reports["R"]
    cost = {
        "unlearned": unlearning.counted,
        "retrained": Cost(r.grad_evals, training, r.bytes_up),
    }
    for key in BASELINE_KEYS:
        b = ref.reports.get(REFERENCE_NAMES[key])
        if b is not None and key != "finetune":
            cost[key] = Cost(b.grad_evals_unlearning, b.seconds, b.bytes_up)
    if unlearning.receipt_grad_evals != unlearning.forgetter_grad_evals:
        notes.append(
            f"the receipt's client_progress reports {unlearning.receipt_grad_evals} gradient "
            f"evaluations; the daemon's engine computed {unlearning.forgetter_grad_evals} over "
            f"{len(run.steps)} steps (the receipt keeps only the last step's metrics)"
        )
    return SeedResult(seed, scores, cost, unlearning, run, in_process, notes, ref.ulira)


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
    p.add_argument(
        "--dataset",
        default="digits",
        help="digits, mnist5k, fashion (needs Debian's dataset-fashion-mnist) or an .npz file "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--scenario",
        default="clean",
        choices=sorted(SCENARIOS),
        help="what client 0 holds and forgets; see below (default: %(default)s)",
    )
    p.add_argument(
        "--architecture",
        default="auto",
        choices=("auto", "mlp", "cnn"),
        help="the model; auto: the dataset's default (default: %(default)s)",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=5,
        help="client daemons; client 0 forgets (default: %(default)s)",
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
        choices=METHOD_NAMES,
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
        "--shadows",
        type=int,
        default=16,
        help="shadow federations per seed for the LiRA attack; 0 turns it off "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--ulira",
        action="store_true",
        help="also unlearn every shadow with forsaken in process and report U-LiRA's "
        "forgetting score (costs one unlearning run per shadow)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="keep the in-process O, R, R' and shadow models here and reuse them on the next "
        "run with the same settings (default: none)",
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
    if args.shadows == 1 or args.shadows < 0:
        console.print("[red]--shadows must be 0 (no LiRA) or at least 2[/red]")
        return 2
    if args.ulira and args.shadows < 4:
        console.print("[red]--ulira needs --shadows >= 4[/red]")
        return 2
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
