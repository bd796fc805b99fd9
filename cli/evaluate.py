"""`forsaken evaluate`: the unlearning evaluation of DESIGN §5, with U from the real daemons.

See HOW_IT_WORKS and COST_BASIS below (both are printed by `forsaken evaluate --help`).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import inspect
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from rich.console import Console

    from forsaken.common.certs import Layout
    from forsaken.common.datasets import Dataset
    from forsaken.common.partition import ClientData
    from forsaken.common.unlearning.reference import ModelReport, ProtocolConfig

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

COST_BASIS = """\
Cost (evaluation.json `cost`) is the work after ForgetMe, per seed, averaged over seeds:
  client_grad_evals: per-sample gradient evaluations as reference.py's grad_evals_unlearning
    counts them: the forgetting client's engine (recorded per step inside its daemon) plus every
    client's training in rounds in which the forgetting client uploaded no step (recovery); the
    others' training during unlearning rounds is left out. evaluation_detail.json also has the
    strict count (everything after ForgetMe). R: the retrain's training; pga: reference.py's.
  bytes_up: uploads x (parameters + 1) x 4 bytes, the masked uint32 vector a client sends per
    secure round; key advertisements, shares and unmasking messages are not counted (the
    server's byte counter sees plaintext uploads only). U's uploads are the ledger's
    participants of every round from T + 1 to U's round; R and pga: reference.py's count.
  wall_s: U: from the start of round T + 1 to the receipt (server clock). R: the T training
    rounds of this federation, which a retrain repeats (ledger durations). pga: client compute
    seconds in the in-process runner (there is no distributed pga run; a lower bound on its
    wall time).
"""

FURTHER_ROUNDS = 10  # the protocol's U+10 (the key `unlearned_after_10_rounds` names it)
FORGETTER = 0  # the client holding the backdoor test bed, as in reference.py
STEP_LOG = "forget_steps.jsonl"
DETAIL_FILE = "evaluation_detail.json"
BYTES_PER_ENTRY = 4  # a masked secure-aggregation input is a uint32 vector
METHODS = ("forsaken", "pga", "finetune", "retrain")

# evaluation.json model keys, and reference.py's names for the same models.
MODEL_KEYS = (
    "original",
    "unlearned",
    "retrained",
    "retrained_alt",
    "finetune",
    "pga",
    "unlearned_after_10_rounds",
)
REFERENCE_NAMES = {
    "original": "O",
    "unlearned": "U",
    "unlearned_after_10_rounds": "U+10",
    "retrained": "R",
    "retrained_alt": "R'",
    "finetune": "finetune",
    "pga": "pga",
}
# Models that come from the daemons; the others from the in-process runner.
DISTRIBUTED = ("original", "unlearned", "unlearned_after_10_rounds")
COST_KEYS = ("unlearned", "retrained", "pga")


# ---- scores -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scores:
    """The protocol's metrics of one model (evaluation.json's field names)."""

    test_acc: float
    asr: float
    mia_auc: float
    mia_tpr_at_1fpr: float
    kl_forget: float  # KL(R ‖ model) over the forget set's and the triggered test inputs
    fr: float  # forgetting rate vs O under the median-test-loss oracle

    @classmethod
    def of_report(cls, report: ModelReport) -> Scores:
        return cls(
            test_acc=report.accuracy,
            asr=report.asr,
            mia_auc=report.mia_auc,
            mia_tpr_at_1fpr=report.mia_tpr_1fpr,
            kl_forget=report.kl_forget,
            fr=report.forgetting_rate,
        )


METRICS = tuple(Scores.__dataclass_fields__)


class Scorer:
    """Scores models on reference.py's probes for one seed, against R's outputs and O's members.

    The probes are built as reference.py builds them: client 0's `client_split` part poisoned by
    `poison_client` with the protocol's target, fraction and seed; the triggered set is every
    non-target test image stamped with the same trigger.
    """

    def __init__(self, cfg: ProtocolConfig, seed: int) -> None:
        from forsaken.common.backdoor import dataset_trigger, poison_client, triggered_test_set
        from forsaken.common.datasets import load_dataset
        from forsaken.common.models import build_model, default_architecture
        from forsaken.common.partition import client_split

        self.cfg = cfg
        self.seed = seed
        self.ds: Dataset = load_dataset(cfg.dataset)
        own = client_split(self.ds, cfg.forget_client, cfg.clients, seed=seed)
        planted = poison_client(
            own, cfg.target, cfg.poison_fraction, seed, dataset_trigger(self.ds)
        )
        self.forget: ClientData = planted.data
        self.trig_x, _ = triggered_test_set(self.ds, cfg.target, planted.trigger)
        self.model: torch.nn.Module = build_model(
            default_architecture(self.ds.name), self.ds.input_shape, self.ds.num_classes, seed
        )
        self._r_side: np.ndarray | None = None
        self._members_o: np.ndarray | None = None

    def retrain(self) -> np.ndarray:
        """R's vector: `run_fedavg` without client 0's data, exactly as reference.run_seed."""
        import torch

        from forsaken.common.simulation import run_fedavg
        from forsaken.common.training import TrainConfig

        torch.set_num_threads(1)  # as reference.run_seed: the same seed gives the same bits
        result = run_fedavg(
            self.ds,
            self.cfg.clients,
            self.cfg.rounds,
            seed=self.seed,
            train_cfg=TrainConfig(local_epochs=self.cfg.local_epochs),
            forget_ids=self.forget.ids_train.tolist(),
        )
        return result.final_vector

    def anchor(self, r_vec: np.ndarray, o_vec: np.ndarray) -> None:
        """Fix the references: R's outputs (for KL) and O's members (for FR)."""
        from forsaken.common import metrics as M

        self._r_side = self._outputs(r_vec, np.concatenate([self.forget.x_train, self.trig_x]))
        forget = M.per_sample_losses(self._outputs(o_vec, self.forget.x_train), self.forget.y_train)
        test = M.per_sample_losses(self._outputs(o_vec, self.ds.x_test), self.ds.y_test)
        self._members_o = M.oracle_members(forget, test)

    def score(self, vec: np.ndarray) -> Scores:
        from forsaken.common import metrics as M

        if self._r_side is None or self._members_o is None:
            raise RuntimeError("Scorer.anchor must run before Scorer.score")
        out_forget = self._outputs(vec, self.forget.x_train)
        out_trig = self._outputs(vec, self.trig_x)
        out_test = self._outputs(vec, self.ds.x_test)
        forget_losses = M.per_sample_losses(out_forget, self.forget.y_train)
        test_losses = M.per_sample_losses(out_test, self.ds.y_test)
        side = np.concatenate([out_forget, out_trig])
        return Scores(
            test_acc=M.accuracy(out_test, self.ds.y_test),
            asr=M.attack_success_rate(out_trig, self.cfg.target),
            mia_auc=M.mia_auc(forget_losses, test_losses),
            mia_tpr_at_1fpr=M.tpr_at_fpr(forget_losses, test_losses, 0.01),
            kl_forget=M.kl_divergence(M.softmax(self._r_side), M.softmax(side)),
            fr=M.forgetting_rate(self._members_o, M.oracle_members(forget_losses, test_losses)),
        )

    def _outputs(self, vec: np.ndarray, x: np.ndarray) -> np.ndarray:
        from forsaken.common import metrics as M
        from forsaken.common.training import load_vector

        load_vector(self.model, vec)
        return M.model_outputs(self.model, x)


def check_scorer(mine: Scores, theirs: ModelReport, what: str) -> None:
    """Fail loudly if this module's scoring no longer matches reference.py's on one model.

    FR is left out: it is relative to O, and the daemons' O differs from the in-process O by
    secure aggregation's quantization."""
    expected = Scores.of_report(theirs)
    for name in ("test_acc", "asr", "mia_auc", "mia_tpr_at_1fpr"):
        a, b = getattr(mine, name), getattr(expected, name)
        if not np.isclose(a, b, rtol=0, atol=1e-9):
            raise RuntimeError(
                f"{what}: {name} is {a} here but {b} in reference.py; the scorer has drifted "
                "from forsaken.common.unlearning.reference"
            )


