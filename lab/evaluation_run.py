"""The federation of `forsaken evaluate` as OS processes: start and stop the daemons, drive
ForgetMe through the Owner API, read the ledger (status) and the checkpoints.

The forgetting client's daemon reports every forget step it computes to STEP_LOG through its
observation hook (`forsaken client --events-file`), which is how the client-side cost is
measured.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.forget_states import ForgetState

if TYPE_CHECKING:
    from forsaken.common.certs import Layout

FORGETTER = 0  # the client that forgets (and holds any planted data), as in reference.py
STEP_LOG = "client-0-events.jsonl"


@dataclass(frozen=True, slots=True)
class FederationConfig:
    dataset: str
    clients: int
    seed: int
    local_epochs: int | None = None  # None: the server's default
    recovery_rounds: int = 1
    round_timeout_s: float = 60.0
    architecture: str = ""
    scheme: str = "iid"
    alpha: float = 0.5
    port: int = 0
    method: str = "forsaken"
    test_bed: str = ""  # planted in client 0's data (`forsaken client --test-bed`); "": none
    sample_ids: tuple[int, ...] = ()  # what client 0's owner asks to forget; (): all of it
    task: str = ""  # a task reference for both daemons; empty: the built-in task of dataset
    data_dir: str = ""


@dataclass
class ForgetRun:
    """What the distributed path produced: the ledger, the models' rounds and the receipt."""

    rounds: list[dict[str, Any]]  # completed rounds from the ledger, ascending, round 0 first
    trained_rounds: int  # T: O is the model after this round
    forget_round: int  # the round after which ForgetMe started (T when all went to plan)
    unlearned_round: int  # the round whose model the receipt names
    after_round: int | None  # U+k's round, if further rounds were asked for
    receipt: dict[str, Any]
    steps: list[dict[str, Any]]  # the forgetting client's engine steps, one per round
    secure_aggregation: bool
    aborted: list[dict[str, Any]] = field(default_factory=list)  # aborted round attempts
    seconds: dict[str, float] = field(default_factory=dict)

    def sha(self, round_: int) -> str:
        return self.by_round(round_)["model_sha256"]

    def by_round(self, round_: int) -> dict[str, Any]:
        for r in self.rounds:
            if r["round"] == round_:
                return r
        raise KeyError(f"round {round_} is not in the ledger")


class FederationError(RuntimeError):
    pass


_GRPC_ANCHOR: list[Any] = []


def hold_grpc_core() -> None:
    """Keep gRPC's core initialised for the life of this process.

    gRPC shuts its core down on a background thread when the last channel closes, and a fork
    in that window (`procs.spawn` forks: it passes a preexec_fn) hangs for good in gRPC's
    pthread_atfork handler. Status polls and health checks open and close channels right before
    daemons are spawned, so without this the launcher deadlocks now and then (seen here:
    stuck in `__run_prefork_handlers`). One channel that is never used and never closed keeps
    the core up."""
    if not _GRPC_ANCHOR:
        import grpc

        _GRPC_ANCHOR.append(grpc.insecure_channel("127.0.0.1:0"))


