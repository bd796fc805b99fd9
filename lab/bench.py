"""`forsaken bench ...`: benchmarks that print JSON.

Every figure comes with a baseline measured in the same run, because these machines are shared
and noisy and an absolute number means little on its own.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
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
    ld = sub.add_parser(
        "load",
        help="many secure-aggregation clients against one server process",
        description="Start one server (secure aggregation, a synthetic model of --params "
        "float32 entries) in its own process, and --clients light clients that do no "
        "training, as asyncio gRPC clients spread over --processes processes. Each plays the "
        "whole SecAgg+ client protocol with the client's own code: quantize a random update, "
        "advertise keys, share keys, upload the masked input, unmask. Reports the server's "
        "round times and peak memory, against one raw AES-256-CTR expansion of the vector "
        "measured in the same run.",
    )
    ld.add_argument("--clients", type=int, default=100, help="clients (default: %(default)s)")
    ld.add_argument(
        "--params", type=int, default=1_000_000, help="model size in entries (default: %(default)s)"
    )
    ld.add_argument("--rounds", type=int, default=3, help="rounds (default: %(default)s)")
    ld.add_argument(
        "--processes",
        type=int,
        default=4,
        help="client processes the clients are spread over (default: %(default)s)",
    )
    ld.add_argument(
        "--timeout-s",
        type=float,
        default=1800.0,
        help="give up after this many seconds (default: %(default)s)",
    )
    ld.add_argument("--json", action="store_true", help="print JSON only")
    from forsaken.lab.bench_generator import add_generator_arguments

    add_generator_arguments(
        sub.add_parser(
            "generator",
            help="Forsaken's generator on a large model: head sizes and step cost",
            description="Build Forsaken's dummy-gradient generator for a model (a task's, or a "
            "20M-parameter CNN) and report each tensor's head and weights beside what a dense "
            "head would need, and an unlearning round's time as a ratio to the same number of "
            "SGD steps of the model.",
        )
    )


def run_bench(args: argparse.Namespace) -> int:
    if args.bench == "generator":
        from forsaken.lab.bench_generator import bench_generator, print_table

        result = bench_generator(args.task, args.data_dir, args.steps, args.repeats)
        if not args.json:
            print_table(result)
    elif args.bench == "round":
        result = bench_round(args.clients, args.params or list(DEFAULT_ROUND_SIZES), args.rounds)
    elif args.bench == "load":
        result = bench_load(
            args.clients, args.params, args.rounds, args.processes, timeout_s=args.timeout_s
        )
    else:
        from forsaken.lab.secagg_bench import bench_secagg

        result = bench_secagg(
            args.clients, args.params, args.neighbors or None, args.dropout, workers=args.workers
        )
    print(json.dumps(result, indent=2))
    return 0


# ---- round overhead ------------------------------------------------------------------------


def _light_client(address: str, params: int, seed: int, ready: Any) -> None:
    """A client that does no training: it fetches the model and pushes a fixed random update."""
    import uuid

    from forsaken.client.transport import FleetConnection
    from forsaken.common import errors
    from forsaken.common.identity import NodeIdentity
    from forsaken.common.round_tasks import StopTask, TrainTask
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
    from forsaken.launch import free_port
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
                aggregation="plaintext",  # the plaintext round's overhead; secagg has its own
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
                    if daemon.runtime.read(lambda c, now: c.status(now)).phase.value == "finished":
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


# ---- load: many secure-aggregation clients --------------------------------------------------


class _Outbox:
    """Stands in for `FleetConnection` under `SecureSessions`: it keeps what the protocol
    wants sent, and the asyncio client sends it. So the protocol steps are the client's own
    code, and only the transport differs."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_secagg(self, message: object, **kw: Any) -> bool:
        self.sent.append(("secagg", {"message": message, **kw}))
        return False

    def push(self, **kw: Any) -> None:
        self.sent.append(("push", kw))


async def _aio_join(stub: Any, identity: Any, params: int) -> bytes:
    from forsaken.common import wire
    from forsaken.v1 import fleet_pb2

    challenge = await stub.JoinChallenge(fleet_pb2.JoinChallengeRequest(), timeout=60)
    request = wire.join_request(identity, challenge.challenge, 100, "synthetic", (params,), 1)
    reply = await stub.Join(request, timeout=60)
    return bytes(reply.session_token)


