"""Secure aggregation with real server and client processes on loopback.

The server never reveals its unmasked sum, so these tests replay in the test process, with the
same code, what every client computed (local training, weighting, quantization with the same
rounding seed), sum the survivors' inputs mod 2^32 and decode them as `SecureRound.result` does.
The new model's SHA-256 must then equal the one in the server's ledger: that holds only if the
server's unmasked sum equals the sum of exactly the survivors' quantized inputs, bit for bit.
Failpoints (`FORSAKEN_FAILPOINTS`) make a client SIGKILL itself at an exact protocol step.
The abort scenario runs its server in this process (still real gRPC, client processes) so that
a gate on the coordinator's clock can fix who takes part and hold the retry while the test looks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest
import torch

from forsaken.client.secure import weighted_input
from forsaken.common import failpoints
from forsaken.common.datasets import Dataset, load_dataset
from forsaken.common.identity import NodeIdentity
from forsaken.common.models import build_model, default_architecture
from forsaken.common.partition import client_split
from forsaken.common.secagg.params import SecAggConfig, assign_indices
from forsaken.common.secagg.quantize import dequantize_sum, quantize
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.simulation import client_round_seed
from forsaken.common.tensors import flatten, to_bytes
from forsaken.common.training import load_vector, train_local
from forsaken.common.types import TrainSettings
from forsaken.server.app import ServerConfig, ServerDaemon
from forsaken.server.checkpoints import FileCheckpointStore
from forsaken.server.coordinator import Coordinator
from forsaken.server.rounds import Event, RoundAborted
from forsaken.server.secure_round import SecureSettings, round_parameters
from tests.cluster import Cluster

pytestmark = pytest.mark.slow

SEED = 23
CLIP = SecureSettings().clip  # the server's default --secagg-clip
ROUNDING_LABEL = b"forsaken/secagg/rounding/v1"


# ---- replaying what a client computed ---------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class ClientRound:
    """One client's local work in one round, as its daemon did it."""

    index: int
    update: np.ndarray  # float32 delta from train_local
    num_samples: int
    rounding_seed: bytes


def initial_model(dataset: Dataset, seed: int) -> np.ndarray:
    """The server's round-0 model for `--seed seed`."""
    arch = default_architecture(dataset.name)
    model = build_model(arch, dataset.input_shape, dataset.num_classes, seed)
    return np.asarray(flatten(model.state_dict()), dtype=np.float32)


def replay_client(
    dataset: Dataset,
    global_model: np.ndarray,
    index: int,
    count: int,
    seed: int,
    round_: int,
    settings: TrainSettings | None = None,
) -> ClientRound:
    """`ClientDaemon._train` and the rounding seed of `_secure_stage`, in this process."""
    part = client_split(dataset, index, count, "iid", 0.5, seed, held_out_fraction=0.1)
    arch = default_architecture(dataset.name)
    model = build_model(arch, dataset.input_shape, dataset.num_classes, 0)
    load_vector(model, global_model)
    train_seed = client_round_seed(seed, index, round_)
    result = train_local(model, part.x_train, part.y_train, settings or TrainSettings(), train_seed)
    rounding = hashlib.sha256(ROUNDING_LABEL + train_seed.to_bytes(8, "big")).digest()
    return ClientRound(index, result.delta.astype(np.float32), result.num_samples, rounding)


def secure_setup(num_clients: int, vector_len: int, weight_scale: float) -> SetupInfo:
    """What the server's SetupInfo says about encoding (the index does not matter here)."""
    params = round_parameters(num_clients, SecureSettings(clip=CLIP))
    return SetupInfo(1, SecAggConfig(params, vector_len), CLIP, weight_scale)


def quantized_input(client: ClientRound, setup: SetupInfo) -> np.ndarray:
    """`SecureSessions.start`: weight, clip and quantize the update (uint32, D + 1 entries)."""
    params = setup.config.params
    return quantize(
        weighted_input(client.update, client.num_samples, setup),
        client.num_samples,
        setup.clip,
        params.bits,
        client.rounding_seed,
        params.num_clients,
    )