# ---- the federation as processes ----------------------------------------------------------


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
    """One server and N client daemons as OS processes on loopback with mutual TLS.

    Client 0 holds the backdoor test bed. Its daemon records every forget step it computes to
    STEP_LOG (see `_probe_main`), which is how the client-side cost is measured."""

    def __init__(self, root: Path, pki: Layout, config: FederationConfig) -> None:
        from forsaken.procs import free_port

        hold_grpc_core()
        self.root = root
        self.pki = pki
        self.config = config
        self.address = f"127.0.0.1:{config.port or free_port()}"
        self.operator = pki.operator_dir("admin")
        self.server: subprocess.Popen[bytes] | None = None
        self.clients: dict[int, subprocess.Popen[bytes]] = {}
        root.mkdir(parents=True, exist_ok=True)
        for i in range(config.clients):
            if not self.client_dir(i).exists():
                shutil.copytree(pki.client_dir(i), self.client_dir(i))  # node key and cert

    def client_dir(self, index: int) -> Path:
        return self.root / f"client-{index}"

    @property
    def server_dir(self) -> Path:
        return self.root / "server"

    @property
    def step_log(self) -> Path:
        return self.root / STEP_LOG

    @property
    def procs(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in (self.server, *self.clients.values()) if p is not None]

    # -- processes --

    def start_server(self, rounds: int, min_completed: int) -> None:
        from forsaken.common.tls import channel_credentials
        from forsaken.procs import forsaken_command, spawn, wait_healthy

        c, tls = self.config, self.pki.server_dir
        flags: dict[str, object] = {
            "tls-cert": tls / "cert.pem",
            "tls-key": tls / "key.pem",
            "tls-ca": self.pki.ca_cert,
            "listen": self.address,
            "state-dir": self.server_dir,
            "dataset": c.dataset,
            "rounds": rounds,
            "min-clients": c.clients,
            "min-completed": min_completed,
            "round-timeout-s": c.round_timeout_s,
            "seed": c.seed,
            "recovery-rounds": c.recovery_rounds,
            "aggregation": "secure",
            "poll-timeout-s": 2,
        }
        if c.architecture:
            flags["architecture"] = c.architecture
        if c.local_epochs:
            flags["local-epochs"] = c.local_epochs
        self.server = spawn(
            forsaken_command(*_argv("server", flags)), self.root / "logs" / "server.log"
        )
        wait_healthy(
            self.address,
            timeout_s=120,
            proc=self.server,
            credentials=channel_credentials(self.operator),
        )

    def start_client(self, index: int) -> None:
        from forsaken.procs import forsaken_command, spawn

        c, state = self.config, self.client_dir(index)
        flags: dict[str, object] = {
            "tls-cert": state / "cert.pem",
            "tls-key": state / "key.pem",
            "tls-ca": state / "ca.pem",
            "server": self.address,
            "state-dir": state,
            "dataset": c.dataset,
            "partition": f"{index}/{c.clients}",
            "scheme": c.scheme,
            "alpha": c.alpha,
            "seed": c.seed,
            "owner-listen": "127.0.0.1:0",
            "max-backoff-s": 1,
        }
        args = _argv("client", flags)
        if index == FORGETTER:
            args.append("--backdoor")
            # The same daemon, started through the recorder of its forget steps.
            argv = [sys.executable, "-m", "forsaken.evaluate", "--step-log", str(self.step_log)]
            argv += ["--", *args]
        else:
            argv = forsaken_command(*args)
        self.clients[index] = spawn(argv, self.root / "logs" / f"client-{index}.log")

    def wait_clients_exit(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for p in self.clients.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))

    def stop(self) -> None:
        from forsaken.procs import terminate

        terminate(self.procs)
        self.server = None
        self.clients = {}

    def check_alive(self) -> None:
        for name, p in [
            ("server", self.server),
            *[(f"client {i}", q) for i, q in self.clients.items()],
        ]:
            if p is not None and p.poll() is not None:
                raise FederationError(
                    f"{name} exited with code {p.returncode}; see {self.root / 'logs'}"
                )

    # -- views --

    def status(self) -> dict[str, Any]:
        from forsaken.status import fetch_status

        return fetch_status(self.address, 0, timeout=10, tls_dir=self.operator)

    def model(self, sha256: str) -> np.ndarray:
        from forsaken.server.checkpoints import FileCheckpointStore

        payload = FileCheckpointStore(self.server_dir / "checkpoints").get(sha256)
        return np.frombuffer(payload, dtype="<f4").astype(np.float32)

    def request_forget(self, index: int, method: str, timeout_s: float) -> str:
        """The owner of client `index` asks it to forget all its data (the Owner API)."""
        import grpc

        from forsaken.forget import owner_address
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
                            owner_pb2.OwnerForgetRequest(request_id=request_id, method=method),
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
        if not self.step_log.exists():
            return []
        return [json.loads(line) for line in self.step_log.read_text().splitlines() if line]


