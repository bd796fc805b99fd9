"""The one launcher of federations as real daemons: a server and N clients as OS processes on
loopback, each with its port, state directory and log, optionally over mutual TLS, started when
ready and stopped cleanly (SIGTERM, then SIGKILL).

The facade (`forsaken.Federation`), the demo, the evaluation, the comparison with Flower and
the integration tests all start their daemons through `Launcher`. Children get a parent-death
signal so they die with their parent even if it is SIGKILLed, and every owner tears them down
in a `finally`, so nothing leaves an orphan behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from forsaken.common import tls
from forsaken.common.certs import Layout, init_federation


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def forsaken_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "forsaken", *args]


def spawn(
    argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a daemon that dies with its parent, with its output appended to `log_path`.

    `setpriv --pdeathsig TERM` makes the kernel signal the child when this process dies, even
    by SIGKILL. It replaces a `preexec_fn`, which forces a fork that runs Python in the child:
    in a parent that has used gRPC, a few percent of such children abort before they exec.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    # Each daemon trains single-threaded; oversubscribing 2 cores with BLAS threads hurts.
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env.setdefault("MKL_NUM_THREADS", "1")
    if env:
        full_env.update(env)
    prefix = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [*prefix, *argv], stdout=log, stderr=subprocess.STDOUT, env=full_env
        )


def wait_healthy(
    address: str,
    timeout_s: float = 60.0,
    proc: subprocess.Popen[bytes] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Block until the server's gRPC health check says SERVING."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with code {proc.returncode}")
        if tls.health_check(address, credentials, timeout_s=1.0):
            return
        time.sleep(0.2)
    raise TimeoutError(f"server at {address} not healthy after {timeout_s:.0f}s")


def terminate(procs: Sequence[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    """SIGTERM everything still running, then SIGKILL what outlives the grace period."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def daemon_argv(command: str, flags: Mapping[str, object]) -> list[str]:
    """`forsaken <command> --name value ...`; True is a bare `--name`, None and False are left
    out, so callers can switch a flag off by overriding it."""
    out = [command]
    for name, value in flags.items():
        if value is None or value is False:
            continue
        out += [f"--{name}"] if value is True else [f"--{name}", str(value)]
    return out