def uint32_sum(vectors: Iterable[np.ndarray]) -> np.ndarray:
    """Sum mod 2^32, as the server adds masked inputs."""
    items = list(vectors)
    total = np.zeros_like(items[0], dtype=np.uint32)
    for vec in items:
        np.add(total, vec, out=total)
    return total


def aggregate_model(
    model: np.ndarray, summed: np.ndarray, survivors: int, setup: SetupInfo
) -> np.ndarray:
    """`SecureRound.result` and `Coordinator._finish`: decode the sum, weight, apply."""
    values, total = dequantize_sum(summed, survivors, setup.clip, setup.config.params.bits)
    delta = (values * (setup.weight_scale / total)).astype(np.float32)
    return (model + delta).astype(np.float32)


def sha256_of(model: np.ndarray) -> str:
    return hashlib.sha256(to_bytes(model)).hexdigest()


# ---- fixtures and small helpers ---------------------------------------------------------------


class ClusterFactory(Protocol):
    def __call__(self, name: str, **opts: Any) -> Cluster: ...


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    made: list[Cluster] = []

    def factory(name: str, **opts: Any) -> Cluster:
        cluster = Cluster(tmp_path / name, **opts)
        made.append(cluster)
        return cluster

    yield factory
    for cluster in made:
        cluster.stop()


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Client daemons train with one thread; the replay must too, for identical bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def node_ids(cluster: Cluster, count: int) -> dict[int, str]:
    """Create each client's node key before it starts, so the test knows who is who."""
    return {
        i: NodeIdentity.load_or_create(cluster.root / f"client-{i}").node_id for i in range(count)
    }


def rounds_numbered(status: Mapping[str, Any], number: int) -> list[dict[str, Any]]:
    return sorted((r for r in status["rounds"] if r["round"] == number), key=lambda r: r["attempt"])


def squash(text: str) -> str:
    return " ".join(text.split())


# ---- n = 10 with two SIGKILLed clients --------------------------------------------------------

N = 10
KILL_AFTER_SHARES = 3  # in U2 (shared keys) but not U3: a dropout whose pairwise masks go
KILL_AFTER_MASKED = 7  # in U3 (its masked input is in the sum): a survivor that never unmasks