def _argv(command: str, flags: dict[str, object]) -> list[str]:
    out = [command]
    for name, value in flags.items():
        out += [f"--{name}", str(value)]
    return out


def completed_rounds(status: dict[str, Any]) -> list[dict[str, Any]]:
    done = [r for r in status["rounds"] if r["status"] == "completed"]
    return sorted(done, key=lambda r: r["round"])


RoundCallback = Callable[[dict[str, Any]], None]
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
    on_event(f"training {rounds} rounds with client {FORGETTER} holding the backdoor")
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
    on_event(f"restarting; client {FORGETTER} asks to forget all its data ({c.method})")
    (fed.client_dir(FORGETTER) / "owner_address").unlink(missing_ok=True)
    fed.start_server(0, min_completed=c.clients - 1)
    fed.start_client(FORGETTER)
    fed.request_forget(FORGETTER, c.method, timeout_s=120)
    follow(lambda s: bool(s["forget_requests"]), "the server to record the request")
    for i in range(c.clients):
        if i != FORGETTER:
            fed.start_client(i)
    status = follow(
        lambda s: any(f["state"] in ("completed", "failed") for f in s["forget_requests"]),
        "the forget request to complete",
    )
    (record,) = status["forget_requests"]
    if record["state"] != "completed":
        raise FederationError(f"forget request failed: {record['reason']}")
    receipt = json.loads(record["receipt_json"])
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


