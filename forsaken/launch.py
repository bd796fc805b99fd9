"""Starting and stopping daemon processes for the demo, benchmarks and tests.

Children get a parent-death signal so they die with their parent even if it is SIGKILLed, and
the launcher tears everything down in a `finally`, so a demo leaves no orphan behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from forsaken.common import tls


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
