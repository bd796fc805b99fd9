"""The front door: a federation of one task in a few lines of Python.

    import forsaken

    fed = forsaken.Federation(dataset="digits", clients=3)      # real daemons, SecAgg+
    with fed.start() as run:
        run.wait_rounds(5)
        receipt = run.forget(client=0)                             # a typed Receipt
        print(receipt.verdict)

With `in_process=False` (the default) the server and every client are OS processes started by
the launcher (`forsaken.launch.Launcher`), exactly as `forsaken server` and `forsaken client`
run them, optionally over mutual TLS. With `in_process=True` the same daemon classes
(`ServerDaemon`, `ClientApp`) run as threads of this process and talk real gRPC over loopback:
everything from secure aggregation to the forget receipt is the daemons' own code, but not
process isolation (the clients share torch's process-wide settings), signals, or a crash of
one daemon; it starts in a fraction of the time. Both modes build each daemon's configuration
from the same flags, through the command line's own layers (flags, then FORSAKEN_* variables).

Observers (`forsaken.client.observers.ClientObserver`) see each client's rounds and forget
steps: called by the daemon itself in process, fed from the daemons' `--events-file` while a
`Run` waits when they are processes.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from forsaken.client.observers import ClientObserver, read_events
from forsaken.common import wire_forget
from forsaken.common.errors import ForsakenError
from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.forget_receipt import Receipt
from forsaken.common.forget_states import ForgetState
from forsaken.launch import DaemonExited, Launcher
from forsaken.v1 import admin_pb2, admin_pb2_grpc, owner_pb2, owner_pb2_grpc


class FederationError(ForsakenError):
    """A federation that could not do what was asked: a daemon exited, a wait timed out, a
    forget request was refused or failed."""


@dataclass(frozen=True)
class Federation:
    """What to run: a task (a built-in dataset, or `task=` a reference such as
    "examples/fashion.py:task", as `--task` takes it) on `clients` clients.

    `server_options` and `client_options` are any further daemon options by their field names
    (`forsaken server --help`), e.g. {"local_epochs": 1}; `client_options_for` gives one
    client's own (e.g. {0: {"test_bed": "backdoor"}}). `root` keeps state, logs and
    certificates; None uses a temporary directory removed when the run stops.
    """

    dataset: str = "digits"
    clients: int = 3
    task: str = ""
    architecture: str = ""
    secure: bool = True  # SecAgg+; False: plaintext aggregation (the server logs a warning)
    tls: bool = False  # mutual TLS with a fresh federation CA under root/pki
    in_process: bool = False
    rounds: int = 0  # the server's --rounds; 0 runs until the run stops
    seed: int = 0
    root: Path | None = None
    server_options: Mapping[str, object] = field(default_factory=dict)
    client_options: Mapping[str, object] = field(default_factory=dict)
    client_options_for: Mapping[int, Mapping[str, object]] = field(default_factory=dict)
    observers: Mapping[int, Sequence[ClientObserver]] = field(default_factory=dict)
    ready_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.clients < 1:
            raise FederationError(f"a federation needs at least 1 client, got {self.clients}")
        unknown = set(self.client_options_for) | set(self.observers)
        bad = sorted(i for i in unknown if not 0 <= i < self.clients)
        if bad:
            raise FederationError(f"no client {bad[0]}: clients are 0..{self.clients - 1}")

    def start(self) -> Run:
        """Start the server, wait until it serves, start the clients; the returned `Run` stops
        everything when its `with` block ends (or on `stop()`)."""
        return Run(self)

    def server_flags(self) -> dict[str, object]:
        flags: dict[str, object] = {
            "dataset": self.dataset,
            "task": self.task or None,
            "architecture": self.architecture or None,
            "rounds": self.rounds,
            # One fewer than all: a client that forgets stops training, and the rounds of its
            # recovery go on without it (as they do without one that dropped out).
            "min-clients": max(1, self.clients - 1),
            "min-completed": max(1, self.clients - 1),
            "aggregation": "secure" if self.secure else "plaintext",
            "seed": self.seed,
            "poll-timeout-s": 2,
        }
        return flags | _flags(self.server_options)

    def client_flags(self, index: int) -> dict[str, object]:
        flags: dict[str, object] = {
            "dataset": self.dataset,
            "task": self.task or None,
            "architecture": self.architecture or None,
            "partition": f"{index}/{self.clients}",
            "seed": self.seed,
        }
        own = self.client_options_for.get(index, {})
        return flags | _flags(self.client_options) | _flags(own)


def _flags(options: Mapping[str, object]) -> dict[str, object]:
    return {name.replace("_", "-"): value for name, value in options.items()}


class Run:
    """A started federation: wait for rounds, ask a client to forget, read the status."""

    def __init__(self, federation: Federation) -> None:
        self.federation = federation
        self._own_root = federation.root is None
        root = federation.root or Path(tempfile.mkdtemp(prefix="forsaken-"))
        self.launcher = Launcher(root, clients=federation.clients, tls=federation.tls)
        self.root = root
        self.address = self.launcher.address
        self._threads: list[_InProcessNode] = []
        self._server: Any = None  # the in-process ServerDaemon
        self._delivered: dict[int, tuple[int, int]] = {}  # client: (rounds, steps) observed
        self._stopped = False
        self._torch_settings: tuple[int, bool] | None = None
        try:
            if federation.in_process:
                self._start_in_process()
            else:
                self._start_processes()
        except BaseException:
            self.stop()
            raise

    # -- starting and stopping --

    def _events_file(self, index: int) -> Path:
        return self.launcher.log_dir / f"client-{index}-events.jsonl"

    def _start_processes(self) -> None:
        fed = self.federation
        self.launcher.start_server(fed.server_flags(), ready_timeout_s=fed.ready_timeout_s)
        for i in range(fed.clients):
            flags = fed.client_flags(i)
            if fed.observers.get(i):
                flags["events-file"] = self._events_file(i)
            self.launcher.start_client(i, flags)

    def _start_in_process(self) -> None:
        import torch

        from forsaken.client.app import ENV_PREFIX as CLIENT_ENV
        from forsaken.client.app import ClientConfig
        from forsaken.common.tls import channel_credentials, health_check
        from forsaken.server.app import ENV_PREFIX as SERVER_ENV
        from forsaken.server.app import ServerConfig, ServerDaemon

        fed, launcher = self.federation, self.launcher
        # The daemons set torch's process-wide thread count and deterministic mode, and
        # clients training at once on threads can leave the latter as another set it; stop()
        # puts back the caller's.
        self._torch_settings = (
            torch.get_num_threads(),
            torch.are_deterministic_algorithms_enabled(),
        )
        launcher.log_dir.mkdir(parents=True, exist_ok=True)
        server_argv = launcher.server_argv(fed.server_flags())
        self._server = ServerDaemon(_config(ServerConfig, SERVER_ENV, server_argv))
        self._server.start()
        credentials = channel_credentials(launcher.operator_dir) if launcher.operator_dir else None
        deadline = time.monotonic() + fed.ready_timeout_s
        while not health_check(self.address, credentials, timeout_s=1.0):
            if time.monotonic() > deadline:
                raise FederationError(f"the in-process server at {self.address} is not serving")
            time.sleep(0.1)
        for i in range(fed.clients):
            config = _config(ClientConfig, CLIENT_ENV, launcher.client_argv(i, fed.client_flags(i)))
            self._threads.append(_InProcessNode.start(i, config, fed.observers.get(i, ())))

    def stop(self) -> None:
        """Stop every daemon (SIGTERM, then SIGKILL for processes); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._pump_events()
        for node in self._threads:
            node.stop()
        if self._server is not None:
            self._server.stop(grace_s=2.0)
        if self._torch_settings is not None:
            import torch

            threads, deterministic = self._torch_settings
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(deterministic)
        self.launcher.stop()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- views --

    def status(self) -> admin_pb2.ServerStatus:
        """The server's status from its Admin API (phase, completed rounds, clients, model)."""
        with self.launcher.admin_channel() as channel:
            return admin_pb2_grpc.AdminStub(channel).GetStatus(
                admin_pb2.StatusRequest(), timeout=10
            )

    def rounds(self) -> list[admin_pb2.RoundInfo]:
        """Every completed round the ledger holds, in order (round 0: the initial model)."""
        with self.launcher.admin_channel() as channel:
            listed = admin_pb2_grpc.AdminStub(channel).ListRounds(
                admin_pb2.ListRoundsRequest(limit=0), timeout=10
            )
        return sorted((r for r in listed.rounds if r.status == "completed"), key=lambda r: r.round)

    def check_alive(self) -> None:
        try:
            self.launcher.check_alive()
        except DaemonExited as exc:
            raise FederationError(str(exc)) from None
        for node in self._threads:
            if node.exit_code is not None:
                raise FederationError(f"client {node.index} stopped with code {node.exit_code}")

    # -- waiting --

    def wait_rounds(self, rounds: int, timeout_s: float = 600.0) -> int:
        """Block until the server has completed `rounds` rounds; return how many it has."""
        status = self._wait(lambda s: s.completed_rounds >= rounds, timeout_s, f"{rounds} rounds")
        return int(status.completed_rounds)

    def _wait(
        self, done: Callable[[admin_pb2.ServerStatus], bool], timeout_s: float, what: str
    ) -> admin_pb2.ServerStatus:
        deadline = time.monotonic() + timeout_s
        while True:
            self._pump_events()
            try:
                status = self.status()
                if done(status):
                    return status
            except grpc.RpcError:
                pass  # busy or restarting: try again
            self.check_alive()
            if time.monotonic() > deadline:
                raise FederationError(f"timed out after {timeout_s:.0f}s waiting for {what}")
            time.sleep(0.25)

    def _pump_events(self) -> None:
        """Hand the process daemons' new reports to their observers (in process, the daemon
        calls them itself)."""
        if self.federation.in_process:
            return
        for index, observers in self.federation.observers.items():
            rounds, steps = read_events(self._events_file(index))
            seen_rounds, seen_steps = self._delivered.get(index, (0, 0))
            for report in rounds[seen_rounds:]:
                for o in observers:
                    o.on_round(report)
            for step in steps[seen_steps:]:
                for o in observers:
                    o.on_forget_step(step)
            self._delivered[index] = (len(rounds), len(steps))

    # -- forgetting --

    def forget(
        self,
        client: int = 0,
        method: str = "",
        samples: Sequence[int] = (),
        timeout_s: float = 900.0,
        request_id: str = "",
    ) -> Receipt:
        """Ask client `client`'s daemon, through its Owner API as its data owner would, to make
        the federation forget `samples` (all its data when empty) with `method` (empty: the
        server's default); block until the request completes and return its receipt.

        Raises FederationError if the daemon refuses the request or the request fails."""
        if not 0 <= client < self.federation.clients:
            raise FederationError(
                f"no client {client}: clients are 0..{self.federation.clients - 1}"
            )
        try:
            chosen = ForgetMethod(method) if method else None
        except ValueError:
            known = ", ".join(m.value for m in ForgetMethod)
            raise FederationError(f"unknown forget method {method!r} (one of {known})") from None
        request_id = request_id or f"facade-{uuid.uuid4().hex}"
        deadline = time.monotonic() + timeout_s
        request = owner_pb2.OwnerForgetRequest(
            request_id=request_id,
            forget_method=wire_forget.method_to_proto(chosen),
            sample_ids=list(samples),
        )
        while True:
            address = self.launcher.owner_address(client)
            if address is not None:
                with grpc.insecure_channel(address) as channel:
                    stub = owner_pb2_grpc.OwnerStub(channel)
                    try:
                        reply = stub.Forget(request, timeout=30)
                        # Until the server has it on record the daemon has no forget id yet;
                        # the same request id again is the same request (idempotent).
                        if reply.forget_id:
                            return self._receipt(stub, reply.forget_id, deadline)
                    except grpc.RpcError as exc:
                        if exc.code() != grpc.StatusCode.UNAVAILABLE:
                            raise FederationError(
                                f"client {client} refused to forget: {exc.code().name}: "
                                f"{exc.details()}"
                            ) from None
            self.check_alive()
            if time.monotonic() > deadline:
                raise FederationError(f"client {client}'s Owner API did not answer in time")
            time.sleep(0.2)

    def _receipt(self, stub: owner_pb2_grpc.OwnerStub, forget_id: str, deadline: float) -> Receipt:
        while True:
            self._pump_events()
            status = stub.Status(owner_pb2.OwnerStatusRequest(), timeout=30)
            mine = [
                wire_forget.status_from_proto(f)
                for f in status.forget_requests
                if f.forget_id == forget_id
            ]
            if mine and mine[0].state is ForgetState.COMPLETED and mine[0].receipt is not None:
                return mine[0].receipt
            if mine and mine[0].state is ForgetState.FAILED:
                raise FederationError(f"the forget request failed: {mine[0].reason}")
            self.check_alive()
            if time.monotonic() > deadline:
                state = mine[0].state.value if mine else "not yet on record"
                raise FederationError(f"timed out waiting for the forget request ({state})")
            time.sleep(0.5)