# ---- cost -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cost:
    client_grad_evals: float
    wall_s: float
    bytes_up: float


@dataclass(frozen=True, slots=True)
class UnlearningCost:
    """The distributed U's cost with its parts, per seed."""

    counted: Cost  # reference.py's grad_evals_unlearning reading
    strict_grad_evals: int  # every client's every gradient after ForgetMe
    forgetter_grad_evals: int  # the forgetting client's engine steps
    forgetter_seconds: float  # their compute time inside the daemon
    receipt_grad_evals: float | None  # what the receipt's client_progress says
    uploads: int


def unlearning_cost(run: ForgetRun, local_epochs: int, num_params: int) -> UnlearningCost:
    """Count the work from round T + 1 to U's round, as reference.py counts its U."""
    steps = {int(s["round"]): s for s in run.steps}
    forgetter = sum(int(s["gradient_evaluations"]) for s in run.steps)
    counted, strict, uploads = forgetter, forgetter, 0
    for r in range(run.forget_round + 1, run.unlearned_round + 1):
        rec = run.by_round(r)
        step = steps.get(r)
        stepped = step is not None and int(step["num_samples"]) > 0
        others = int(rec["total_samples"]) - (int(step["num_samples"]) if stepped else 0)
        strict += others * local_epochs
        if not stepped:  # a recovery round, or one in which the forgetter uploaded nothing
            counted += others * local_epochs
        uploads += len(rec["participants"])
    first = run.by_round(run.forget_round + 1)
    round_start_ms = first["finished_unix_ms"] - first["duration_s"] * 1000
    wall = (run.receipt["completed_ms"] - round_start_ms) / 1000
    receipt_evals = run.receipt.get("client_progress", {}).get("gradient_evaluations")
    return UnlearningCost(
        counted=Cost(counted, wall, uploads * (num_params + 1) * BYTES_PER_ENTRY),
        strict_grad_evals=strict,
        forgetter_grad_evals=forgetter,
        forgetter_seconds=float(sum(s["seconds"] for s in run.steps)),
        receipt_grad_evals=receipt_evals,
        uploads=uploads,
    )


# ---- the protocol -------------------------------------------------------------------------


@dataclass
class SeedResult:
    seed: int
    scores: dict[str, Scores]  # by evaluation.json model key
    cost: dict[str, Cost]
    unlearning: UnlearningCost
    run: ForgetRun
    in_process: dict[str, Scores]  # the in-process O, U and U+10, for comparison
    notes: list[str]


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


# ---- summary, bars and output ---------------------------------------------------------------


def summarize_models(results: Sequence[SeedResult]) -> dict[str, dict[str, float]]:
    """Mean and population std over seeds of every metric of every model."""
    out: dict[str, dict[str, float]] = {}
    for key in MODEL_KEYS:
        row: dict[str, float] = {}
        for metric in METRICS:
            values = [getattr(res.scores[key], metric) for res in results]
            row[metric] = float(np.mean(values))
            row[f"{metric}_std"] = float(np.std(values))
        out[key] = row
    return out


