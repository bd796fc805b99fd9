"""Composition root of the client daemon: configuration, data, identity, loop, Owner API."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from forsaken.client.daemon import ClientDaemon
from forsaken.client.observers import ClientObserver, EventsFile
from forsaken.client.owner import OwnerServicer
from forsaken.client.state import DataSelection, StateFile
from forsaken.client.transport import FleetConnection
from forsaken.common import ports, tls
from forsaken.common.backdoor import dataset_trigger, poison_client
from forsaken.common.config import log_format_option, log_level_option, option
from forsaken.common.datasets import Dataset
from forsaken.common.diagnosis import Diagnosis, check_own_certificate, diagnose
from forsaken.common.errors import CertificateError, ConfigError
from forsaken.common.exitcodes import ExitCode
from forsaken.common.fsutil import atomic_write
from forsaken.common.identity import NodeIdentity
from forsaken.common.partition import ClientData, parse_client_spec
from forsaken.common.rpc_errors import DecodeGuard
from forsaken.common.statelock import StateLock
from forsaken.common.task import DataRequest, for_client
from forsaken.common.task_loader import resolve_task
from forsaken.common.testbeds import PLANTINGS, plant_client_data
from forsaken.v1 import owner_pb2_grpc

log = logging.getLogger(__name__)

ENV_PREFIX = "FORSAKEN_CLIENT"
OWNER_ADDRESS_FILE = "owner_address"


@dataclass(frozen=True)
class ClientConfig:
    server: str = option("127.0.0.1:7070", "Address of the aggregation server (host:port).")
    state_dir: Path = option(Path("forsaken-client"), "Directory for the node key and local state.")
    dataset: str = option(
        "mnist5k", "Local data: digits, mnist5k, or a path to an .npz file with arrays x and y."
    )
    architecture: str = option(
        "", "Built-in model for --dataset (mlp, cnn); empty: the dataset's default."
    )
    task: str = option(
        "",
        "The federation's task, your own model and data: module:attr or path/to/file.py:attr "
        "(see the README's 'Bring your own model'); it replaces --dataset and --architecture, "
        "which name a built-in task. Its model must be the server's (checked at Join).",
    )
    data_dir: str = option(
        "", "Directory the task reads its data from (handed to its data functions)."
    )
    partition: str = option("0/1", "Which shard of the dataset this node holds, as i/N (0-based).")
    scheme: str = option(
        "iid",
        "How the dataset's train split is divided among the N clients of --partition: iid "
        "(uniformly at random) or dirichlet (label-skewed, see --alpha).",
        choices=("iid", "dirichlet"),
    )
    alpha: float = option(
        0.5, "Dirichlet concentration for --scheme dirichlet (smaller is more skewed)."
    )
    seed: int = option(0, "Seed for partitioning and local training.")
    held_out_fraction: float = option(
        0.1, "Share of local data reserved, never trained on, for unlearning checks."
    )
    owner_listen: str = option(
        "127.0.0.1:7071",
        "Where the Owner API listens (loopback by default); port 0 picks one and writes it "
        "to STATE_DIR/owner_address.",
    )
    tls_cert: str = option(
        "", "This node's certificate (PEM), issued by `forsaken certs` for its node key."
    )
    tls_key: str = option("", "Private key of --tls-cert (PEM).")
    tls_ca: str = option("", "Federation CA (PEM) that signed the server's certificate.")
    tls_server_name: str = option(
        "", "Check the server certificate against this name instead of --server's host."
    )
    insecure: bool = option(
        False, "Allow plaintext gRPC to a non-loopback --server (logs a warning)."
    )
    max_backoff_s: float = option(30.0, "Longest wait between reconnection attempts, in seconds.")
    tls_failure_limit: int = option(
        5,
        "Identical certificate failures in a row (wrong CA, expired certificate, certificate "
        "for another name, plaintext against TLS or back) after which the client exits with "
        "code 3; 0 keeps retrying.",
    )
    threads: int = option(1, "CPU threads for local training.")
    backdoor: bool = option(
        False,
        "Evaluation test bed: stamp the trigger on this node's samples of other classes and "
        "relabel them to the target class (the same as --test-bed backdoor).",
    )
    test_bed: str = option(
        "none",
        "Evaluation test bed planted in this node's training data, as `forsaken evaluate "
        "--scenario` builds it: backdoor, backdoor-patch, backdoor-blend or label-flip.",
        choices=("none", *PLANTINGS),
    )
    events_file: str = option(
        "",
        "Append one JSON line to this file per round this node contributed to and per forget "
        "step it computed (round, samples, metrics; method, gradient evaluations, seconds); "
        "empty: none.",
    )
    log_level: str = log_level_option()
    log_format: str = log_format_option()

    def validate(self) -> None:
        parse_client_spec(self.partition)
        if not 0.0 <= self.held_out_fraction < 0.9:
            raise ConfigError(
                f"held_out_fraction must be in [0, 0.9), got {self.held_out_fraction}"
            )
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")
        if self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.max_backoff_s <= 0:
            raise ConfigError(f"max_backoff_s must be > 0, got {self.max_backoff_s}")
        if self.tls_failure_limit < 0:
            raise ConfigError(f"tls_failure_limit must be >= 0, got {self.tls_failure_limit}")
        files = tls.TlsFiles.from_options(self.tls_cert, self.tls_key, self.tls_ca)
        if files is None and not (self.insecure or tls.is_loopback(self.server)):
            raise ConfigError(
                f"{self.server} is not a loopback address: give --tls-cert, --tls-key and "
                "--tls-ca (see `forsaken certs`), or --insecure for plaintext"
            )


def _channel_credentials(
    config: ClientConfig, identity: NodeIdentity, state_dir: Path
) -> grpc.ChannelCredentials | None:
    files = tls.TlsFiles.from_options(config.tls_cert, config.tls_key, config.tls_ca)
    if files is None:
        if not tls.is_loopback(config.server):
            log.warning(
                "PLAINTEXT gRPC to %s (--insecure): traffic is not protected", config.server
            )
        return None
    common_name = files.load().common_name
    if common_name != identity.node_id:
        raise CertificateError(
            f"{files.cert} is the certificate of {common_name!r}, not of this node "
            f"({identity.node_id}, whose key is in {state_dir}); run "
            f"`forsaken certs issue --ca CA_DIR --state-dir {state_dir}`"
        )
    check_own_certificate(files, "this node's")
    return tls.channel_credentials(files.ca, files.cert, files.key)


def _split_summary(dataset: Dataset, data: ClientData, config: ClientConfig) -> str:
    """How this node's samples came out of its file, so nobody wonders why it trains on less."""
    total = len(dataset.y_train) + len(dataset.y_test)
    part = len(data.y_train) + len(data.y_held_out)
    return (
        f"{dataset.name} has {total} samples: {len(dataset.y_test)} form the fixed test split "
        f"(the server's validation set; no client trains on them) and {len(dataset.y_train)} "
        f"the train split; shard {config.partition} ({config.scheme}, seed {config.seed}) "
        f"holds {part} of those: {len(data.y_train)} to train on and {len(data.y_held_out)} "
        f"held out (--held-out-fraction {config.held_out_fraction:g}: never trained on, the "
        "non-members against which forgetting is measured)"
    )