@pytest.mark.parametrize(
    ("after_shares", "after_masked"),
    [
        pytest.param(
            (KILL_AFTER_SHARES,), (KILL_AFTER_MASKED,), id="10%-after-shares+10%-after-masked"
        ),
        pytest.param((1, 4, 8), (), id="30%-after-shares"),
        pytest.param((), (0, 5, 9), id="30%-after-masked"),
    ],
)
def test_ten_processes_aggregate_is_the_survivors_quantized_sum_bit_for_bit(
    make_cluster: ClusterFactory,
    one_torch_thread: None,
    after_shares: tuple[int, ...],
    after_masked: tuple[int, ...],
) -> None:
    c = make_cluster(
        "ten",
        rounds=1,
        seed=SEED,
        **{
            "min-clients": N,
            "min-completed": 5,
            "stage-timeout-s": 5,
            "round-timeout-s": 120,
            "liveness-s": 30,
        },
    )
    c.start_server()
    ids = node_ids(c, N)
    armed = {i: "secagg-after-ShareKeys" for i in after_shares}
    armed.update({i: "secagg-after-MaskedInput" for i in after_masked})
    for i in range(N):
        env = {failpoints.ENV: armed[i]} if i in armed else None
        c.start_client(i, N, env=env, seed=SEED)

    status = c.wait_for(lambda s: s["phase"] == "finished", 180, "the secure round")

    # Both failpoints fired: the processes died by SIGKILL, not by some error of their own.
    for i in armed:
        assert c.clients[i].wait(timeout=30) == -signal.SIGKILL, c.logs()
    (record,) = rounds_numbered(status, 1)  # one attempt, and it completed
    assert record["status"] == "completed", record
    assert sorted(record["selected"]) == sorted(ids.values())
    # The client killed after its masked input is in U3: its self mask is rebuilt from its
    # neighbours' shares, so its input counts. The one killed after ShareKeys is dropped and
    # only its pairwise masks are removed.
    survivors = [i for i in range(N) if i not in after_shares]
    assert sorted(record["participants"]) == sorted(ids[i] for i in survivors)
    assert len(record["participants"]) == N - len(after_shares)

    # Replay every client's round in this process.
    data = load_dataset("digits")
    start = initial_model(data, SEED)
    (round0,) = rounds_numbered(status, 0)
    assert round0["model_sha256"] == sha256_of(start)
    work = {i: replay_client(data, start, i, N, SEED, 1) for i in range(N)}
    weight_scale = float(sum(w.num_samples for w in work.values()))  # declared by all selected
    setup = secure_setup(N, start.size + 1, weight_scale)
    params = setup.config.params
    assert (params.neighbors, params.threshold) == (9, 5)  # complete graph: 3 losses are fine
    inputs = {i: quantized_input(w, setup) for i, w in work.items()}

    summed = uint32_sum(inputs[i] for i in survivors)
    assert int(summed[-1]) == record["total_samples"] == sum(work[i].num_samples for i in survivors)
    expected = aggregate_model(start, summed, len(survivors), setup)
    assert record["model_sha256"] == sha256_of(expected)
    store = FileCheckpointStore(c.root / "server" / "checkpoints")
    assert store.get(record["model_sha256"]) == to_bytes(expected)

    # The check is sharp: with the dropped client's input, or without the late one's, the
    # model would differ.
    if after_shares:
        everyone = uint32_sum(inputs.values())
        assert sha256_of(aggregate_model(start, everyone, N, setup)) != record["model_sha256"]
    if after_masked:
        early = [i for i in survivors if i not in after_masked]
        short = uint32_sum(inputs[i] for i in early)
        assert sha256_of(aggregate_model(start, short, len(early), setup)) != record["model_sha256"]

    # The survivors that lived were told the federation is over and exited cleanly.
    for i in survivors:
        if i not in after_masked:
            assert c.clients[i].wait(timeout=30) == 0


# ---- too few survivors: abort, reason visible, next attempt completes --------------------------

DROPPER = 2  # the client of three that dies right after sending its shares


class TickGate:
    """Holds an in-process coordinator's clock: while closed, no round starts or closes.

    It lets the test start the first attempt only once all three clients are live (so that
    n = 3 for certain), and hold the retry after an abort until the test has looked at it.
    """

    def __init__(self, coordinator: Coordinator) -> None:
        self.open = threading.Event()
        self.aborted = threading.Event()
        self._tick = coordinator.tick
        setattr(coordinator, "tick", self.tick)  # noqa: B010 - shadow the bound method

    def tick(self, now_ms: int) -> list[Event]:
        if not self.open.is_set():
            return []
        events = self._tick(now_ms)
        if any(isinstance(e, RoundAborted) for e in events):
            self.open.clear()
            self.aborted.set()
        return events


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@dataclass
class Aborted:
    cluster: Cluster  # the clients (the server runs in this process)
    gate: TickGate
    ids: dict[int, str]
    reason: str
    status: dict[str, Any]  # the Admin status right after the abort
    log: Records


