"""Running Flower in its deployment mode: a SuperLink, N SuperNodes, and `flwr run`.

Flower lives in its own virtualenv (`.venv-bench`, made by `make bench-compare`), because its
pins (protobuf < 7) conflict with ours; this module only starts its executables. `FLWR_HOME`
stays in a scratch directory, and the SuperLink never installs an app's dependencies at run
time: the app is installed into `.venv-bench` instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from forsaken.launch import free_port, spawn

APP_DIR = Path(__file__).resolve().parent / "flower_app"
CONNECTION = "bench"
KILL_MARKER = "kill-{partition}.marker"  # as in flower_app/forsaken_flower/client_app.py
RESULT_FILE = "result.json"  # as in flower_app/forsaken_flower/server_app.py


class FlowerError(RuntimeError):
    pass


def flower_version(venv: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import flwr; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Flower detaches some children into new sessions)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process we started and everything it started."""
    for pid in [*_descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FlowerError(f"flower-superlink exited with code {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FlowerError(f"flower-superlink not listening on {port} after {timeout_s:.0f}s")


class FlowerCluster:
    """One SuperLink and `clients` SuperNodes (partition i of N each), on loopback."""

    def __init__(self, venv: Path, scratch: Path, clients: int) -> None:
        self.venv = venv.resolve()
        self.root = scratch.resolve()
        self.clients = clients
        self.home = self.root / "flwr-home"
        self.logs = self.root / "logs"
        self.port = free_port()
        self.superlink: subprocess.Popen[bytes] | None = None
        self.supernodes: dict[int, subprocess.Popen[bytes]] = {}
        self.runs = 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(self.home)
        env["VIRTUAL_ENV"] = str(self.venv)
        env["PYTHONUNBUFFERED"] = "1"
        # As forsaken's daemons: one thread per process, or 2 cores thrash.
        env["OMP_NUM_THREADS"] = "1"
        env["MKL_NUM_THREADS"] = "1"
        return env

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        return spawn(argv, self.logs / log_name, env=self.env())

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        bin_ = self.venv / "bin"
        self.superlink = self._spawn(
            [
                str(bin_ / "flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            "superlink.log",
        )
        _wait_port(self.port, self.superlink, 120)
        for i in range(self.clients):
            self.start_supernode(i)

    def start_supernode(self, i: int) -> None:
        self.supernodes[i] = self._spawn(
            [
                str(self.venv / "bin" / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.port}",
                "--port",
                str(free_port()),
                "--node-config",
                f"partition-id={i} num-partitions={self.clients}",
            ],
            f"supernode-{i}.log",
        )

    def kill_supernode(self, i: int) -> None:
        kill_tree(self.supernodes.pop(i))

    def stop(self) -> None:
        for proc in list(self.supernodes.values()):
            kill_tree(proc)
        self.supernodes.clear()
        if self.superlink is not None:
            kill_tree(self.superlink)
            self.superlink = None

    def __enter__(self) -> FlowerCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _flwr(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.venv / "bin" / "flwr"), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.root,
            timeout=timeout_s,
        )

    def run(
        self,
        config: dict[str, Any],
        timeout_s: float,
        kill_partition: int | None = None,
    ) -> dict[str, Any]:
        """`flwr run` the app with this run config; wait for its result.json and return it.

        With `kill_partition`, that partition's SuperNode is SIGKILLed (with its ClientApp)
        as soon as the ClientApp reports that it shared its keys.
        """
        self.runs += 1
        out = self.root / f"run-{self.runs}"
        out.mkdir(parents=True, exist_ok=True)
        config = {
            **config,
            "out-dir": str(out),
            "kill-partition": -1 if kill_partition is None else kill_partition,
        }
        pairs = " ".join(f"{k}={_toml(v)}" for k, v in config.items())
        started = time.monotonic()
        proc = self._flwr(
            "run", str(APP_DIR), CONNECTION, "--run-config", pairs, "--format", "json"
        )
        if proc.returncode != 0:
            raise FlowerError(f"flwr run failed: {proc.stdout}\n{proc.stderr}")
        run_id = str(json.loads(proc.stdout).get("run-id", ""))
        result = out / RESULT_FILE
        marker = out / KILL_MARKER.format(partition=kill_partition)
        killed_at: float | None = None
        last_check = time.monotonic()
        data: dict[str, Any] = {}
        while time.monotonic() - started < timeout_s:
            if kill_partition is not None and killed_at is None and marker.exists():
                self.kill_supernode(kill_partition)
                killed_at = time.time()
            if result.exists():
                data = json.loads(result.read_text())
                if data.get("done"):
                    break
            if time.monotonic() - last_check > 10:
                last_check = time.monotonic()
                if self._run_failed(run_id):
                    break
            time.sleep(0.2)
        else:
            self._stop_run(run_id)
        data["wall_s"] = time.monotonic() - started
        data["run_id"] = run_id
        data["killed_unix"] = killed_at
        if not data.get("done"):
            log = self._flwr("log", run_id, CONNECTION, "--show", timeout_s=30)
            (out / "serverapp.log").write_text(log.stdout + log.stderr)
            data["log_tail"] = (log.stdout + log.stderr)[-2000:]
        return data

    def _run_failed(self, run_id: str) -> bool:
        proc = self._flwr("ls", CONNECTION, "--run-id", run_id, "--format", "json", timeout_s=30)
        try:
            runs = json.loads(proc.stdout).get("runs", [])
        except json.JSONDecodeError:
            return False
        return any("failed" in str(r.get("status", "")) for r in runs)

    def _stop_run(self, run_id: str) -> None:
        self._flwr("stop", run_id, CONNECTION, timeout_s=30)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))
