"""A real cluster for integration tests: the library's launcher (`forsaken.launch.Launcher`)
with the plaintext defaults the tests share, and status polling with logs on timeout."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from forsaken.cli.status import fetch_status
from forsaken.launch import Launcher


class Cluster:
    def __init__(self, root: Path, dataset: str = "digits", **server_opts: Any) -> None:
        self.root = root
        self.dataset = dataset
        self.launcher = Launcher(root, clients=0)
        self.address = self.launcher.address
        self.port = int(self.address.rsplit(":", 1)[1])
        self.server_opts = {"poll-timeout-s": 2, "liveness-s": 10, **server_opts}

    @property
    def server(self) -> subprocess.Popen[bytes] | None:
        daemon = self.launcher.server
        return daemon.proc if daemon is not None else None

    @property
    def clients(self) -> dict[int, subprocess.Popen[bytes]]:
        return {i: d.proc for i, d in self.launcher.client_daemons.items()}

    def start_server(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        flags = {"dataset": self.dataset, **self.server_opts}
        return self.launcher.start_server(flags, env=env, ready_timeout_s=60).proc

    def start_client(
        self, index: int, count: int, env: dict[str, str] | None = None, **opts: Any
    ) -> subprocess.Popen[bytes]:
        flags = {"dataset": self.dataset, "partition": f"{index}/{count}", **opts}
        return self.launcher.start_client(index, flags, env=env).proc

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
        assert self.launcher.server is not None
        self.launcher.server.kill()

    def logs(self) -> str:
        return self.launcher.logs()

    def stop(self) -> None:
        self.launcher.stop(grace_s=5)