def _config(cls: type, env_prefix: str, argv: Sequence[str]) -> Any:
    """A daemon's configuration from the same flags its process would get, through the same
    layers (flags, then FORSAKEN_* environment variables) as the command line."""
    from forsaken.common.config import add_arguments, resolve

    parser = argparse.ArgumentParser(prog=argv[0], exit_on_error=False)
    add_arguments(parser, cls=cls, env_prefix=env_prefix)
    try:
        args = parser.parse_args(argv[1:])
    except argparse.ArgumentError as exc:
        raise FederationError(f"{argv[0]}: {exc}") from None
    return resolve(cls, args, env_prefix=env_prefix)


@dataclass
class _InProcessNode:
    """A client daemon (`ClientApp`) on a thread of this process."""

    index: int
    app: Any
    thread: threading.Thread
    exit_code: int | None = None

    @classmethod
    def start(cls, index: int, config: Any, observers: Sequence[ClientObserver]) -> _InProcessNode:
        from forsaken.client.app import ClientApp

        node = cls(index, ClientApp(config, observers=observers), threading.Thread())
        node.thread = threading.Thread(target=node._run, name=f"client-{index}", daemon=True)
        node.thread.start()
        return node

    def _run(self) -> None:
        code = self.app.run()
        # A client the server told to stop (its rounds are done) ends with 0: not a failure.
        self.exit_code = code if code else None

    def stop(self) -> None:
        self.app.daemon.stop()
        self.app.connection.close()
        self.thread.join(timeout=30)
