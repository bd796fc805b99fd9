"""forsaken's side of each scenario, with its own daemons on loopback."""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from forsaken.common import failpoints
from forsaken.procs import forsaken_command, free_port, spawn, terminate, wait_healthy
from forsaken.server.secure_round import SecureSettings, round_parameters
from forsaken.status import fetch_status

# The kill point of scenario 3: right after the client sent its encrypted shares.
AFTER_SHARE_KEYS = "secagg-after-ShareKeys"


def secure_parameters(clients: int) -> tuple[int, int]:
    """Neighbours k and threshold t our server picks for `clients` with its defaults."""
    p = round_parameters(clients, SecureSettings())
    return p.neighbors, p.threshold


def round_overhead(clients: int, params: int, rounds: int) -> list[float]:
    """Plaintext round times: a real server and light client processes (`bench round`)."""
    from forsaken.bench import bench_round

    result = bench_round(clients, [params], rounds)["results"][0]
    return [float(d) for d in result["round_s_all"]]


def secure_round(clients: int, params: int, rounds: int, timeout_s: float) -> list[float]:
    """Secure round times: a server process and light SecAgg+ clients, one process each."""
    from forsaken.bench import bench_load

    result = bench_load(clients, params, rounds, processes=clients, timeout_s=timeout_s)
    return [float(d) for d in result["round_s"]]


def dropout_round(
    clients: int, params: int, stage_timeout_s: float, timeout_s: float
) -> dict[str, Any]:
    """One secure round in which client 0 SIGKILLs itself right after sharing its keys.

    The server needs all `clients` to start and `clients - 1` updates to complete; the time
    is from the round's start until it completes (the ledger's duration).
    """
    from forsaken.bench import _load_server, _load_worker
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
    address = f"127.0.0.1:{free_port()}"
    server_args = [
        "server",
        "--listen",
        address,
        "--state-dir",
        str(root / "server"),
        "--dataset",
        "mnist5k",
        "--rounds",
        str(rounds),
        "--min-clients",
        str(clients),
        "--min-completed",
        str(clients),
        "--local-epochs",
        str(local_epochs),
        "--aggregation",
        "secure" if secure else "plaintext",
        "--poll-timeout-s",
        "2",
        "--log-level",
        "warning",
    ]
    started = time.monotonic()
    procs = [spawn(forsaken_command(*server_args), root / "logs" / "server.log")]
    try:
        wait_healthy(address, timeout_s=120, proc=procs[0])
        for i in range(clients):
            client_args = [
                "client",
                "--server",
                address,
                "--state-dir",
                str(root / f"client-{i}"),
                "--dataset",
                "mnist5k",
                "--partition",
                f"{i}/{clients}",
                "--owner-listen",
                "127.0.0.1:0",
                "--max-backoff-s",
                "1",
                "--log-level",
                "warning",
            ]
            procs.append(spawn(forsaken_command(*client_args), root / "logs" / f"client-{i}.log"))
        status: dict[str, Any] = {}
        while time.monotonic() - started < timeout_s:
            status = fetch_status(address, 0, timeout=30)
            if status["completed_rounds"] >= rounds:
                break
            time.sleep(0.1)
        total = time.monotonic() - started
    finally:
        terminate(procs, grace_s=10)
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
