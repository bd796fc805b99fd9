"""Composition root of the server daemon: configuration, stores, gRPC server, signals."""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from forsaken.common import ports, tls
from forsaken.common.config import log_format_option, log_level_option, option
from forsaken.common.diagnosis import check_own_certificate
from forsaken.common.errors import ConfigError
from forsaken.common.exitcodes import ExitCode
from forsaken.common.forget_methods import METHOD_NAMES
from forsaken.common.rpc_errors import DecodeGuard
from forsaken.common.statelock import StateLock
from forsaken.common.tensors import TensorSpec
from forsaken.common.types import ModelSpec, TrainSettings
from forsaken.server.checkpoints import FileCheckpointStore
from forsaken.server.coordinator import Coordinator
from forsaken.server.enrollment import load_allow_list
from forsaken.server.forgetting import ForgetPolicy
from forsaken.server.join_challenges import ChallengeBook
from forsaken.server.ledger import SqliteLedger
from forsaken.server.limits import CallQuota, RateLimiter
from forsaken.server.metrics import MetricsServer, ServerMetrics
from forsaken.server.model_guard import GuardSettings
from forsaken.server.policy import RoundPolicy
from forsaken.server.rounds import EvalResult, Event, Finished, RoundAborted, RoundCompleted
from forsaken.server.rpc import AdminServicer, FleetServicer
from forsaken.server.runtime import ServerRuntime
from forsaken.server.secure_round import SecureSettings
from forsaken.server.sessions import SessionTable
from forsaken.server.stream_watchdog import StreamWatchdog
from forsaken.v1 import admin_pb2, admin_pb2_grpc, fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)

ENV_PREFIX = "FORSAKEN_SERVER"
_TRAIN = TrainSettings()