@dataclass
class Daemon:
    """A daemon process a `Launcher` started, with its log."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout=timeout_s)

    def terminate(self, grace_s: float = 10.0) -> None:
        terminate([self.proc], grace_s)

    def kill(self) -> None:
        """SIGKILL, as a crash would: the daemon gets no chance to clean up."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def log_tail(self, lines: int = 25) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Launcher:
    """A server and clients as real daemons under `root`.

    Layout: root/server (the server's --state-dir), root/client-<i> (client i's), root/logs,
    and with `tls` root/pki (the federation's CA and certificates, `forsaken certs`); each
    client's state directory then starts with its node key and certificate. The server listens
    on 127.0.0.1 at `port` (0: a free one); clients publish their Owner API address in their
    state directory. Flags given to `start_server`/`start_client` add to or override the
    launcher's own (listen address, state directory, TLS files).
    """

    def __init__(
        self,
        root: Path,
        *,
        clients: int,
        tls: bool = False,
        pki: Layout | None = None,
        port: int = 0,
    ) -> None:
        self.root = root
        self.clients = clients
        self.address = f"127.0.0.1:{port or free_port()}"
        self.server: Daemon | None = None
        self.client_daemons: dict[int, Daemon] = {}
        root.mkdir(parents=True, exist_ok=True)
        # A PKI of the caller's (shared by several runs) or, with `tls`, one of this root's own.
        self.pki = pki
        if tls and pki is None:
            self.pki = init_federation(root / "pki", ["localhost"], clients, operators=("admin",))
        if self.pki is not None:
            for i in range(clients):
                if not self.client_dir(i).exists():
                    # The node key and certificate: the client's identity in this federation.
                    shutil.copytree(self.pki.client_dir(i), self.client_dir(i))

    # -- where things are --

    @property
    def server_dir(self) -> Path:
        return self.root / "server"

    def client_dir(self, index: int) -> Path:
        return self.root / f"client-{index}"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def operator_dir(self) -> Path | None:
        """The Admin API credential under TLS; None for plaintext."""
        return self.pki.operator_dir("admin") if self.pki is not None else None

    def admin_channel(self) -> grpc.Channel:
        if self.operator_dir is None:
            return grpc.insecure_channel(self.address)
        return tls.secure_channel(self.address, tls.channel_credentials(self.operator_dir))

    def owner_address(self, index: int) -> str | None:
        """Client `index`'s Owner API, once its daemon has published it."""
        from forsaken.client.app import OWNER_ADDRESS_FILE

        path = self.client_dir(index) / OWNER_ADDRESS_FILE
        try:
            return path.read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def daemons(self) -> list[Daemon]:
        return [d for d in (self.server, *self.client_daemons.values()) if d is not None]

    # -- starting and stopping --

    def server_argv(self, flags: Mapping[str, object] | None = None) -> list[str]:
        """`server --listen ... --state-dir ...` with this launcher's own flags, then `flags`."""
        own: dict[str, object] = {"listen": self.address, "state-dir": self.server_dir}
        if self.pki is not None:
            own |= {
                "tls-cert": self.pki.server_dir / "cert.pem",
                "tls-key": self.pki.server_dir / "key.pem",
                "tls-ca": self.pki.ca_cert,
            }
        return daemon_argv("server", own | dict(flags or {}))

    def client_argv(self, index: int, flags: Mapping[str, object] | None = None) -> list[str]:
        """`client --server ... --state-dir ...` of client `index`, then `flags`."""
        state = self.client_dir(index)
        own: dict[str, object] = {
            "server": self.address,
            "state-dir": state,
            "owner-listen": "127.0.0.1:0",
            "max-backoff-s": 1,
        }
        if self.pki is not None:
            own |= {
                "tls-cert": state / "cert.pem",
                "tls-key": state / "key.pem",
                "tls-ca": state / "ca.pem",
            }
        return daemon_argv("client", own | dict(flags or {}))

    def start_server(
        self,
        flags: Mapping[str, object] | None = None,
        *,
        env: dict[str, str] | None = None,
        ready_timeout_s: float = 120.0,
    ) -> Daemon:
        """Start the server and wait until its health check says SERVING."""
        log = self.log_dir / "server.log"
        argv = forsaken_command(*self.server_argv(flags))
        self.server = Daemon("server", spawn(argv, log, env), log)
        credentials = tls.channel_credentials(self.operator_dir) if self.operator_dir else None
        wait_healthy(self.address, ready_timeout_s, self.server.proc, credentials)
        return self.server

    def start_client(
        self,
        index: int,
        flags: Mapping[str, object] | None = None,
        *,
        env: dict[str, str] | None = None,
    ) -> Daemon:
        """Start client `index` (it connects to the server by itself, retrying)."""
        log = self.log_dir / f"client-{index}.log"
        argv = forsaken_command(*self.client_argv(index, flags))
        daemon = Daemon(f"client {index}", spawn(argv, log, env), log)
        self.client_daemons[index] = daemon
        return daemon

    def check_alive(self) -> None:
        """Raise if a daemon this launcher runs has exited (a stopped one is forgotten)."""
        for d in self.daemons:
            if not d.alive:
                raise DaemonExited(d)

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM every daemon, SIGKILL what outlives `grace_s`."""
        terminate([d.proc for d in self.daemons], grace_s)
        self.server = None
        self.client_daemons = {}

    def logs(self, lines: int = 25) -> str:
        """The tail of every log, for error messages."""
        out = []
        for path in sorted(self.log_dir.glob("*.log")):
            tail = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            out.append(f"--- {path.name}\n{tail}")
        return "\n".join(out)

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class DaemonExited(RuntimeError):
    def __init__(self, daemon: Daemon) -> None:
        super().__init__(f"{daemon.name} exited with code {daemon.returncode}; see {daemon.log}")
        self.daemon = daemon
