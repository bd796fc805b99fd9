"""forsaken's side of each scenario, with its own daemons on loopback."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from forsaken.cli.status import fetch_status
from forsaken.common import failpoints
from forsaken.launch import Launcher, free_port
from forsaken.server.secure_round import SecureSettings, round_parameters

# The kill point of scenario 3: right after the client sent its encrypted shares.
AFTER_SHARE_KEYS = "secagg-after-ShareKeys"


def secure_parameters(clients: int) -> tuple[int, int]:
    """Neighbours k and threshold t our server picks for `clients` with its defaults."""
    p = round_parameters(clients, SecureSettings())
    return p.neighbors, p.threshold


def round_overhead(clients: int, params: int, rounds: int) -> list[float]:
    """Plaintext round times: a real server and light client processes (`bench round`)."""
    from forsaken.lab.bench import bench_round

    result = bench_round(clients, [params], rounds)["results"][0]
    return [float(d) for d in result["round_s_all"]]


def secure_round(clients: int, params: int, rounds: int, timeout_s: float) -> list[float]:
    """Secure round times: a server process and light SecAgg+ clients, one process each."""
    from forsaken.lab.bench import bench_load

    result = bench_load(clients, params, rounds, processes=clients, timeout_s=timeout_s)
    return [float(d) for d in result["round_s"]]


def dropout_round(
    clients: int, params: int, stage_timeout_s: float, timeout_s: float
) -> dict[str, Any]:
    """One secure round in which client 0 SIGKILLs itself right after sharing its keys.

    The server needs all `clients` to start and `clients - 1` updates to complete; the time
    is from the round's start until it completes (the ledger's duration).
    """
    from forsaken.lab.bench import _load_server, _load_worker
    from forsaken.server.app import ServerConfig

    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as state:
        address = f"127.0.0.1:{free_port()}"
        config = ServerConfig(
            listen=address,
            state_dir=Path(state),
            rounds=1,
            min_clients=clients,
            min_completed=clients - 1,
            round_timeout_s=timeout_s,
            stage_timeout_s=stage_timeout_s,
            liveness_s=timeout_s,
            evaluate=False,
            poll_timeout_s=5.0,
            max_workers=clients + 32,
            max_payload_mb=max(64, params * 4 // (1 << 20) + 8),
            aggregation="secure",
            log_level="warning",
        )
        ready, stop = ctx.Event(), ctx.Event()
        server = ctx.Process(target=_load_server, args=(config, params, ready, stop))
        sink = ctx.Queue()
        stop_at = time.monotonic() + timeout_s
        workers = []
        try:
            server.start()
            if not ready.wait(timeout=120):
                raise RuntimeError("the benchmark server did not start")
            for i in range(clients):
                # A spawned child copies os.environ at start(): arm the failpoint for one.
                previous = os.environ.pop(failpoints.ENV, None)
                if i == 0:
                    os.environ[failpoints.ENV] = AFTER_SHARE_KEYS
                try:
                    w = ctx.Process(target=_load_worker, args=(address, params, [i], stop_at, sink))
                    w.start()
                    workers.append(w)
                finally:
                    os.environ.pop(failpoints.ENV, None)
                    if previous is not None:
                        os.environ[failpoints.ENV] = previous
            status: dict[str, Any] = {}
            while time.monotonic() < stop_at:
                status = fetch_status(address, 0, timeout=30)
                if status["completed_rounds"] >= 1 or status.get("phase") == "finished":
                    break
                time.sleep(0.2)
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=15)
                if w.is_alive():
                    w.kill()
            server.join(timeout=30)
            if server.is_alive():
                server.kill()
    rounds = [r for r in status.get("rounds", []) if r["round"] > 0]
    done = [r for r in rounds if r["status"] == "completed"]
    return {
        "completed": bool(done),
        "time_s": float(done[0]["duration_s"]) if done else None,
        "participants": len(done[0]["participants"]) if done else 0,
        "victim_killed": workers[0].exitcode == -9 if workers else False,
        "attempts": [{"status": r["status"], "reason": r.get("reason", "")} for r in rounds],
    }


def training(
    root: Path,
    clients: int,
    rounds: int,
    local_epochs: int,
    secure: bool,
    timeout_s: float,
) -> dict[str, Any]:
    """mnist5k with real `forsaken server` and `forsaken client` processes."""
    launcher = Launcher(root, clients=clients)
    started = time.monotonic()
    try:
        launcher.start_server(
            {
                "dataset": "mnist5k",
                "rounds": rounds,
                "min-clients": clients,
                "min-completed": clients,
                "local-epochs": local_epochs,
                "aggregation": "secure" if secure else "plaintext",
                "poll-timeout-s": 2,
                "log-level": "warning",
            }
        )
        for i in range(clients):
            launcher.start_client(
                i, {"dataset": "mnist5k", "partition": f"{i}/{clients}", "log-level": "warning"}
            )
        status: dict[str, Any] = {}
        while time.monotonic() - started < timeout_s:
            status = fetch_status(launcher.address, 0, timeout=30)
            if status["completed_rounds"] >= rounds:
                break
            time.sleep(0.1)
        total = time.monotonic() - started
    finally:
        launcher.stop(grace_s=10)
    done = sorted(
        (r for r in status.get("rounds", []) if r["status"] == "completed" and r["round"] > 0),
        key=lambda r: r["round"],
    )
    return {
        "completed": len(done) >= rounds,
        "total_s": total,
        "round_s": [float(r["duration_s"]) for r in done],
        "accuracy": float(done[-1]["test_acc"]) if done and done[-1]["test_acc"] else None,
    }


def unlearning(
    root: Path,
    dataset: str,
    clients: int,
    rounds: int,
    local_epochs: int,
    method: str,
    timeout_s: float,
    *,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train `rounds` rounds, then client 0 forgets all its data with `method`, on the distributed
    path of `forsaken evaluate` (a server and `clients` daemons, mutual TLS, secure aggregation).

    The cost is evaluate's: `wall_s` from the start of the first round after ForgetMe to the
    receipt (server clock), `client_grad_evals` as reference.py counts an unlearning's (for
    `retrain` that is every retraining round's training), `strict_grad_evals` every client's
    every gradient after ForgetMe. No rounds run after U: nothing here needs U+10.
    """
    from forsaken.common.certs import init_federation
    from forsaken.lab.evaluation_run import (
        Federation,
        FederationConfig,
        FederationError,
        train_then_forget,
    )
    from forsaken.lab.evaluation_scoring import unlearning_cost

    def event(text: str) -> None:
        if log is not None:
            log(f"    {method}: {text}")

    result: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "completed": False,
        "wall_s": None,
        "bytes_up": None,
        "client_grad_evals": None,
        "strict_grad_evals": None,
        "rounds": None,
        "accuracy": None,
    }
    pki = init_federation(root / "pki", ["localhost"], clients, operators=("admin",))
    # Federation holds gRPC's core up itself (hold_grpc_core), as evaluate's does.
    fed = Federation(
        root / "run",
        pki,
        FederationConfig(
            dataset=dataset,
            clients=clients,
            seed=seed,
            local_epochs=local_epochs,
            recovery_rounds=1,  # evaluate's default
            round_timeout_s=120.0,
            method=method,
        ),
    )
    started = time.monotonic()
    try:
        run = train_then_forget(fed, rounds, 0, timeout_s, lambda _r: None, event)
        # The parameter count sizes bytes_up (reported below); the checkpoint is on disk.
        num_params = int(fed.model(run.sha(run.unlearned_round)).size)
    except FederationError as exc:
        result["error"] = f"{exc} (logs in {root / 'run' / 'logs'})"
        return result
    finally:
        fed.stop()
    cost = unlearning_cost(run, local_epochs, num_params)
    receipt = run.receipt
    acc = run.by_round(run.unlearned_round).get("test_acc")
    result |= {
        "completed": True,
        "wall_s": float(cost.counted.wall_s),
        "bytes_up": int(cost.counted.bytes_up),
        "client_grad_evals": float(cost.counted.client_grad_evals),
        "strict_grad_evals": int(cost.strict_grad_evals),
        "rounds": int(receipt["unlearning_rounds"]) + int(receipt["recovery_rounds"]),
        "unlearning_rounds": int(receipt["unlearning_rounds"]),
        "recovery_rounds": int(receipt["recovery_rounds"]),
        "stopped_by": receipt.get("stopped_by"),
        # The status reports a missing evaluation as NaN.
        "accuracy": float(acc) if isinstance(acc, int | float) and math.isfinite(acc) else None,
        "trained_rounds": run.trained_rounds,
        "forget_round": run.forget_round,
        "unlearned_round": run.unlearned_round,
        "secure_aggregation": run.secure_aggregation,
        "aborted_rounds": len(run.aborted),
        "total_s": time.monotonic() - started,
        "training_phase_s": run.seconds.get("training_phase"),
        "forget_phase_s": run.seconds.get("forget_phase"),
    }
    return result