def summarize_cost(results: Sequence[SeedResult]) -> dict[str, dict[str, float]]:
    return {
        key: {
            name: float(np.mean([getattr(res.cost[key], name) for res in results]))
            for name in Cost.__dataclass_fields__
        }
        for key in COST_KEYS
    }


# DESIGN §5's margins, as reference.check_bars applies them; `bars` checks the two agree.
ASR_MARGIN = 0.02
ACC_MARGIN = 0.01
KL_FACTOR = 3.0
AUC_MARGIN = 0.03
COST_FACTOR = 10.0
R_ASR_CEILING = 0.05
O_ASR_FLOOR = {"mnist5k": 0.80, "digits": 0.50}  # validity; reference.check_bars' table


def bars(
    models: dict[str, dict[str, float]],
    cost: dict[str, dict[str, float]],
    strict_grad_evals: float,
    dataset: str,
    secure: bool,
) -> dict[str, dict[str, Any]]:
    """Which DESIGN §5 bars pass, with the numbers compared (means over seeds).

    Pass/fail comes from `reference.check_bars` on the same numbers; the limits shown here are
    checked against its verdicts, so the two cannot silently disagree."""
    from forsaken.common.unlearning.reference import check_bars

    m = {k: {f: (v, 0.0) for f, v in row.items()} for k, row in models.items()}
    summary = {
        "O": {"asr": m["original"]["asr"]},
        "R": {
            "accuracy": m["retrained"]["test_acc"],
            "asr": m["retrained"]["asr"],
            "mia_auc": m["retrained"]["mia_auc"],
            "grad_evals": (cost["retrained"]["client_grad_evals"], 0.0),
        },
        "R'": {"kl_forget": m["retrained_alt"]["kl_forget"]},
        "U": {
            "accuracy": m["unlearned"]["test_acc"],
            "asr": m["unlearned"]["asr"],
            "kl_forget": m["unlearned"]["kl_forget"],
            "mia_auc": m["unlearned"]["mia_auc"],
            "grad_evals_unlearning": (cost["unlearned"]["client_grad_evals"], 0.0),
            "grad_evals": (strict_grad_evals, 0.0),
        },
        "U+10": {"asr": m["unlearned_after_10_rounds"]["asr"]},
    }
    verdicts = check_bars(summary, dataset)
    o, u, u10 = models["original"], models["unlearned"], models["unlearned_after_10_rounds"]
    r, r2 = models["retrained"], models["retrained_alt"]
    retrain_evals = cost["retrained"]["client_grad_evals"]
    rows: dict[str, tuple[str, float, float, bool]] = {
        # name: (rule, value, limit, value >= limit rather than <=)
        "valid_O_asr": (
            "validity: ASR(O) >= floor",
            o["asr"],
            O_ASR_FLOOR.get(dataset, 0.80),
            True,
        ),
        "valid_R_asr": ("validity: ASR(R) <= ceiling", r["asr"], R_ASR_CEILING, False),
        "asr_U": ("ASR(U) <= ASR(R) + 0.02", u["asr"], r["asr"] + ASR_MARGIN, False),
        "asr_U+10": ("ASR(U+10) <= ASR(R) + 0.02", u10["asr"], r["asr"] + ASR_MARGIN, False),
        "acc_U": (
            "|acc(U) - acc(R)| <= 0.01",
            abs(u["test_acc"] - r["test_acc"]),
            ACC_MARGIN,
            False,
        ),
        "kl_U": (
            "KL(R‖U) <= 3 KL(R‖R')",
            u["kl_forget"],
            KL_FACTOR * r2["kl_forget"],
            False,
        ),
        "mia_U": ("|AUC(U) - AUC(R)| <= 0.03", abs(u["mia_auc"] - r["mia_auc"]), AUC_MARGIN, False),
        "cost_U": (
            "grad evals (counted) <= R/10",
            cost["unlearned"]["client_grad_evals"],
            retrain_evals / COST_FACTOR,
            False,
        ),
        "cost_U_strict": (
            "grad evals (strict) <= R/10",
            strict_grad_evals,
            retrain_evals / COST_FACTOR,
            False,
        ),
    }
    out: dict[str, dict[str, Any]] = {}
    for name, (rule, value, limit, at_least) in rows.items():
        mine = value >= limit if at_least else value <= limit
        if mine != verdicts[name]:
            raise RuntimeError(f"bar {name}: {value} vs {limit} disagrees with check_bars")
        out[name] = {"pass": bool(verdicts[name]), "value": value, "limit": limit, "rule": rule}
    missing = set(verdicts) - set(out)
    if missing:
        raise RuntimeError(f"check_bars has bars this report does not show: {sorted(missing)}")
    out["no_client_update_history"] = {
        "pass": secure,
        "value": None,
        "limit": None,
        "rule": "no per-client update history on the server (secure aggregation)",
    }
    return out