async def _aio_deliver(stub: Any, metadata: Any, kind: str, kw: dict[str, Any]) -> None:
    """Send one thing the protocol produced, as `FleetConnection` would."""
    from forsaken.common import wire, wire_secagg
    from forsaken.common.chunking import header_for
    from forsaken.v1 import fleet_pb2

    task = kw["task"]
    if kind == "secagg":
        request = wire_secagg.client_message_to_proto(
            kw["message"], request_id=kw["request_id"], task_id=task.task_id, round_=task.round
        )
        await stub.SendSecAgg(request, metadata=metadata, timeout=300)
        return
    header = fleet_pb2.UploadHeader(
        request_id=kw["request_id"],
        task_id=task.task_id,
        round=task.round,
        base_model_sha256=bytes.fromhex(task.model_sha256),
        num_samples=kw["num_samples"],
        metrics=wire.metrics_to_proto(kw["metrics"]),
        payload=wire.payload_header_to_proto(header_for(kw["tensors"], kw["payload"])),
    )
    chunks = wire.upload_chunks(header, kw["payload"])
    await stub.PushUpdate(chunks, metadata=metadata, timeout=600)


async def _aio_client(address: str, params: int, seed: int, stop_at: float) -> dict[str, int]:
    """One light client: joins, then answers every secure stage until told to stop."""
    import asyncio

    import grpc

    from forsaken.client.secure import SecureSessions
    from forsaken.common import errors
    from forsaken.common.identity import NodeIdentity
    from forsaken.common.secagg.client_states import ClientDone
    from forsaken.common.secagg.setup import SetupInfo
    from forsaken.common.wire_round_tasks import task_from_proto
    from forsaken.v1 import fleet_pb2, fleet_pb2_grpc

    stats = {"rounds": 0, "refused": 0, "retries": 0, "neighbors": 0}
    identity = NodeIdentity.generate()
    outbox = _Outbox()
    sessions = SecureSessions(outbox, identity.signing_seed)
    rng = np.random.default_rng(seed)
    loop = asyncio.get_running_loop()
    limit = 64 << 20
    options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]

    def step(task: Any) -> list[tuple[str, dict[str, Any]]]:
        outbox.sent.clear()
        if isinstance(task.message, SetupInfo):
            stats["neighbors"] = task.message.config.params.neighbors
            update = (rng.standard_normal(params) * 1e-3).astype(np.float32)
            sessions.start(task, update, 100, rng.bytes(32))
        else:
            sessions.handle(task)
        return list(outbox.sent)

    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = fleet_pb2_grpc.FleetStub(channel)
        metadata = (("x-forsaken-session-bin", await _aio_join(stub, identity, params)),)
        while time.monotonic() < stop_at:
            try:
                task = await stub.PullTask(
                    fleet_pb2.PullTaskRequest(num_samples=100), metadata=metadata, timeout=60
                )
                if task.kind == fleet_pb2.TASK_KIND_STOP:
                    break
                if task.kind != fleet_pb2.TASK_KIND_SECAGG:
                    continue
                secagg = task_from_proto(task)
                try:
                    # CPU-bound (quantize, key agreement, mask expansion): off the event loop,
                    # so this process's other clients keep polling and uploading meanwhile.
                    outgoing = await loop.run_in_executor(None, step, secagg)
                except errors.ForsakenError:
                    stats["refused"] += 1
                    continue
                for kind, kw in outgoing:
                    await _aio_deliver(stub, metadata, kind, kw)
                if isinstance(sessions.current_state(), ClientDone):
                    stats["rounds"] += 1
            except grpc.aio.AioRpcError as exc:
                stats["retries"] += 1
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    token = await _aio_join(stub, identity, params)
                    metadata = (("x-forsaken-session-bin", token),)
                elif exc.code() in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    await asyncio.sleep(0.5)
                # Others (a stale task, a refused step) are the protocol's business: poll on.
    return stats


def _load_worker(address: str, params: int, seeds: list[int], stop_at: float, out: Any) -> None:
    """A client process: its share of the light clients, on one asyncio event loop."""
    import asyncio

    async def run_all() -> list[dict[str, int]]:
        return list(
            await asyncio.gather(*(_aio_client(address, params, s, stop_at) for s in seeds))
        )

    # time.monotonic is system-wide on Linux, so the parent's deadline holds here too.
    out.put(asyncio.run(run_all()))


def _load_server(config: Any, params: int, ready: Any, stop: Any) -> None:
    """The server process: a real daemon with a synthetic model (the CLI cannot take one)."""
    from forsaken.common.logs import setup_logging
    from forsaken.server.app import ServerDaemon
    from forsaken.server.evaluation import SyntheticModel

    setup_logging("warning", "text", "bench server")
    daemon = ServerDaemon(config, model=SyntheticModel(params))
    daemon.start()
    ready.set()
    stop.wait()
    daemon.stop(grace_s=1.0)