@pytest.fixture(scope="module")
def aborted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aborted]:
    """Three clients; one dies after ShareKeys, so round 1's first attempt must abort.

    n = 3 runs classic SecAgg with k = 2 and t = 2, which tolerates no dropout. The server
    (in process, real gRPC) is gated: attempt 0 starts once all three are live, and after the
    abort the retry waits until the test opens the gate again.
    """
    root = tmp_path_factory.mktemp("abort")
    cluster = Cluster(root)
    config = ServerConfig(
        listen=cluster.address,
        state_dir=root / "server",
        dataset="digits",
        rounds=1,
        min_clients=2,
        min_completed=2,
        seed=SEED,
        poll_timeout_s=2.0,
        liveness_s=3.0,
        round_timeout_s=60.0,
        stage_timeout_s=4.0,
    )
    config.validate()
    threads = torch.get_num_threads()
    daemon = ServerDaemon(config)
    gate = TickGate(daemon.coordinator)
    log = Records()
    logging.getLogger("forsaken").addHandler(log)
    daemon.start()
    try:
        ids = node_ids(cluster, 3)
        for i in range(3):
            env = {failpoints.ENV: "secagg-after-ShareKeys"} if i == DROPPER else None
            cluster.start_client(i, 3, env=env, seed=SEED)
        cluster.wait_for(lambda s: s["connected_clients"] == 3, 90, "three live clients")
        gate.open.set()
        assert gate.aborted.wait(90), cluster.logs()
        assert cluster.clients[DROPPER].wait(timeout=30) == -signal.SIGKILL, cluster.logs()
        # The dead client falls out of the live set; the two others keep polling.
        status = cluster.wait_for(lambda s: s["connected_clients"] == 2, 30, "two live clients")

        # Which client the protocol names: in the complete graph of three, each survivor has
        # one surviving neighbour, fewer than t = 2; the dead client has two. The server checks
        # clients in index order (indices follow sorted node ids).
        params = round_parameters(3, SecureSettings())
        assert (params.neighbors, params.threshold) == (2, 2)
        index = assign_indices(ids.values())
        first = min(index[ids[i]] for i in range(3) if i != DROPPER)
        node = next(n for n, i in index.items() if i == first)  # reasons name nodes by id
        reason = (
            f"secure aggregation aborted: cannot unmask node {node}: only 1 of its "
            f"neighbours sent masked input; threshold is {params.threshold}"
        )
        yield Aborted(cluster, gate, ids, reason, status, log)
    finally:
        gate.open.set()
        cluster.stop()
        daemon.stop()
        logging.getLogger("forsaken").removeHandler(log)
        torch.set_num_threads(threads)  # the in-process server pinned it to one


def test_abort_reason_is_in_status_ledger_and_log(aborted: Aborted) -> None:
    status = aborted.status
    assert status["phase"] == "waiting"
    assert status["last_abort_reason"] == aborted.reason
    assert status["completed_rounds"] == 0
    assert status["secagg_stage"] == ""  # no secure round open while waiting
    (attempt,) = rounds_numbered(status, 1)
    assert attempt["status"] == "aborted"
    assert attempt["attempt"] == 0
    assert sorted(attempt["selected"]) == sorted(aborted.ids.values())
    assert attempt["reason"] == aborted.reason
    assert attempt["model_sha256"] == ""  # nothing was applied
    assert f"forsaken.server.app: round 1 aborted: {aborted.reason}" in aborted.log.lines


def test_forsaken_status_command_shows_abort_reason(aborted: Aborted) -> None:
    command = [sys.executable, "-m", "forsaken", "status", "--server", aborted.cluster.address]
    env = {**os.environ, "COLUMNS": "400"}  # rich must not wrap the reason
    table = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert table.returncode == 0, table.stderr[-2000:]
    assert squash(aborted.reason) in squash(table.stdout)
    as_json = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60)
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    data = json.loads(as_json.stdout)
    assert aborted.reason in [r["reason"] for r in data["rounds"] if r["status"] == "aborted"]


