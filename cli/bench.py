"""`forsaken bench ...`: benchmarks that print JSON.

Every figure comes with a baseline measured in the same run, because these machines are shared
and noisy and an absolute number means little on its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_ROUND_SIZES = (100_000, 1_000_000, 10_000_000)


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    r = sub.add_parser(
        "round",
        help="server per-round overhead, excluding local training",
        description="Run a real server with light client processes that push a random update "
        "at once (no training), and report the round time the server needed to hand out the "
        "model, take the updates, aggregate and checkpoint. The baseline is the time to hash "
        "and copy the same payloads in memory.",
    )
    r.add_argument("--clients", type=int, default=5, help="client processes (default: %(default)s)")
    r.add_argument(
        "--params",
        type=int,
        action="append",
        default=None,
        help="model size in float32 entries; repeat for several (default: 100k, 1M, 10M)",
    )
    r.add_argument("--rounds", type=int, default=3, help="rounds per size (default: %(default)s)")
    r.add_argument("--json", action="store_true", help="print JSON only (no table)")
    s = sub.add_parser(
        "secagg",
        help="secure-aggregation cost against raw AES-CTR speed",
        description="Run one secure-aggregation round in process and report the client and "
        "server costs as ratios to the raw AES-256-CTR keystream time for one vector.",
    )
    s.add_argument("--clients", type=int, default=100, help="clients N (default: %(default)s)")
    s.add_argument(
        "--params", type=int, default=1_000_000, help="vector length D (default: %(default)s)"
    )
    s.add_argument(
        "--neighbors",
        type=int,
        default=16,
        help="neighbours K; 0 picks the rule's choice (default: %(default)s)",
    )
    s.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="fraction of clients dropped after sharing keys (default: %(default)s)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes for the parallel-unmask measurement (default: %(default)s)",
    )
    s.add_argument("--json", action="store_true", help="print JSON only")


def run_bench(args: argparse.Namespace) -> int:
    if args.bench == "round":
        result = bench_round(args.clients, args.params or list(DEFAULT_ROUND_SIZES), args.rounds)
    else:
        from forsaken.common.secagg.bench import bench_secagg

        result = bench_secagg(
            args.clients, args.params, args.neighbors or None, args.dropout, workers=args.workers
        )
    print(json.dumps(result, indent=2))
    return 0


# ---- round overhead ------------------------------------------------------------------------


def _light_client(address: str, params: int, seed: int, ready: Any) -> None:
    """A client that does no training: it fetches the model and pushes a fixed random update."""
    import uuid

    from forsaken.client.transport import FleetConnection, StopTask, TrainTask
    from forsaken.common import errors
    from forsaken.common.identity import NodeIdentity
    from forsaken.common.tensors import TensorSpec, to_bytes

    conn = FleetConnection(address, NodeIdentity.generate())
    rng = np.random.default_rng(seed)
    payload = to_bytes((rng.standard_normal(params) * 1e-3).astype(np.float32))
    specs = (TensorSpec("weight", (params,), "float32"),)
    conn.join(100, "synthetic", (params,), 1)
    ready.release()
    while True:
        try:
            task = conn.pull(100)
        except errors.Unavailable:
            return
        if isinstance(task, StopTask):
            return
        if isinstance(task, TrainTask):
            conn.fetch_model(task.model_sha256, 1 << 31)
            conn.push(
                request_id=uuid.uuid4().hex,
                task=task,
                num_samples=100,
                metrics={},
                tensors=specs,
                payload=payload,
            )


def _payload_floor_s(params: int, clients: int) -> float:
    """Hash and copy one model per client each way: the unavoidable in-memory work of a round."""
    data = np.zeros(params, dtype=np.float32).tobytes()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(2 * clients):
            hashlib.sha256(data).digest()
            bytes(bytearray(data))
        best = min(best, time.perf_counter() - t0)
    return best


def bench_round(clients: int, sizes: list[int], rounds: int) -> dict[str, Any]:
    from forsaken.procs import free_port
    from forsaken.server.app import ServerConfig, ServerDaemon
    from forsaken.server.evaluation import SyntheticModel

    results = []
    ctx = mp.get_context("spawn")
    for params in sizes:
        with tempfile.TemporaryDirectory() as state:
            address = f"127.0.0.1:{free_port()}"
            config = ServerConfig(
                listen=address,
                state_dir=Path(state),
                rounds=rounds,
                min_clients=clients,
                min_completed=clients,
                evaluate=False,
                poll_timeout_s=5.0,
                max_payload_mb=max(64, params * 4 // (1 << 20) + 8),
            )
            daemon = ServerDaemon(config, model=SyntheticModel(params))
            daemon.start()
            ready = ctx.Semaphore(0)
            procs = [
                ctx.Process(target=_light_client, args=(address, params, i, ready))
                for i in range(clients)
            ]
            try:
                for p in procs:
                    p.start()
                for _ in procs:
                    ready.acquire(timeout=120)
                finished = threading.Event()
                while not finished.wait(0.1):
                    if daemon.runtime.status().phase.value == "finished":
                        break
                records = [
                    r for r in daemon.ledger.rounds() if r.status == "completed" and r.round > 0
                ]
                durations = [r.duration_s for r in records]
            finally:
                for p in procs:
                    p.join(timeout=20)
                    if p.is_alive():
                        p.kill()
                daemon.stop(grace_s=1.0)
        floor = _payload_floor_s(params, clients)
        median = statistics.median(durations)
        results.append(
            {
                "params": params,
                "clients": clients,
                "rounds": len(durations),
                "round_s_median": round(median, 4),
                "round_s_all": [round(d, 4) for d in durations],
                "payload_floor_s": round(floor, 4),
                "round_over_floor": round(median / floor, 2) if floor > 0 else None,
            }
        )
    return {"bench": "round", "clients": clients, "results": results}