class Federation:
    """One server and N client daemons as OS processes on loopback with mutual TLS, started by
    the library's launcher (`forsaken.launch.Launcher`).

    Client 0 forgets, and holds the planted data of the test bed if any. Its daemon reports
    every forget step it computes to STEP_LOG (`--events-file`), which is how the client-side
    cost is measured."""

    def __init__(self, root: Path, pki: Layout, config: FederationConfig) -> None:
        from forsaken.launch import Launcher

        hold_grpc_core()
        self.root = root
        self.config = config
        self.launcher = Launcher(root, clients=config.clients, pki=pki, port=config.port)
        self.address = self.launcher.address
        self.operator = pki.operator_dir("admin")

    def client_dir(self, index: int) -> Path:
        return self.launcher.client_dir(index)

    @property
    def server_dir(self) -> Path:
        return self.launcher.server_dir

    @property
    def step_log(self) -> Path:
        return self.root / STEP_LOG

    # -- processes --

    def start_server(self, rounds: int, min_completed: int) -> None:
        c = self.config
        flags: dict[str, object] = {
            "dataset": c.dataset,
            "rounds": rounds,
            "min-clients": c.clients,
            "min-completed": min_completed,
            "round-timeout-s": c.round_timeout_s,
            "seed": c.seed,
            "recovery-rounds": c.recovery_rounds,
            "aggregation": "secure",
            "poll-timeout-s": 2,
            "local-epochs": c.local_epochs or None,
        }
        self.launcher.start_server(flags | _task_flags(c))

    def start_client(self, index: int) -> None:
        c = self.config
        flags: dict[str, object] = {
            "dataset": c.dataset,
            "partition": f"{index}/{c.clients}",
            "scheme": c.scheme,
            "alpha": c.alpha,
            "seed": c.seed,
        } | _task_flags(c)
        if index == FORGETTER:
            flags["events-file"] = self.step_log
            if c.test_bed:
                flags["test-bed"] = c.test_bed
        self.launcher.start_client(index, flags)

    def wait_clients_exit(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for d in self.launcher.client_daemons.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                d.wait(max(0.1, deadline - time.monotonic()))

    def stop(self) -> None:
        self.launcher.stop()

    def check_alive(self) -> None:
        from forsaken.launch import DaemonExited

        try:
            self.launcher.check_alive()
        except DaemonExited as exc:
            raise FederationError(f"{exc}; see {self.root / 'logs'}") from None

    # -- views --

    def status(self) -> dict[str, Any]:
        from forsaken.cli.status import fetch_status

        return fetch_status(self.address, 0, timeout=10, tls_dir=self.operator)

    def model(self, sha256: str) -> np.ndarray:
        from forsaken.server.checkpoints import FileCheckpointStore

        payload = FileCheckpointStore(self.server_dir / "checkpoints").get(sha256)
        return np.frombuffer(payload, dtype="<f4").astype(np.float32)

    def request_forget(self, index: int, method: str, timeout_s: float) -> str:
        """The owner of client `index` asks it to forget the configured samples (all of its
        data when none are configured) through the Owner API."""
        import grpc

        from forsaken.cli.forget import owner_address
        from forsaken.common import wire_forget
        from forsaken.v1 import owner_pb2, owner_pb2_grpc

        address_file = self.client_dir(index) / "owner_address"
        request_id = f"evaluate-{uuid.uuid4().hex}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if address_file.exists():
                with grpc.insecure_channel(owner_address(str(self.client_dir(index)))) as ch:
                    stub = owner_pb2_grpc.OwnerStub(ch)
                    try:
                        stub.Forget(
                            owner_pb2.OwnerForgetRequest(
                                request_id=request_id,
                                forget_method=wire_forget.method_to_proto(
                                    ForgetMethod(method) if method else None
                                ),
                                sample_ids=list(self.config.sample_ids),
                            ),
                            timeout=30,
                        )
                        return request_id
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:
                            raise FederationError(
                                f"ForgetMe refused: {exc.code().name}: {exc.details()}"
                            ) from None
            time.sleep(0.2)
        raise FederationError(f"client {index}'s Owner API did not come up in {timeout_s:.0f}s")

    def steps(self) -> list[dict[str, Any]]:
        """The forgetting client's forget steps, in the order it computed them."""
        from forsaken.client.observers import read_events

        _, steps = read_events(self.step_log)
        return [
            {
                "forget_id": s.forget_id,
                "method": s.method,
                "round": s.round,
                "gradient_evaluations": s.gradient_evaluations,
                "num_samples": s.num_samples,
                "done": s.done,
                "seconds": s.seconds,
            }
            for s in steps
        ]


def _task_flags(c: FederationConfig) -> dict[str, object]:
    """What names the model and data, for both daemons alike."""
    flags: dict[str, object] = {}
    for name, value in (("architecture", c.architecture), ("task", c.task)):
        if value:
            flags[name] = value
    if c.data_dir:
        flags["data-dir"] = c.data_dir
    return flags


def completed_rounds(status: dict[str, Any]) -> list[dict[str, Any]]:
    done = [r for r in status["rounds"] if r["status"] == "completed"]
    return sorted(done, key=lambda r: r["round"])


RoundCallback = Callable[[dict[str, Any]], None]


def _ended(state: str) -> bool:
    return ForgetState(state).terminal


EventCallback = Callable[[str], None]


def train_then_forget(
    fed: Federation,
    rounds: int,
    further_rounds: int,
    timeout_s: float,
    on_round: RoundCallback,
    on_event: EventCallback,
) -> ForgetRun:
    """Train T rounds, restart, forget client 0's data from O, then run `further_rounds` more.

    The restart is what makes the request land exactly between rounds T and T + 1: a running
    federation starts round T + 1 as soon as T closes, and a daemon that has asked to forget
    trains on nothing from that moment, so a request racing a round start would either miss
    client 0's contribution to O or stall the round until its deadline."""
    import grpc

    started = time.monotonic()
    c = fed.config
    shown: set[tuple[int, int]] = set()

    def follow(stop: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        while True:
            if time.monotonic() - started > timeout_s:
                raise FederationError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            fed.check_alive()
            try:
                status = fed.status()
            except grpc.RpcError:  # the server is busy; try again
                time.sleep(0.5)
                continue
            for r in completed_rounds(status):
                key = (r["round"], r["attempt"])
                if r["round"] > 0 and key not in shown:
                    shown.add(key)
                    on_round(r)
            if stop(status):
                return status
            time.sleep(0.3)

    # Phase 1: exactly T rounds with every client; a dropout aborts and retries the round.
    planted = f" holding the {c.test_bed} test bed" if c.test_bed else ""
    on_event(f"training {rounds} rounds with client {FORGETTER}{planted}")
    fed.start_server(rounds, min_completed=c.clients)
    for i in range(c.clients):
        fed.start_client(i)
    status = follow(
        lambda s: s["phase"] == "finished" and s["completed_rounds"] >= rounds,
        f"{rounds} training rounds",
    )
    t_trained = time.monotonic()
    fed.wait_clients_exit(timeout_s=30)  # they stop on the server's STOP
    fed.stop()

    # Phase 2: resume from the ledger; the request is on record before any round can start.
    what = f"{len(c.sample_ids)} of its samples" if c.sample_ids else "all its data"
    on_event(f"restarting; client {FORGETTER} asks to forget {what} ({c.method})")
    (fed.client_dir(FORGETTER) / "owner_address").unlink(missing_ok=True)
    fed.start_server(0, min_completed=c.clients - 1)
    fed.start_client(FORGETTER)
    fed.request_forget(FORGETTER, c.method, timeout_s=120)
    follow(lambda s: bool(s["forget_requests"]), "the server to record the request")
    for i in range(c.clients):
        if i != FORGETTER:
            fed.start_client(i)
    status = follow(
        lambda s: any(_ended(f["state"]) for f in s["forget_requests"]),
        "the forget request to complete",
    )
    (record,) = status["forget_requests"]
    if record["state"] != ForgetState.COMPLETED:
        raise FederationError(f"forget request failed: {record['reason']}")
    receipt = record["receipt"]
    on_event(
        f"forget completed: {receipt['unlearning_rounds']} unlearning + "
        f"{receipt['recovery_rounds']} recovery rounds"
    )
    by_sha = {r["model_sha256"]: r["round"] for r in completed_rounds(status)}
    u_round = by_sha[receipt["model_sha256_after"]]
    forget_round = by_sha[receipt["model_sha256_before"]]
    after_round = None
    if further_rounds:
        on_event(f"{further_rounds} more ordinary rounds after U")
        after_round = u_round + further_rounds
        status = follow(lambda s: s["completed_rounds"] >= after_round, "rounds after U")
    t_done = time.monotonic()
    fed.stop()
    return ForgetRun(
        rounds=completed_rounds(status),
        trained_rounds=rounds,
        forget_round=forget_round,
        unlearned_round=u_round,
        after_round=after_round,
        receipt=receipt,
        steps=fed.steps(),
        secure_aggregation=bool(status.get("secure_aggregation")),
        aborted=[r for r in status["rounds"] if r["status"] == "aborted"],
        seconds={"training_phase": t_trained - started, "forget_phase": t_done - t_trained},
    )