class ClientApp:
    def __init__(self, config: ClientConfig, observers: Sequence[ClientObserver] = ()) -> None:
        self.config = config
        self.signal: int | None = None  # the signal that stopped the daemon, if one did
        state_dir = Path(config.state_dir)
        state_dir.mkdir(parents=True, exist_ok=True)
        # Before anything reads the node key or the state file: one daemon per directory.
        self.lock = StateLock.acquire(state_dir, "client daemon")
        try:
            self._build(config, state_dir, observers)
        except BaseException:
            self.lock.release()
            raise

    def _build(
        self, config: ClientConfig, state_dir: Path, observers: Sequence[ClientObserver]
    ) -> None:
        ports.ensure_free(config.owner_listen, "Owner API")
        torch.set_num_threads(config.threads)
        index, count = parse_client_spec(config.partition)
        task = resolve_task(config.task, config.dataset, config.architecture)
        request = DataRequest(
            partition_index=index,
            partition_count=count,
            scheme=config.scheme,
            alpha=config.alpha,
            seed=config.seed,
            data_dir=Path(config.data_dir) if config.data_dir else None,
        )
        loaded, data, dataset = for_client(task, request, config.held_out_fraction)
        if dataset is not None:
            log.info("data: %s", _split_summary(dataset, data, config))
        else:
            log.info(
                "data: task %s's local_data gave %d samples to train on and %d held out "
                "(never trained on, the non-members against which forgetting is measured)",
                task.name,
                len(data.y_train),
                len(data.y_held_out),
            )
        planting = "backdoor" if config.backdoor else config.test_bed
        if planting not in ("none", "") and (dataset is None or len(dataset.input_shape) != 3):
            raise ConfigError(
                f"--test-bed {planting} plants into a partition of the task's data: it needs "
                "images (C, H, W) from the task's data function, not local_data"
            )
        if planting not in ("none", "", "backdoor"):
            assert dataset is not None
            # Seeded exactly as the evaluation's in-process runner seeds its forgetting client
            # (forsaken.common.testbeds), so both hold identical data; sample ids and the
            # held-out slice are unchanged.
            data = plant_client_data(planting, dataset, data, config.seed)
            log.warning("--test-bed %s planted in this node's training data", planting)
        elif planting == "backdoor":
            assert dataset is not None
            # The backdoor test bed, seeded as the in-process runner seeds it (see above).
            planted = poison_client(data, seed=config.seed, trigger=dataset_trigger(dataset))
            data = planted.data
            log.warning(
                "--backdoor: %d of %d training samples carry the trigger and target label %d",
                int(planted.poisoned.sum()),
                len(data.y_train),
                planted.target,
            )
        selection = DataSelection(
            dataset=dataset.name if dataset is not None else task.name,
            partition_index=index,
            partition_count=count,
            scheme=config.scheme,
            alpha=config.alpha,
            seed=config.seed,
            held_out_fraction=config.held_out_fraction,
        )
        state_file = StateFile(state_dir)
        state = state_file.load_or_init(selection)
        identity = NodeIdentity.load_or_create(state_dir)
        files = tls.TlsFiles.from_options(config.tls_cert, config.tls_key, config.tls_ca)
        server_name = config.tls_server_name or None
        self.connection = FleetConnection(
            config.server,
            identity,
            credentials=_channel_credentials(config, identity, state_dir),
            server_name=server_name,
        )

        def diagnose_connection() -> Diagnosis | None:
            return diagnose(config.server, files, server_name=server_name)

        # `--events-file` is the observer of a daemon watched from another process.
        events = [EventsFile(Path(config.events_file))] if config.events_file else []
        self.daemon = ClientDaemon(
            connection=self.connection,
            data=data,
            task=loaded,
            dataset_name=selection.dataset,
            input_shape=tuple(loaded.spec.input_shape),
            # The labels this node holds; the server refuses more than its model has.
            num_classes=int(max(data.y_train.max(initial=0), data.y_held_out.max(initial=0)) + 1)
            if dataset is None
            else int(dataset.num_classes),
            state_file=state_file,
            state=state,
            partition_index=index,
            seed=config.seed,
            max_backoff_s=config.max_backoff_s,
            diagnose=diagnose_connection,
            tls_failure_limit=config.tls_failure_limit,
            observers=[*observers, *events],
        )
        self.owner_server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=4),
            interceptors=[DecodeGuard()],
            options=[ports.GRPC_NO_PORT_SHARING],
        )
        owner_pb2_grpc.add_OwnerServicer_to_server(
            OwnerServicer(self.daemon, config.server), self.owner_server
        )
        try:
            port = self.owner_server.add_insecure_port(config.owner_listen)
        except RuntimeError:
            # Taken between the check above and now, or by a socket the check cannot see.
            raise ports.in_use(config.owner_listen, "Owner API") from None
        host = config.owner_listen.rsplit(":", 1)[0]
        self.owner_address = f"{host}:{port}"
        atomic_write(state_dir / OWNER_ADDRESS_FILE, (self.owner_address + "\n").encode())
        log.info(
            "node %s: task %s (model %s); Owner API on %s",
            identity.node_id,
            task.name,
            loaded.spec.architecture,
            self.owner_address,
        )

    def run(self) -> int:
        self.owner_server.start()

        def on_signal(signum: int, _frame: object) -> None:
            log.info("received %s, shutting down", signal.Signals(signum).name)
            self.signal = signum
            self.daemon.stop()
            # Cancels a long-poll in flight, so the loop sees the stop at once.
            self.connection.close()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        try:
            code = self.daemon.run()
        finally:
            self.owner_server.stop(2).wait()
            self.connection.close()
            self.lock.release()
        if self.signal == signal.SIGINT:
            return ExitCode.INTERRUPTED
        return ExitCode.OK if self.signal == signal.SIGTERM else code
