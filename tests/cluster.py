"""A real cluster for integration tests: server and clients as separate OS processes."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from forsaken.cli.status import fetch_status
from forsaken.launch import forsaken_command, free_port, spawn, terminate, wait_healthy


class Cluster:
    def __init__(self, root: Path, dataset: str = "digits", **server_opts: Any) -> None:
        self.root = root
        self.dataset = dataset
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.server_opts = {"poll-timeout-s": 2, "liveness-s": 10, **server_opts}
        self.server: subprocess.Popen[bytes] | None = None
        self.clients: dict[int, subprocess.Popen[bytes]] = {}
        self.client_count = 0

    def start_server(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        args = [
            "server",
            "--listen",
            self.address,
            "--state-dir",
            str(self.root / "server"),
            "--dataset",
            self.dataset,
        ]
        for key, value in self.server_opts.items():
            args += [f"--{key}", str(value)]
        self.server = spawn(forsaken_command(*args), self.root / "logs" / "server.log", env=env)
        wait_healthy(self.address, timeout_s=60, proc=self.server)
        return self.server

    def start_client(
        self, index: int, count: int, env: dict[str, str] | None = None, **opts: Any
    ) -> subprocess.Popen[bytes]:
        args = [
            "client",
            "--server",
            self.address,
            "--state-dir",
            str(self.root / f"client-{index}"),
            "--dataset",
            self.dataset,
            "--partition",
            f"{index}/{count}",
            "--owner-listen",
            "127.0.0.1:0",
            "--max-backoff-s",
            "1",
        ]
        for key, value in opts.items():
            args += [f"--{key}", str(value)]
        proc = spawn(forsaken_command(*args), self.root / "logs" / f"client-{index}.log", env=env)
        self.clients[index] = proc
        return proc

    def status(self) -> dict[str, Any]:
        return fetch_status(self.address, 0, timeout=5)

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                last = self.status()
                if predicate(last):
                    return last
            except grpc.RpcError:  # server restarting
                pass
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}; last status: {last}\n{self.logs()}")

    def completed(self, status: dict[str, Any]) -> list[dict[str, Any]]:
        return [r for r in status["rounds"] if r["status"] == "completed" and r["round"] > 0]

    def kill_server(self) -> None:
        assert self.server is not None
        self.server.send_signal(signal.SIGKILL)
        self.server.wait()

    def logs(self) -> str:
        out = []
        for path in sorted((self.root / "logs").glob("*.log")):
            out.append(f"--- {path.name}\n" + "\n".join(path.read_text().splitlines()[-25:]))
        return "\n".join(out)

    def stop(self) -> None:
        procs = [p for p in [self.server, *self.clients.values()] if p is not None]
        terminate(procs, grace_s=5)