def evaluation_json(args: argparse.Namespace, results: Sequence[SeedResult]) -> dict[str, Any]:
    models = summarize_models(results)
    cost = summarize_cost(results)
    strict = float(np.mean([res.unlearning.strict_grad_evals for res in results]))
    secure = all(res.run.secure_aggregation for res in results)
    return {
        "dataset": args.dataset,
        "clients": args.clients,
        "rounds": args.rounds,
        "seeds": [res.seed for res in results],
        "secure_aggregation": secure,
        "models": models,
        "cost": cost,
        "bars": bars(models, cost, strict, args.dataset, secure),
    }


def detail_json(args: argparse.Namespace, results: Sequence[SeedResult]) -> dict[str, Any]:
    return {
        "command": "forsaken evaluate " + " ".join(sys.argv[2:]),
        "config": {
            "dataset": args.dataset,
            "clients": args.clients,
            "rounds": args.rounds,
            "local_epochs": args.local_epochs,
            "recovery_rounds": args.recovery_rounds,
            "further_rounds": FURTHER_ROUNDS,
            "method": args.method,
        },
        "cost_basis": COST_BASIS,
        "per_seed": [
            {
                "seed": res.seed,
                "notes": res.notes,
                "scores": {k: asdict(v) for k, v in res.scores.items()},
                "in_process": {k: asdict(v) for k, v in res.in_process.items()},
                "cost": {k: asdict(v) for k, v in res.cost.items()},
                "unlearning_cost": asdict(res.unlearning),
                "rounds": {
                    "trained": res.run.trained_rounds,
                    "forget_started_after": res.run.forget_round,
                    "unlearned": res.run.unlearned_round,
                    "after": res.run.after_round,
                },
                "receipt": res.run.receipt,
                "forget_steps": res.run.steps,
                "seconds": res.run.seconds,
                "ledger": [
                    {
                        k: r[k]
                        for k in (
                            "round",
                            "attempt",
                            "test_acc",
                            "total_samples",
                            "duration_s",
                            "model_sha256",
                        )
                    }
                    | {"participants": len(r["participants"])}
                    for r in res.run.rounds
                ],
            }
            for res in results
        ],
    }