def test_next_attempt_with_the_two_remaining_clients_completes(aborted: Aborted) -> None:
    c = aborted.cluster
    aborted.gate.open.set()
    status = c.wait_for(lambda s: s["phase"] == "finished", 90, "round 1 after the abort")
    first, second = rounds_numbered(status, 1)
    assert (first["status"], first["attempt"]) == ("aborted", 0)
    assert (second["status"], second["attempt"]) == ("completed", 1)
    remaining = sorted(aborted.ids[i] for i in range(3) if i != DROPPER)
    assert sorted(second["selected"]) == sorted(second["participants"]) == remaining
    assert status["last_abort_reason"] == ""  # a completed round clears it


# ---- FedAvg with and without secure aggregation ----------------------------------------------

CLIENTS = 3


def final_models(c: Cluster, status: Mapping[str, Any]) -> list[np.ndarray]:
    store = FileCheckpointStore(c.root / "server" / "checkpoints")
    done = sorted(
        (r for r in status["rounds"] if r["status"] == "completed"), key=lambda r: r["round"]
    )
    return [np.frombuffer(store.get(r["model_sha256"]), dtype=np.float32) for r in done]


def test_fedavg_with_and_without_secure_aggregation_agree_within_quantization(
    make_cluster: ClusterFactory,
) -> None:
    models: dict[str, list[np.ndarray]] = {}
    samples: dict[str, list[int]] = {}
    for aggregation in ("plaintext", "secure"):
        c = make_cluster(
            aggregation,
            aggregation=aggregation,
            rounds=2,
            seed=SEED,
            **{"min-clients": CLIENTS, "min-completed": CLIENTS},
        )
        c.start_server()
        for i in range(CLIENTS):
            c.start_client(i, CLIENTS, seed=SEED)
        status = c.wait_for(lambda s: s["phase"] == "finished", 120, f"2 {aggregation} rounds")
        assert all(len(r["participants"]) == CLIENTS for r in c.completed(status))
        models[aggregation] = final_models(c, status)
        samples[aggregation] = [r["total_samples"] for r in c.completed(status)]
        c.stop()

    plain, secure = models["plaintext"], models["secure"]
    assert len(plain) == len(secure) == 3  # rounds 0, 1, 2
    assert np.array_equal(plain[0], secure[0])  # same initial model
    assert samples["plaintext"] == samples["secure"]

    # Round 1 starts from the same model and every client's update is bit-identical in both
    # runs, so the models differ only by quantization and float32 rounding. Per entry, each
    # client's stochastic rounding errs by less than one step 2*clip/(2^b - 1); the decoded sum
    # of n inputs by less than n steps, scaled by weight_scale / total_samples = 1 (no dropout,
    # every declared sample trained). Casting the delta and the new model to float32 adds at
    # most one ulp of each (two, to cover a power-of-two boundary between the runs).
    bits = round_parameters(CLIENTS, SecureSettings()).bits
    step = 2 * CLIP / ((1 << bits) - 1)
    magnitude = np.maximum(np.abs(plain[1]), np.abs(secure[1]))
    delta = np.maximum(np.abs(plain[1] - plain[0]), np.abs(secure[1] - secure[0]))
    bound = CLIENTS * step + 2 * np.spacing(magnitude) + 2 * np.spacing(delta)
    gap = np.abs(secure[1].astype(np.float64) - plain[1].astype(np.float64))
    assert np.all(gap <= bound), f"worst excess {np.max(gap - bound):.3g}"
    assert np.any(gap > 0)  # secure aggregation did run: quantization left a trace
    assert float(np.max(gap)) < 1e-6

    # Round 2 trains from models that differ by that much, and local SGD amplifies the gap
    # (about 3x with these seeds); 100x the round-1 bound still keeps it far below what one
    # round of training moves the model.
    gap2 = np.abs(secure[2].astype(np.float64) - plain[2].astype(np.float64))
    assert float(np.max(gap2)) <= 100 * float(np.max(bound))
    moved = np.abs(plain[2].astype(np.float64) - plain[1].astype(np.float64))
    assert float(np.max(gap2)) < 1e-4 * float(np.max(moved))
