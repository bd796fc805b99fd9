"""`python -m forsaken.lab.compare`: run forsaken and Flower on the same work, write the results.

Each measurement is repeated; within a repetition the two systems run one after the other,
and the order alternates between repetitions, so a slow spell on this shared machine does not
always fall on the same system.

Scenario 5 (unlearning) is forsaken's alone, Flower having no unlearning: it compares ForgetMe
with forsaken's own retraining baseline, and its two methods alternate in the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from forsaken.lab.compare import ours
from forsaken.lab.compare.flower import FlowerCluster, flower_version
from forsaken.lab.compare.report import render, spread, validate

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    repetitions: int
    sizes: tuple[int, ...]  # scenario 1 model sizes
    clients: tuple[int, ...]  # scenarios 1 and 2
    rounds: int  # rounds per run in scenario 1
    secure_rounds: int  # rounds per run in scenario 2 (Flower's SecAgg+ rounds take minutes)
    secure_size: int
    dropout_clients: int
    dropout_size: int
    stage_timeout_s: float
    train_clients: int
    train_rounds: int
    train_epochs: int
    unlearn_dataset: str  # scenario 5: the unlearning evaluation's protocol in FULL
    unlearn_clients: int
    unlearn_rounds: int  # T, the training rounds before ForgetMe
    unlearn_epochs: int


FULL = Plan(
    mode="full",
    repetitions=3,
    sizes=(100_000, 1_000_000, 10_000_000),
    clients=(5, 10),
    rounds=3,
    secure_rounds=1,
    secure_size=1_000_000,
    dropout_clients=5,
    dropout_size=1_000_000,
    stage_timeout_s=60.0,
    train_clients=5,
    train_rounds=10,
    train_epochs=1,
    # `forsaken evaluate --dataset mnist5k --rounds 20` with its defaults otherwise.
    unlearn_dataset="mnist5k",
    unlearn_clients=5,
    unlearn_rounds=20,
    unlearn_epochs=5,
)
QUICK = Plan(
    mode="quick",
    repetitions=1,
    sizes=(100_000,),
    clients=(3,),
    rounds=2,
    secure_rounds=2,
    secure_size=100_000,
    dropout_clients=4,
    dropout_size=100_000,
    stage_timeout_s=30.0,
    train_clients=3,
    train_rounds=2,
    train_epochs=1,
    unlearn_dataset="digits",
    unlearn_clients=3,
    unlearn_rounds=3,
    unlearn_epochs=1,
)
RUN_TIMEOUT_S = 1800.0
# One unlearning run trains T rounds and then retrains up to T more (5 local epochs each in FULL).
UNLEARN_TIMEOUT_S = 3600.0
UNLEARN_METHODS = ("forsaken", "retrain")
SCENARIO_NAMES = {
    "1": "round-overhead",
    "2": "secure-round",
    "3": "dropout",
    "4": "training",
    "5": "unlearning",
}


def aes_ctr_gb_s() -> float:
    """Raw AES-256-CTR keystream speed on one core (what SecAgg+ masking is built from)."""
    from forsaken.lab.bench import _aes_floor_s

    words = 1 << 20
    return round(4 * words / _aes_floor_s(words) / 1e9, 2)


def _interleave(rep: int, a: Callable[[], None], b: Callable[[], None]) -> None:
    for step in (a, b) if rep % 2 == 0 else (b, a):
        step()


def _median(values: list[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _entry(name: str, params: dict[str, Any], clients: int, secure: bool) -> dict[str, Any]:
    return {
        "name": name,
        "params": params,
        "clients": clients,
        "secure": secure,
        "forsaken_round_s": None,
        "flower_round_s": None,
        "forsaken_completed": None,
        "flower_completed": None,
        "forsaken_acc": None,
        "flower_acc": None,
    }


def _finish(entry: dict[str, Any], ours_reps: list[float], theirs_reps: list[float]) -> None:
    entry["forsaken_round_s"] = _median(ours_reps)
    entry["flower_round_s"] = _median(theirs_reps)
    entry["forsaken_round_s_spread"] = spread(ours_reps)
    entry["flower_round_s_spread"] = spread(theirs_reps)


def _flower_rounds(data: dict[str, Any]) -> tuple[list[float], bool]:
    # Round "0" is only the centralized evaluation of the initial model.
    ordered = sorted(data.get("rounds", {}).items(), key=lambda kv: int(kv[0]))
    rounds = [r for key, r in ordered if int(key) > 0]
    times = [float(r["round_s"]) for r in rounds if r.get("completed") and "round_s" in r]
    return times, bool(data.get("done")) and bool(rounds) and all(r["completed"] for r in rounds)


class Runner:
    def __init__(self, plan: Plan, venv: Path, scratch: Path, log: Callable[[str], None]) -> None:
        self.plan = plan
        self.venv = venv
        self.scratch = scratch
        self.log = log
        self.notes: list[str] = []
        self.scenarios: list[dict[str, Any]] = []

    def _flower_light(self, params: int, clients: int, secure: bool) -> dict[str, Any]:
        config: dict[str, Any] = {
            "mode": "light",
            "params": params,
            "num-rounds": self.plan.secure_rounds if secure else self.plan.rounds,
            "num-clients": clients,
            "secure": secure,
        }
        if secure:
            k, t = ours.secure_parameters(clients)
            config |= {"num-shares": k + 1, "threshold": t}
        return config

    def light_scenarios(self) -> None:
        """Scenarios 1 and 2 share one Flower cluster per N."""
        p = self.plan
        jobs = [(False, size) for size in p.sizes] + [(True, p.secure_size)]
        for clients in p.clients:
            k, t = ours.secure_parameters(clients)
            reps: dict[tuple[bool, int], tuple[list[float], list[float]]] = {
                job: ([], []) for job in jobs
            }
            with FlowerCluster(self.venv, self.scratch / f"flower-n{clients}", clients) as fl:
                for rep in range(p.repetitions):
                    for job in jobs:
                        _interleave(
                            rep,
                            partial(self._ours_light, clients, job, reps[job][0]),
                            partial(self._flower_light_run, fl, clients, job, reps[job][1]),
                        )
            for secure, size in jobs:
                rounds = p.secure_rounds if secure else p.rounds
                params: dict[str, Any] = {"model_params": size, "rounds": rounds}
                if secure:
                    params |= {"neighbors": k, "threshold": t, "num_shares": k + 1}
                name = "secure-round" if secure else "round-overhead"
                entry = _entry(name, params, clients, secure)
                o, f = reps[(secure, size)]
                _finish(entry, o, f)
                entry["forsaken_completed"] = len(o) == p.repetitions
                entry["flower_completed"] = len(f) == p.repetitions
                self.scenarios.append(entry)

    def _ours_light(self, clients: int, job: tuple[bool, int], acc: list[float]) -> None:
        secure, size = job
        if secure:
            times = ours.secure_round(clients, size, self.plan.secure_rounds, RUN_TIMEOUT_S)
        else:
            times = ours.round_overhead(clients, size, self.plan.rounds)
        self.log(f"  forsaken secure={secure} params={size} N={clients}: {times}")
        if times:
            acc.append(statistics.median(times))

    def _flower_light_run(
        self, fl: FlowerCluster, clients: int, job: tuple[bool, int], acc: list[float]
    ) -> None:
        secure, size = job
        data = fl.run(self._flower_light(size, clients, secure), RUN_TIMEOUT_S)
        times, ok = _flower_rounds(data)
        self.log(f"  flower secure={secure} params={size} N={clients}: {times} done={ok}")
        if not ok:
            self.notes.append(
                f"Flower run secure={secure} params={size} N={clients} did not finish every "
                f"round: {data.get('log_tail', '')[-300:]!r}"
            )
        if times:
            acc.append(statistics.median(times))

    def dropout(self) -> None:
        p = self.plan
        n = p.dropout_clients
        k, t = ours.secure_parameters(n)
        params = {
            "model_params": p.dropout_size,
            "stage_timeout_s": p.stage_timeout_s,
            "neighbors": k,
            "threshold": t,
            "num_shares": k + 1,
            "killed": "partition 0, after sending its shares",
        }
        entry = _entry("dropout", params, n, True)
        acc = _Acc()
        for rep in range(p.repetitions):
            _interleave(
                rep,
                partial(self._ours_dropout, n, acc),
                partial(self._flower_dropout, n, k, t, rep, acc),
            )
        _finish(entry, acc.ours_time, acc.flower_time)
        entry["forsaken_completed"] = bool(acc.ours_done) and all(acc.ours_done)
        entry["flower_completed"] = bool(acc.flower_done) and all(acc.flower_done)
        entry["runs"] = acc.details
        self.scenarios.append(entry)

    def _ours_dropout(self, n: int, acc: _Acc) -> None:
        p = self.plan
        r = ours.dropout_round(n, p.dropout_size, p.stage_timeout_s, RUN_TIMEOUT_S)
        self.log(f"  forsaken dropout: {r}")
        acc.details.append({"system": "forsaken", **r})
        acc.ours_done.append(r["completed"] and r["victim_killed"])
        if r["time_s"] is not None:
            acc.ours_time.append(r["time_s"])

    def _flower_dropout(self, n: int, k: int, t: int, rep: int, acc: _Acc) -> None:
        p = self.plan
        config = {
            "mode": "light",
            "params": p.dropout_size,
            "num-rounds": 1,
            "num-clients": n,
            "secure": True,
            "num-shares": k + 1,
            "threshold": t,
            "stage-timeout": p.stage_timeout_s,
        }
        timeout = max(300.0, 20 * p.stage_timeout_s)
        with FlowerCluster(self.venv, self.scratch / f"flower-drop-{rep}", n) as fl:
            data = fl.run(config, timeout, kill_partition=0)
        times, ok = _flower_rounds(data)
        killed = data["killed_unix"] is not None
        self.log(f"  flower dropout: {times} done={ok} killed={killed}")
        acc.details.append(
            {
                "system": "flower",
                "completed": ok,
                "time_s": times[0] if times else None,
                "victim_killed": killed,
                "rounds": data.get("rounds"),
                "log_tail": data.get("log_tail", "")[-600:],
            }
        )
        acc.flower_done.append(ok and killed)
        if times:
            acc.flower_time.append(times[0])

    def training(self) -> None:
        p = self.plan
        n = p.train_clients
        k, t = ours.secure_parameters(n)
        for secure in (False, True):
            params: dict[str, Any] = {
                "model_params": None,
                "dataset": "mnist5k",
                "model": "mlp",
                "rounds": p.train_rounds,
                "local_epochs": p.train_epochs,
            }
            if secure:
                params |= {"neighbors": k, "threshold": t, "num_shares": k + 1}
            entry = _entry("training", params, n, secure)
            o, f = _Acc(), _Acc()
            for rep in range(p.repetitions):
                tag = f"{'secure' if secure else 'plain'}-{rep}"
                _interleave(
                    rep,
                    partial(self._ours_training, n, secure, tag, o),
                    partial(self._flower_training, n, secure, (k, t), tag, f),
                )
            _finish(entry, o.ours_time, f.flower_time)
            entry["forsaken_total_s"] = spread(o.total)
            entry["flower_total_s"] = spread(f.total)
            entry["forsaken_acc"] = _median(o.accuracy)
            entry["flower_acc"] = _median(f.accuracy)
            entry["forsaken_acc_all"] = o.accuracy
            entry["flower_acc_all"] = f.accuracy
            entry["forsaken_completed"] = bool(o.ours_done) and all(o.ours_done)
            entry["flower_completed"] = bool(f.flower_done) and all(f.flower_done)
            self.scenarios.append(entry)

    def _ours_training(self, n: int, secure: bool, tag: str, acc: _Acc) -> None:
        p = self.plan
        root = self.scratch / f"ours-train-{tag}"
        r = ours.training(root, n, p.train_rounds, p.train_epochs, secure, RUN_TIMEOUT_S)
        self.log(f"  forsaken training {tag}: total {r['total_s']:.1f}s acc {r['accuracy']}")
        acc.ours_done.append(r["completed"])
        if r["completed"]:
            acc.ours_time.append(statistics.median(r["round_s"]))
            acc.total.append(r["total_s"])
            acc.accuracy.append(r["accuracy"])

    def _flower_training(
        self, n: int, secure: bool, kt: tuple[int, int], tag: str, acc: _Acc
    ) -> None:
        p = self.plan
        config: dict[str, Any] = {
            "mode": "train",
            "num-rounds": p.train_rounds,
            "num-clients": n,
            "secure": secure,
            "local-epochs": p.train_epochs,
        }
        if secure:
            config |= {"num-shares": kt[0] + 1, "threshold": kt[1]}
        started = time.monotonic()
        with FlowerCluster(self.venv, self.scratch / f"flower-train-{tag}", n) as fl:
            data = fl.run(config, RUN_TIMEOUT_S)
        total = time.monotonic() - started
        times, ok = _flower_rounds(data)
        last = data.get("rounds", {}).get(str(p.train_rounds), {})
        self.log(f"  flower training {tag}: total {total:.1f}s acc {last.get('accuracy')} ok={ok}")
        acc.flower_done.append(ok)
        if ok:
            acc.flower_time.append(statistics.median(times))
            acc.total.append(total)
            acc.accuracy.append(float(last["accuracy"]))
        else:
            self.notes.append(
                f"Flower training {tag} did not finish: {data.get('log_tail', '')[-300:]!r}"
            )

    def unlearning(self) -> None:
        """Scenario 5: ForgetMe against retraining, both through the daemons (no Flower)."""
        p = self.plan
        params: dict[str, Any] = {
            "dataset": p.unlearn_dataset,
            "rounds": p.unlearn_rounds,
            "local_epochs": p.unlearn_epochs,
            "recovery_rounds": 1,
            "methods": list(UNLEARN_METHODS),
        }
        entry = _entry("unlearning", params, p.unlearn_clients, True)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in UNLEARN_METHODS}
        for rep in range(p.repetitions):
            _interleave(
                rep,
                partial(self._ours_unlearning, "forsaken", rep, runs["forsaken"]),
                partial(self._ours_unlearning, "retrain", rep, runs["retrain"]),
            )
        entry |= unlearning_summary(runs["forsaken"], runs["retrain"], p.repetitions)
        self.scenarios.append(entry)

    def _ours_unlearning(self, method: str, rep: int, out: list[dict[str, Any]]) -> None:
        p = self.plan
        root = self.scratch / f"ours-unlearn-{method}-{rep}"
        try:
            # Seed = repetition: both methods of a repetition forget from the same federation.
            r = ours.unlearning(
                root,
                p.unlearn_dataset,
                p.unlearn_clients,
                p.unlearn_rounds,
                p.unlearn_epochs,
                method,
                UNLEARN_TIMEOUT_S,
                seed=rep,
                log=self.log,
            )
        except Exception as exc:  # one broken repetition must not lose the others
            traceback.print_exc()
            r = {"method": method, "seed": rep, "completed": False, "error": repr(exc)}
        self.log(
            f"  forsaken unlearning {method} rep {rep}: wall {r.get('wall_s')} s, "
            f"grad evals {r.get('client_grad_evals')}, rounds {r.get('rounds')}, "
            f"acc {r.get('accuracy')}"
        )
        if not r["completed"]:
            self.notes.append(f"unlearning {method} rep {rep} did not complete: {r.get('error')}")
        out.append(r)


def unlearning_summary(
    forget: list[dict[str, Any]], retrain: list[dict[str, Any]], repetitions: int
) -> dict[str, Any]:
    """Scenario 5's fields from the repetitions of each method (those that completed count)."""

    def values(runs: list[dict[str, Any]], key: str) -> list[float]:
        return [float(r[key]) for r in runs if r.get("completed") and r.get(key) is not None]

    done = [r.get("completed") is True for r in forget + retrain]
    return {
        "forsaken_round_s": _median(values(forget, "wall_s")),
        "forsaken_round_s_spread": spread(values(forget, "wall_s")),
        "forsaken_completed": len(done) == 2 * repetitions and all(done),
        "forsaken_acc": _median(values(forget, "accuracy")),
        "retrain_acc": _median(values(retrain, "accuracy")),
        "forget_wall_s": spread(values(forget, "wall_s")),
        "retrain_wall_s": spread(values(retrain, "wall_s")),
        "forget_client_grad_evals": spread(values(forget, "client_grad_evals")),
        "retrain_client_grad_evals": spread(values(retrain, "client_grad_evals")),
        "runs": forget + retrain,
    }