@dataclass(frozen=True)
class ServerConfig:
    listen: str = option("127.0.0.1:7070", "Address to serve the Fleet and Admin APIs on.")
    state_dir: Path = option(Path("forsaken-server"), "Directory for checkpoints and the ledger.")
    dataset: str = option(
        "mnist5k",
        "Dataset the federation trains on: digits, mnist5k or an .npz path; its fixed test "
        "split is the server's validation set.",
    )
    architecture: str = option(
        "", "Model architecture (mlp, cnn); empty picks the dataset's default."
    )
    task: str = option(
        "",
        "The federation's task, your own model and data: module:attr or path/to/file.py:attr "
        "(see the README's 'Bring your own model'); it replaces --dataset and --architecture, "
        "which name a built-in task.",
    )
    data_dir: str = option(
        "", "Directory the task reads its data from (handed to its data functions)."
    )
    rounds: int = option(10, "Rounds to run; 0 runs until stopped.")
    min_clients: int = option(2, "Live clients needed before a round starts.")
    fraction: float = option(1.0, "Fraction of live clients sampled each round.")
    min_completed: int = option(
        2, "Updates needed for a round to complete; fewer by the deadline and it is retried."
    )
    round_timeout_s: float = option(60.0, "Deadline of a round, in seconds.")
    liveness_s: float = option(30.0, "A client not heard from for this long is not sampled.")
    local_epochs: int = option(_TRAIN.local_epochs, "Local epochs per round on each client.")
    batch_size: int = option(_TRAIN.batch_size, "Local mini-batch size.")
    learning_rate: float = option(_TRAIN.learning_rate, "Local SGD learning rate.")
    momentum: float = option(_TRAIN.momentum, "Local SGD momentum.")
    weight_decay: float = option(_TRAIN.weight_decay, "Local SGD weight decay.")
    max_update_norm: float = option(
        _TRAIN.max_update_norm,
        "L2 bound on updates: clients clip each update to it, and the server refuses a round "
        "whose aggregate exceeds it (twice it with a forget step) and, in plaintext rounds, "
        "any single update over it. 0 turns the bound off.",
    )
    max_accuracy_drop: float = option(
        0.2,
        "Refuse (abort, keeping the previous model) a round whose validation accuracy falls more "
        "than this below the best of the last 5 models; 0 turns the check off.",
    )
    quarantine_after: int = option(
        3,
        "Attributable faults (e.g. a forged sample count) after which a node is quarantined "
        "until an operator runs `forsaken admin release`.",
    )
    aggregation: str = option(
        "secure",
        "secure: SecAgg+ so the server learns only the sum of updates; plaintext must be "
        "chosen explicitly and logs a warning.",
        choices=("secure", "plaintext"),
    )
    secagg_clip: float = option(
        16.0, "Secure aggregation: each weighted update entry is clipped to [-clip, clip]."
    )
    secagg_dropout_rate: float = option(
        0.1,
        "Secure aggregation: expected client dropout rate, used to pick neighbours k and "
        "threshold t.",
    )
    secagg_corruption_rate: float = option(
        0.0, "Secure aggregation: assumed fraction of corrupted clients, used to pick k and t."
    )
    secagg_neighbors: int = option(
        0, "Secure aggregation: neighbours k per client; 0 picks k by the documented rule."
    )
    secagg_active: bool = option(
        False, "Secure aggregation: Ed25519-signed keys and a consistency-check stage."
    )
    stage_timeout_s: float = option(
        30.0, "Secure aggregation: deadline of each stage after the first, in seconds."
    )
    seed: int = option(0, "Seed for the initial model, client sampling and local training.")
    evaluate: bool = option(True, "Evaluate each new global model on the validation set.")
    poll_timeout_s: float = option(10.0, "Long-poll deadline for PullTask, in seconds.")
    tls_cert: str = option(
        "", "Server certificate (PEM); with --tls-key and --tls-ca the server speaks mutual TLS."
    )
    tls_key: str = option("", "Private key of --tls-cert (PEM).")
    tls_ca: str = option(
        "", "Federation CA (PEM) that must have signed every client's and operator's certificate."
    )
    insecure: bool = option(
        False, "Allow plaintext gRPC on a non-loopback --listen address (logs a warning)."
    )
    allow_nodes: str = option(
        "",
        "File of node ids allowed to join (one per line, # comments); empty: any node with a "
        "valid Join (and, under mutual TLS, a certificate from --tls-ca) may join.",
    )
    metrics_listen: str = option(
        "", "Serve Prometheus metrics at http://HOST:PORT/metrics; empty turns it off."
    )
    max_payload_mb: int = option(512, "Largest model or update payload accepted, in MiB.")
    max_clients: int = option(
        1000, "Most live clients at once; a Join beyond it gets RESOURCE_EXHAUSTED."
    )
    join_rate_per_min: float = option(
        30.0, "Joins allowed per node per minute (burst 10); more get RESOURCE_EXHAUSTED."
    )
    forget_rate_per_min: float = option(
        6.0, "ForgetMe calls allowed per node per minute (burst 3)."
    )
    max_message_mb: int = option(
        8, "Largest single gRPC message, in MiB (payloads stream in 1 MiB chunks)."
    )
    forget_method: str = option(
        "forsaken",
        "Unlearning method when a ForgetMe request names none.",
        choices=METHOD_NAMES,
    )
    recovery_rounds: int = option(
        2, "Normal rounds among the remaining clients after unlearning, before verifying."
    )
    max_unlearning_rounds: int = option(
        10, "Most unlearning rounds for one request before recovery starts regardless."
    )
    forget_node_timeout_s: float = option(
        600.0, "A forget request fails if its node is silent this long while it is needed."
    )
    checkpoint_keep_last: int = option(
        20,
        "Completed rounds whose model checkpoints are kept; older ones are deleted (every N/2 "
        "rounds) unless a retrain rollback or a forget receipt needs them. 0 keeps every "
        "checkpoint.",
    )
    max_workers: int = option(128, "RPC worker threads (each long-polling client holds one).")
    max_calls_per_node: int = option(
        4,
        "Long calls (long-polls, model downloads, uploads) one node may hold open at once; "
        "all nodes together hold at most max_workers minus a reserve for short calls.",
    )
    stream_idle_timeout_s: float = option(
        30.0, "An upload or download stream that moves no data for this long is cut off."
    )
    exit_when_done: bool = option(False, "Exit once the target number of rounds has completed.")
    log_level: str = log_level_option()
    log_format: str = log_format_option()

    def validate(self) -> None:
        self.policy().validate()
        self.train_settings().validate()
        secure = self.secure_settings()
        if secure is not None:
            secure.validate()
            if self.min_completed < 2:
                raise ConfigError(
                    "secure aggregation needs at least 2 clients in a round: set "
                    "--min-completed (and --min-clients) to 2 or more, or --aggregation plaintext"
                )
        if self.max_clients < 1 or self.max_message_mb < 2:
            raise ConfigError("max_clients must be >= 1 and max_message_mb >= 2")
        if self.join_rate_per_min <= 0 or self.forget_rate_per_min <= 0:
            raise ConfigError("rate limits must be > 0 per minute")
        if self.max_payload_mb < 1:
            raise ConfigError("max_payload_mb must be >= 1")
        if self.poll_timeout_s <= 0:
            raise ConfigError("poll_timeout_s must be > 0")
        if self.max_workers < 8 or self.max_calls_per_node < 1 or self.quarantine_after < 1:
            raise ConfigError(
                "max_workers must be >= 8, max_calls_per_node and quarantine_after >= 1"
            )
        if self.stream_idle_timeout_s <= 0:
            raise ConfigError("stream_idle_timeout_s must be > 0")
        self.guard_settings().validate()
        if self.checkpoint_keep_last == 1 or self.checkpoint_keep_last < 0:
            # A client may still be fetching the previous round's model when a round completes.
            raise ConfigError("checkpoint_keep_last must be 0 (keep all) or at least 2")
        files = tls.TlsFiles.from_options(self.tls_cert, self.tls_key, self.tls_ca)
        if files is None and not (self.insecure or tls.is_loopback(self.listen)):
            raise ConfigError(
                f"{self.listen} is not a loopback address: give --tls-cert, --tls-key and "
                "--tls-ca (see `forsaken certs`), or --insecure for plaintext"
            )

    def policy(self) -> RoundPolicy:
        return RoundPolicy(
            rounds=self.rounds,
            min_clients=self.min_clients,
            fraction=self.fraction,
            min_completed=self.min_completed,
            round_timeout_s=self.round_timeout_s,
            liveness_s=self.liveness_s,
            seed=self.seed,
        )

    def secure_settings(self) -> SecureSettings | None:
        if self.aggregation == "plaintext":
            return None
        return SecureSettings(
            clip=self.secagg_clip,
            dropout_rate=self.secagg_dropout_rate,
            corruption_rate=self.secagg_corruption_rate,
            neighbors=self.secagg_neighbors,
            active=self.secagg_active,
            stage_timeout_s=self.stage_timeout_s,
        )

    def forget_policy(self) -> ForgetPolicy:
        return ForgetPolicy(
            default_method=self.forget_method,
            recovery_rounds=self.recovery_rounds,
            max_unlearning_rounds=self.max_unlearning_rounds,
            node_timeout_s=self.forget_node_timeout_s,
        )

    def train_settings(self) -> TrainSettings:
        return TrainSettings(
            local_epochs=self.local_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            max_update_norm=self.max_update_norm,
        )

    def guard_settings(self) -> GuardSettings:
        return GuardSettings(max_drop=self.max_accuracy_drop)

    def call_quota(self) -> CallQuota:
        # Short calls (Join, Status, stage messages) always keep some threads for themselves.
        reserve = max(4, self.max_workers // 8)
        return CallQuota(self.max_calls_per_node, self.max_workers - reserve)


class ModelProvider(Protocol):
    """What the server needs to know about the model: its shape, a start, and a judge.

    Read-only (properties), so that computed attributes satisfy it as well as plain ones."""

    @property
    def model_spec(self) -> ModelSpec: ...

    @property
    def tensors(self) -> tuple[TensorSpec, ...]:
        """The wire layout."""
        ...

    @property
    def structure(self) -> tuple[TensorSpec, ...]:
        """Real dtypes, checked at Join; empty: no check."""
        ...

    @property
    def can_evaluate(self) -> bool: ...

    def initial_vector(self) -> np.ndarray: ...

    def evaluate(self, vector: np.ndarray) -> EvalResult | None: ...


class ServerDaemon:
    """Owns every long-lived object of a running server; `run` blocks until shutdown."""

    def __init__(self, config: ServerConfig, model: ModelProvider | None = None) -> None:
        self.config = config
        self.signal: int | None = None  # the signal that stopped the server, if one did
        state = Path(config.state_dir)
        state.mkdir(parents=True, exist_ok=True)
        # Before the ledger opens: a second server on this directory would resume beside us.
        self.lock = StateLock.acquire(state, "server")
        try:
            self._build(config, state, model)
        except BaseException:
            self.lock.release()
            raise

    def _build(self, config: ServerConfig, state: Path, model: ModelProvider | None) -> None:
        ports.ensure_free(config.listen, "Fleet and Admin APIs")
        if config.metrics_listen:
            ports.ensure_free(config.metrics_listen, "metrics endpoint")
        files = tls.TlsFiles.from_options(config.tls_cert, config.tls_key, config.tls_ca)
        if files is not None:
            check_own_certificate(files, "the server's")
        if model is None:
            # torch only in the app layer
            from forsaken.common.task import DataRequest
            from forsaken.common.task_loader import resolve_task
            from forsaken.server.evaluation import ModelBench

            task = resolve_task(config.task, config.dataset, config.architecture)
            data_dir = Path(config.data_dir) if config.data_dir else None
            request = DataRequest(seed=config.seed, data_dir=data_dir)
            model = ModelBench.for_task(task, request)
            log.info("task %s: model %s", task.name, model.model_spec.architecture)
        self.bench = model
        self.ledger = SqliteLedger(state / "ledger.sqlite")
        self.checkpoints = FileCheckpointStore(state / "checkpoints")
        self.coordinator = Coordinator(
            policy=config.policy(),
            model_spec=self.bench.model_spec,
            tensors=self.bench.tensors,
            initial_model=self.bench.initial_vector,
            ledger=self.ledger,
            checkpoints=self.checkpoints,
            train=config.train_settings(),
            evaluator=self.bench.evaluate if config.evaluate and self.bench.can_evaluate else None,
            secure=config.secure_settings(),
            forget_policy=config.forget_policy(),
            keep_checkpoints=config.checkpoint_keep_last,
            guard=config.guard_settings(),
            quarantine_after=config.quarantine_after,
            now_ms=_now_ms(),
        )
        self.runtime = ServerRuntime(self.coordinator, SessionTable(), on_event=self._on_event)
        self.metrics = ServerMetrics.create()
        self.metrics.clients_connected.set_function(
            lambda: len(self.runtime.read(lambda c, now: c.registry.live(now)))
        )
        self.coordinator.registry.faults.on_fault = lambda _: self.metrics.member_faults.inc()
        self.metrics_server = (
            MetricsServer(self.metrics.registry, config.metrics_listen)
            if config.metrics_listen
            else None
        )
        self.done = threading.Event()
        self.watchdog = StreamWatchdog(config.stream_idle_timeout_s)
        self.server = self._build_grpc_server()

    @property
    def model_spec(self) -> ModelSpec:
        return self.bench.model_spec

    def _build_grpc_server(self) -> grpc.Server:
        cfg = self.config
        chunk_limit = cfg.max_message_mb << 20  # payloads stream in 1 MiB chunks
        files = tls.TlsFiles.from_options(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
        self.mtls = files is not None
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=cfg.max_workers, thread_name_prefix="rpc"),
            interceptors=[DecodeGuard()],
            # Calls beyond this wait for no thread: they are refused (RESOURCE_EXHAUSTED) rather
            # than queued without bound.
            maximum_concurrent_rpcs=4 * cfg.max_workers,
            options=[
                ("grpc.max_receive_message_length", chunk_limit),
                ("grpc.max_send_message_length", chunk_limit),
                ports.GRPC_NO_PORT_SHARING,
            ],
        )
        fleet_pb2_grpc.add_FleetServicer_to_server(
            FleetServicer(
                self.runtime,
                self.bench.model_spec,
                poll_timeout_s=cfg.poll_timeout_s,
                max_payload_bytes=cfg.max_payload_mb << 20,
                mtls=self.mtls,
                metrics=self.metrics,
                join_limit=RateLimiter("join", cfg.join_rate_per_min, 10, time.monotonic),
                forget_limit=RateLimiter("forget", cfg.forget_rate_per_min, 3, time.monotonic),
                max_clients=cfg.max_clients,
                quota=cfg.call_quota(),
                watchdog=self.watchdog,
                challenges=ChallengeBook(time.time),
                enrolled=load_allow_list(cfg.allow_nodes) if cfg.allow_nodes else None,
                structure=self.bench.structure,
            ),
            server,
        )
        admin_pb2_grpc.add_AdminServicer_to_server(
            AdminServicer(
                self.runtime,
                self.ledger,
                secure_aggregation=cfg.aggregation == "secure",
                require_operator=self.mtls,
            ),
            server,
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (
            fleet_pb2.DESCRIPTOR.services_by_name["Fleet"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        try:
            if files is not None:
                self.port = server.add_secure_port(cfg.listen, tls.server_credentials(files))
            else:
                self.port = server.add_insecure_port(cfg.listen)
        except RuntimeError:
            # Taken since the start-up check, or held by a socket that check cannot see.
            raise ports.in_use(cfg.listen, "Fleet and Admin APIs") from None
        if self.port == 0:
            raise ports.in_use(cfg.listen, "Fleet and Admin APIs")
        return server

    def _refresh_forget_metrics(self) -> None:
        counts: dict[str, int] = {}
        for record in self.ledger.forgets():
            counts[str(record.state)] = counts.get(str(record.state), 0) + 1
        self.metrics.set_forget_counts(counts)

    def _on_event(self, event: Event) -> None:
        # Forget requests change state at round boundaries and on reports; every event is a
        # cheap moment to re-read their counts for the metrics endpoint.
        self._refresh_forget_metrics()
        if isinstance(event, RoundCompleted | RoundAborted):
            self.metrics.round_finished(event.record.status, event.record.duration_s)
        if isinstance(event, RoundAborted):
            self.metrics.round_aborted(event.cause)
        if isinstance(event, RoundCompleted):
            r = event.record
            acc = "n/a" if r.test_acc is None else f"{r.test_acc:.4f}"
            log.info(
                "round %d done: %d participants, acc %s, %.2fs",
                r.round,
                len(r.participants),
                acc,
                r.duration_s,
            )
        elif isinstance(event, RoundAborted):
            log.warning("round %d aborted: %s", event.record.round, event.record.reason)
        elif isinstance(event, Finished):
            log.info("all %d rounds completed", event.completed_rounds)
            if self.config.exit_when_done:
                # Give clients a moment to receive their STOP task before we go away.
                threading.Timer(2.0 * self.config.poll_timeout_s / 10 + 1.0, self.done.set).start()

    def start(self) -> None:
        if self.config.aggregation == "plaintext":
            log.warning(
                "PLAINTEXT aggregation: the server sees every client's individual update. "
                "Use --aggregation secure unless you are debugging or benchmarking."
            )
        if not self.mtls and not tls.is_loopback(self.config.listen):
            log.warning(
                "PLAINTEXT gRPC on %s (--insecure): traffic and node identities are not protected",
                self.config.listen,
            )
        if not self.mtls and not self.config.allow_nodes:
            log.warning(
                "no mutual TLS and no --allow-nodes list: anyone who makes a key may join, so "
                "this federation cannot bound how many members one party controls"
            )
        if self.metrics_server is not None:
            # First, so that a busy metrics port fails the start before anything serves.
            try:
                self.metrics_server.start()
            except OSError:
                raise ports.in_use(self.config.metrics_listen, "metrics endpoint") from None
            log.info("metrics on %s", self.metrics_server.url)
        self.server.start()
        self.runtime.start()
        self.watchdog.start()
        self._refresh_forget_metrics()
        for name in ("", "forsaken.v1.Fleet", "forsaken.v1.Admin"):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving on %s (port %d), state in %s",
            self.config.listen,
            self.port,
            self.config.state_dir,
        )

    def stop(self, grace_s: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.runtime.stop()
        self.server.stop(grace_s).wait()
        self.watchdog.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.ledger.close()
        self.lock.release()
        log.info("stopped cleanly")

    def run(self) -> int:
        """Serve until SIGTERM (exit 0), SIGINT (130) or, with --exit-when-done, the end."""

        def on_signal(signum: int, _frame: object) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            self.signal = signum
            self.done.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            self.start()
        except BaseException:
            self.lock.release()
            raise
        self.done.wait()
        self.stop()
        return ExitCode.INTERRUPTED if self.signal == signal.SIGINT else ExitCode.OK


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
