"""A busy port and a state directory in use are refused, naming who holds them.

Unit level: `ports.ensure_free` sees a listener that allows port sharing (gRPC's default) and
names this process; `StateLock` refuses a second holder and is free again after its holder
is SIGKILLed. Process level: a second server on a live server's Fleet port or metrics port,
a second client on a live client's Owner API port, and a second daemon on a live daemon's
state directory all exit 2 naming the holder's pid; after SIGKILL the directory is usable.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from forsaken.common import ports
from forsaken.common.statelock import LOCK_FILE, StateDirLocked, StateLock
from forsaken.launch import forsaken_command, free_port, spawn, terminate, wait_healthy
from tests.cluster import Cluster

# ---- unit -------------------------------------------------------------------------------------


def test_a_grpc_listener_that_allows_sharing_still_counts_as_busy() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(1))  # SO_REUSEPORT on: gRPC's default
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with pytest.raises(ports.PortInUse) as info:
            ports.ensure_free(f"127.0.0.1:{port}", "test API")
        message = str(info.value)
        assert f"127.0.0.1:{port} (test API)" in message
        assert f"pid {os.getpid()}" in message
        assert [h.pid for h in ports.listeners(port)] == [os.getpid()]
    finally:
        server.stop(0)


def test_grpc_without_port_sharing_cannot_bind_a_busy_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = grpc.server(futures.ThreadPoolExecutor(1), options=[ports.GRPC_NO_PORT_SHARING])
        with pytest.raises(RuntimeError):
            server.add_insecure_port(f"127.0.0.1:{port}")


def test_a_free_port_and_port_zero_pass() -> None:
    ports.ensure_free(f"127.0.0.1:{free_port()}", "test")
    ports.ensure_free("127.0.0.1:0", "test")


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:7070", ("127.0.0.1", 7070)), ("[::1]:9", ("::1", 9)), (":9100", ("", 9100))],
)
def test_split_address(address: str, expected: tuple[str, int]) -> None:
    assert ports.split_address(address) == expected


@pytest.mark.parametrize("address", ["7070", "host:port", "[::1]", "127.0.0.1:70000"])
def test_split_address_refuses_bad_addresses(address: str) -> None:
    with pytest.raises(ports.ConfigError):
        ports.split_address(address)


def test_a_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    lock = StateLock.acquire(tmp_path, "server")
    try:
        with pytest.raises(StateDirLocked) as info:
            StateLock.acquire(tmp_path, "server")
        assert f"pid {os.getpid()}" in str(info.value)
        assert str(tmp_path) in str(info.value)
    finally:
        lock.release()
    assert (tmp_path / LOCK_FILE).read_text() == ""  # a clean release leaves no pid behind
    StateLock.acquire(tmp_path, "server").release()


def test_a_lock_whose_holder_was_sigkilled_is_free(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from forsaken.common.statelock import StateLock\n"
            "StateLock.acquire(Path(sys.argv[1]), 'client daemon')\n"
            "print('locked', flush=True); time.sleep(120)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateDirLocked, match=f"pid {holder.pid}"):
            StateLock.acquire(tmp_path, "client daemon")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    # The file still names the dead holder; the kernel dropped its flock with it.
    assert (tmp_path / LOCK_FILE).read_text().startswith(f"{holder.pid} ")
    lock = StateLock.acquire(tmp_path, "client daemon")
    assert (tmp_path / LOCK_FILE).read_text().startswith(f"{os.getpid()} ")
    lock.release()


# ---- real daemons -----------------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(forsaken_command(*args), capture_output=True, text=True, timeout=120)


def _client(root: Path, name: str, server: str, owner: str) -> list[str]:
    return forsaken_command(
        "client",
        "--server",
        server,
        "--state-dir",
        str(root / name),
        "--dataset",
        "digits",
        "--partition",
        "0/2",
        "--owner-listen",
        owner,
        "--max-backoff-s",
        "1",
    )


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, f"exited with {proc.returncode}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


@pytest.mark.slow
def test_second_server_on_a_busy_port_or_state_dir_exits_2(tmp_path: Path) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    c = Cluster(tmp_path / "a", rounds=0, **{"metrics-listen": metrics})
    try:
        first = c.start_server()
        base = ("server", "--dataset", "digits", "--rounds", "0")
        same_port = _run(*base, "--listen", c.address, "--state-dir", str(tmp_path / "b"))
        assert same_port.returncode == 2, same_port.stderr
        assert f"cannot listen on {c.address} (Fleet and Admin APIs)" in same_port.stderr
        assert f"pid {first.pid}" in same_port.stderr

        other = f"127.0.0.1:{free_port()}"
        elsewhere = ("--listen", other, "--state-dir", str(tmp_path / "c"))
        same_metrics = _run(*base, *elsewhere, "--metrics-listen", metrics)
        assert same_metrics.returncode == 2, same_metrics.stderr
        assert f"cannot listen on {metrics} (metrics endpoint)" in same_metrics.stderr
        assert f"pid {first.pid}" in same_metrics.stderr

        server_dir = str(tmp_path / "a" / "server")
        same_dir = _run(*base, "--listen", other, "--state-dir", server_dir)
        assert same_dir.returncode == 2, same_dir.stderr
        assert f"in use by another server, pid {first.pid}" in same_dir.stderr

        # The first server is untouched by all three, and still the only one serving.
        assert c.status()["phase"] == "waiting"
        c.kill_server()  # SIGKILL: no chance to release anything
        restarted = spawn(
            forsaken_command(
                *base, "--listen", other, "--state-dir", server_dir, "--poll-timeout-s", "2"
            ),
            tmp_path / "logs" / "restarted.log",
        )
        try:
            wait_healthy(other, timeout_s=60, proc=restarted)
        finally:
            terminate([restarted])
        assert restarted.returncode == 0
    finally:
        c.stop()


@pytest.mark.slow
def test_second_client_on_a_busy_owner_port_or_state_dir_exits_2(tmp_path: Path) -> None:
    server = f"127.0.0.1:{free_port()}"  # nobody listens: the clients only retry
    owner = f"127.0.0.1:{free_port()}"
    first = spawn(_client(tmp_path, "a", server, owner), tmp_path / "a.log")
    try:
        _wait_file(tmp_path / "a" / "owner_address", first)
        busy = subprocess.run(
            _client(tmp_path, "b", server, owner), capture_output=True, text=True, timeout=120
        )
        assert busy.returncode == 2, busy.stderr
        assert f"cannot listen on {owner} (Owner API)" in busy.stderr
        assert f"pid {first.pid}" in busy.stderr

        locked = subprocess.run(
            _client(tmp_path, "a", server, "127.0.0.1:0"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert locked.returncode == 2, locked.stderr
        assert f"in use by another client daemon, pid {first.pid}" in locked.stderr

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        (tmp_path / "a" / "owner_address").unlink()
        again = spawn(_client(tmp_path, "a", server, owner), tmp_path / "again.log")
        try:
            _wait_file(tmp_path / "a" / "owner_address", again)  # it got past the lock
        finally:
            terminate([again])
        assert again.returncode == 0
    finally:
        terminate([first])