def merge_previous(
    previous: dict[str, Any], mode: str, wanted: set[str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The entries and notes of an earlier results file to keep: those of the scenarios not
    rerun now. Raises ValueError if it was measured in another mode (quick numbers must not
    sit beside full ones)."""
    if previous.get("mode") != mode:
        raise ValueError(f"it is a {previous.get('mode')!r} run, not a {mode!r} one")
    rerun = {SCENARIO_NAMES[k] for k in wanted if k in SCENARIO_NAMES}
    if "1" in wanted or "2" in wanted:  # they share their Flower clusters: run together
        rerun |= {SCENARIO_NAMES["1"], SCENARIO_NAMES["2"]}
    kept = [e for e in previous.get("scenarios", []) if e.get("name") not in rerun]
    return kept, list(previous.get("notes", []))


@dataclass
class _Acc:
    """What the repetitions of one measurement gathered."""

    ours_time: list[float] = field(default_factory=list)
    flower_time: list[float] = field(default_factory=list)
    ours_done: list[bool] = field(default_factory=list)
    flower_done: list[bool] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m forsaken.lab.compare",
        description="Run forsaken and Flower (deployment mode) on the same work on this "
        "machine, and write bench-results.json and docs/benchmarks.md.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one repetition, the smallest sizes, few clients and rounds",
    )
    parser.add_argument(
        "--venv",
        type=Path,
        default=REPO / ".venv-bench",
        help="virtualenv with flwr and this project (default: %(default)s)",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        default=REPO / ".bench-scratch",
        help="scratch directory; FLWR_HOME lives here (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench-results.json")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument(
        "--render-only",
        type=Path,
        default=None,
        metavar="RESULTS",
        help="only validate RESULTS and render it to --doc",
    )
    parser.add_argument(
        "--scenarios",
        default="1,2,3,4,5",
        help="comma-separated scenarios to run (default: %(default)s)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the entries of --out for the scenarios not run now, so the slow scenarios "
        "can be measured in separate sittings",
    )
    args = parser.parse_args(argv)

    if args.render_only is not None:
        doc: dict[str, Any] = json.loads(args.render_only.read_text())
        problems = validate(doc)
        if problems:
            print("\n".join(problems), file=sys.stderr)
            return 1
        args.doc.write_text(render(doc))
        print(f"wrote {args.doc}")
        return 0

    plan = QUICK if args.quick else FULL
    wanted = {s.strip() for s in args.scenarios.split(",") if s.strip()}
    args.scratch.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{plan.mode}-", dir=args.scratch))

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    runner = Runner(plan, args.venv, scratch, log)
    host = {
        "cpus": os.cpu_count(),
        "aes_ctr_gb_s": aes_ctr_gb_s(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if args.merge and args.out.exists():
        previous = json.loads(args.out.read_text())
        try:
            kept, notes = merge_previous(previous, plan.mode, wanted)
        except ValueError as exc:
            parser.error(f"--merge: {args.out}: {exc}")
        runner.scenarios.extend(kept)
        runner.notes.extend(notes)
        runner.notes.append(
            f"Scenario(s) {', '.join(sorted(wanted))} measured in a separate sitting ({started}, "
            f"AES-256-CTR {host['aes_ctr_gb_s']} GB/s) and merged with the others' results."
        )
        # The header describes the first sitting; later ones are in the notes.
        started = previous.get("started", started)
        host = previous.get("host", host)
    doc = {
        "flower_version": flower_version(args.venv),
        "started": started,
        "mode": plan.mode,
        "repetitions": plan.repetitions,
        "host": host,
        "scenarios": runner.scenarios,
        "notes": runner.notes,
    }
    steps: list[tuple[str, Callable[[], None]]] = [
        ("1", runner.light_scenarios),  # scenario 2 runs on the same Flower clusters
        ("3", runner.dropout),
        ("4", runner.training),
        ("5", runner.unlearning),  # forsaken only
    ]
    for key, step in steps:
        if key not in wanted and not (key == "1" and "2" in wanted):
            continue
        log(f"scenario {key} ({step.__name__})")
        try:
            step()
        except Exception as exc:  # one broken scenario must not lose the others' results
            traceback.print_exc()
            runner.notes.append(f"{step.__name__} raised {type(exc).__name__}: {exc}")
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    args.doc.write_text(render(doc))
    log(f"wrote {args.out} and {args.doc}")
    return 0