def plot(report: dict[str, Any], results: Sequence[SeedResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = report["models"]
    order = [k for k in REFERENCE_NAMES if k in models]
    labels = [REFERENCE_NAMES[k] for k in order]
    colors = ["#4c72b0" if k in DISTRIBUTED else "#999999" for k in order]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = (("test_acc", "test accuracy"), ("asr", "attack success rate"), ("mia_auc", "MIA AUC"))
    for ax, (metric, title) in zip(axes.flat, panels, strict=False):
        means = [models[k][metric] for k in order]
        stds = [models[k][f"{metric}_std"] for k in order]
        ax.bar(labels, means, yerr=stds, color=colors, capsize=3)
        ax.set_title(title)
        ax.set_ylim(0, 1.05)
        ax.grid(True, axis="y", alpha=0.3)
        for i, v in enumerate(means):
            ax.text(i, min(v + 0.02, 1.0), f"{v:.3f}", ha="center", fontsize=7)
    ax = axes.flat[3]
    for res in results:
        last = res.run.after_round or res.run.unlearned_round
        rounds = [r for r in res.run.rounds if 0 < r["round"] <= last]
        ax.plot(
            [r["round"] for r in rounds],
            [r["test_acc"] for r in rounds],
            marker=".",
            linewidth=1,
            label=f"seed {res.seed}",
        )
    first = results[0].run
    ax.axvline(first.forget_round + 0.5, color="red", linestyle="--", label="ForgetMe")
    ax.axvspan(first.forget_round + 0.5, first.unlearned_round + 0.5, color="red", alpha=0.08)
    ax.axvline(first.unlearned_round, color="green", linestyle=":", label="U (receipt)")
    if first.after_round is not None:
        ax.axvline(first.after_round, color="purple", linestyle=":", label="U+10")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (server, per round)")
    ax.set_title("accuracy before and after the request (daemons)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.suptitle(
        f"forsaken evaluate: {report['dataset']}, {report['clients']} clients, "
        f"T={report['rounds']}, seeds {report['seeds']} (blue: daemons, grey: in-process)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_HEADERS = {
    "test_acc": "acc",
    "asr": "ASR",
    "mia_auc": "MIA AUC",
    "mia_tpr_at_1fpr": "TPR@1%FPR",
    "kl_forget": "KL(R‖·)",
    "fr": "FR",
}


def print_tables(report: dict[str, Any], console: Console) -> None:
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"models: mean ± std over seeds {report['seeds']}",
        caption="* from the daemons (secure aggregation); the others from the in-process runner",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("model")
    for metric in METRICS:
        table.add_column(_HEADERS[metric], justify="right")
    for key in MODEL_KEYS:
        row = report["models"][key]
        cells = [f"{row[m]:.3f}\n±{row[f'{m}_std']:.3f}" for m in METRICS]
        mark = "*" if key in DISTRIBUTED else ""
        table.add_row(f"{REFERENCE_NAMES[key]}{mark}", *cells)
    console.print(table)

    costs = Table(title="cost after ForgetMe (mean over seeds)", box=box.SIMPLE_HEAD)
    for col in ("", "client grad evals", "wall s", "bytes up"):
        costs.add_column(col, justify="right")
    for key, row in report["cost"].items():
        costs.add_row(
            REFERENCE_NAMES[key],
            f"{row['client_grad_evals']:,.0f}",
            f"{row['wall_s']:.1f}",
            f"{row['bytes_up'] / 1e6:.2f} MB",
        )
    console.print(costs)

    verdicts = Table(title="DESIGN §5 bars (means over seeds)", box=box.SIMPLE_HEAD)
    verdicts.add_column("bar")
    for col in ("value", "limit", ""):
        verdicts.add_column(col, justify="right")
    for bar in report["bars"].values():
        value = "" if bar["value"] is None else f"{bar['value']:.4g}"
        limit = "" if bar["limit"] is None else f"{bar['limit']:.4g}"
        verdict = "[green]PASS[/green]" if bar["pass"] else "[red]FAIL[/red]"
        verdicts.add_row(bar["rule"], value, limit, verdict)
    console.print(verdicts)


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


# ---- the forgetting client's recorder --------------------------------------------------------


def _probe_main(argv: Sequence[str]) -> int:
    """`python -m forsaken.evaluate --step-log FILE -- client ARGS...`: an ordinary client
    daemon that appends one JSON line per forget step it computes (round, gradient evaluations,
    weight, seconds). The receipt keeps only the last step's metrics; this is the full record."""
    p = argparse.ArgumentParser(prog="python -m forsaken.evaluate", description=_probe_main.__doc__)
    p.add_argument("--step-log", type=Path, required=True)
    p.add_argument("client_args", nargs=argparse.REMAINDER, help="-- client ARGS...")
    a = p.parse_args(argv)
    rest = list(a.client_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    if rest[:1] != ["client"]:
        p.error("expected `-- client ARGS...`")

    from forsaken.client.forgetting import ForgetExecutor
    from forsaken.main import main

    original = ForgetExecutor.step

    signature = inspect.signature(original)

    @functools.wraps(original)
    def recorded(self: ForgetExecutor, *args: Any, **kwargs: Any) -> Any:
        call = signature.bind(self, *args, **kwargs).arguments
        t0 = time.perf_counter()
        step = original(self, *args, **kwargs)
        entry = {
            "forget_id": call["forget_id"],
            "method": call["method"],
            "round": int(call["round_number"]),
            "gradient_evaluations": int(step.gradient_evaluations),
            "num_samples": int(step.num_samples),
            "done": bool(step.done),
            "seconds": time.perf_counter() - t0,
        }
        with a.step_log.open("a") as fh:
            fh.write(json.dumps(entry) + "\n")
        return step

    ForgetExecutor.step = recorded  # type: ignore[method-assign]
    return main(rest)


if __name__ == "__main__":
    raise SystemExit(_probe_main(sys.argv[1:]))