def _peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process: the most resident memory it ever held, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM for pid {pid}")


def _aes_floor_s(params: int) -> float:
    """Best time of one raw AES-256-CTR expansion of `params` words: a client does about
    k + 1 of them per round, the server one per survivor (see secagg.bench)."""
    from forsaken.common.secagg.crypto import expand_mask

    out = np.empty(params, dtype=np.uint32)
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        expand_mask(b"\x01" * 32, params, out)
        best = min(best, time.perf_counter() - t0)
    return best


def bench_load(
    clients: int, params: int, rounds: int, processes: int = 4, *, timeout_s: float = 1800.0
) -> dict[str, Any]:
    from forsaken.cli.status import fetch_status
    from forsaken.launch import free_port
    from forsaken.server.app import ServerConfig

    if clients < 2 or params < 1 or rounds < 1 or processes < 1:
        raise ValueError("load needs clients >= 2, params >= 1, rounds >= 1, processes >= 1")
    processes = min(processes, clients)
    started = time.monotonic()
    stop_at = started + timeout_s
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory() as state:
        address = f"127.0.0.1:{free_port()}"
        slack = timeout_s  # this benchmark measures rounds; it never wants one to time out
        config = ServerConfig(
            listen=address,
            state_dir=Path(state),
            rounds=rounds,
            min_clients=clients,
            min_completed=clients,
            round_timeout_s=slack,
            stage_timeout_s=slack,
            liveness_s=slack,
            evaluate=False,
            poll_timeout_s=5.0,
            max_workers=clients + 32,  # every client holds one thread in its long-poll
            max_payload_mb=max(64, params * 4 // (1 << 20) + 8),
            aggregation="secure",
            log_level="warning",
        )
        ready, stop = ctx.Event(), ctx.Event()
        server = ctx.Process(target=_load_server, args=(config, params, ready, stop))
        results = ctx.Queue()
        seeds = list(range(clients))
        workers = [
            ctx.Process(
                target=_load_worker,
                args=(address, params, seeds[i::processes], stop_at, results),
            )
            for i in range(processes)
        ]
        try:
            server.start()
            if not ready.wait(timeout=120):
                raise RuntimeError("the benchmark server did not start")
            for w in workers:
                w.start()
            per_client: list[dict[str, int]] = []
            for _ in workers:
                per_client += results.get(timeout=max(1.0, stop_at - time.monotonic() + 60))
            status = fetch_status(address, 0, timeout=30)
            assert server.pid is not None
            peak = _peak_rss_mb(server.pid)
        finally:
            for w in workers:
                w.join(timeout=30)
                if w.is_alive():
                    w.kill()
            stop.set()
            server.join(timeout=30)
            if server.is_alive():
                server.kill()
    wall = time.monotonic() - started
    done = sorted(
        (r for r in status["rounds"] if r["status"] == "completed" and r["round"] > 0),
        key=lambda r: r["round"],
    )
    durations = [round(float(r["duration_s"]), 3) for r in done]
    median = statistics.median(durations) if durations else None
    floor = _aes_floor_s(params)
    k = max((c["neighbors"] for c in per_client), default=0)
    # The AES work a round cannot avoid: each client expands its k pairwise masks and its self
    # mask, the server one self mask per survivor; spread over every core of this machine.
    expansions = clients * (k + 1) + clients
    protocol_floor = expansions * floor / (os.cpu_count() or 1)
    return {
        "bench": "load",
        "clients": clients,
        "params": params,
        "rounds": rounds,
        "processes": processes,
        "completed_rounds": int(status["completed_rounds"]),
        "aborted_attempts": sum(1 for r in status["rounds"] if r["status"] == "aborted"),
        "round_s": durations,
        "round_s_median": median,
        "server_peak_rss_mb": peak,
        "client_rounds_done": sum(c["rounds"] for c in per_client),
        "client_steps_refused": sum(c["refused"] for c in per_client),
        "client_rpc_retries": sum(c["retries"] for c in per_client),
        "aes_floor_s": float(f"{floor:.4g}"),
        "round_over_aes_floor": round(median / floor, 1) if median and floor > 0 else None,
        "secagg_neighbors": k,
        "aes_expansions_per_round": expansions,
        "protocol_aes_floor_s": float(f"{protocol_floor:.4g}"),
        "round_over_protocol_floor": round(median / protocol_floor, 2)
        if median and protocol_floor > 0
        else None,
        "wall_s": round(wall, 1),
    }
