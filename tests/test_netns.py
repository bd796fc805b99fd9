"""A federation across hosts: server and clients each in their own network namespace.

Every process gets its own network namespace with its own address on a private /24; the
namespaces hang off a bridge that lives in one more namespace of ours, so the test never adds
an interface, address or route to the machine's own namespace and no packet leaves it. The
server speaks mutual TLS with certificates from `init_federation(.., [server_ip], 3)`, secure
aggregation is on (the default), and three clients must complete three rounds. A client
without a certificate, and one whose certificate comes from another CA, must never get in.

Needs root (CI runs as root); skips with the reason when it cannot create namespaces. Names
carry this process's pid, so leftovers of a crashed run (whose pid is gone) are removed at
the start, and a run beside this one is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from forsaken.common import certs
from forsaken.common.identity import NodeIdentity
from forsaken.launch import terminate
from tests.test_tls_auth import spawn_detached

pytestmark = pytest.mark.slow

PREFIX = "fsk"
PORT = 7070  # the namespaces are ours alone: no port can be taken in them
_NAME_RE = re.compile(rf"^{PREFIX}(\d+)-")

# Watches the Admin API from inside the server's namespace, printing one JSON line per poll
# with the function behind `forsaken status --json`: one long-lived process, because starting
# the CLI (which imports torch) for every poll costs seconds of CPU on a busy 2-core box. The
# final state is then read with the CLI itself.
_WATCH = """
import json, sys, time
from pathlib import Path
import grpc
from forsaken.cli.status import fetch_status
while True:
    try:
        out = fetch_status(sys.argv[1], 0, timeout=5, tls_dir=Path(sys.argv[2]))
    except grpc.RpcError as exc:
        out = {"error": exc.code().name, "details": exc.details()}
    print(json.dumps(out), flush=True)
    time.sleep(0.5)
"""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {out.stderr.strip()}")
    return out


def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL what still runs in one of our namespaces (only our daemons ever run there)."""
    for line in ip("netns", "pids", ns, check=False).stdout.split():
        if line.isdigit():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line), signal.SIGKILL)


def _delete_namespace(ns: str) -> None:
    _kill_namespace_processes(ns)
    ip("netns", "del", ns, check=False)


def clean_leftovers() -> list[str]:
    """Remove namespaces of earlier runs whose process is gone; returns their names."""
    removed = []
    for line in ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _NAME_RE.match(name)
        if m and not _pid_alive(int(m.group(1))):
            _delete_namespace(name)
            removed.append(name)
    return removed


@dataclass
class Net:
    """One bridge namespace plus one namespace per host, each with one veth and one address."""

    tag: str
    subnet: str  # e.g. "10.231.17"
    bridge_ns: str = ""
    hosts: dict[str, str] = field(default_factory=dict)  # role -> namespace
    addresses: dict[str, str] = field(default_factory=dict)  # role -> IPv4
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def create_bridge(self) -> None:
        self.bridge_ns = f"{self.tag}-br"
        ip("netns", "add", self.bridge_ns)
        ip("-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_ns, "link", "set", "br0", "up")

    def add_host(self, role: str, host: int) -> str:
        ns = f"{self.tag}-{role}"
        index = len(self.hosts)
        outer, inner = f"vb{index}", f"eth{index}"
        ip("netns", "add", ns)
        self.hosts[role] = ns
        # Both ends are born in our namespaces: nothing is ever added to the host's own.
        ip(
            "-n",
            self.bridge_ns,
            "link",
            "add",
            outer,
            "type",
            "veth",
            "peer",
            "name",
            inner,
            "netns",
            ns,
        )
        ip("-n", self.bridge_ns, "link", "set", outer, "master", "br0")
        ip("-n", self.bridge_ns, "link", "set", outer, "up")
        address = f"{self.subnet}.{host}"
        ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
        ip("-n", ns, "link", "set", inner, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        self.addresses[role] = address
        return address

    def spawn(self, role: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Run `python -m forsaken ARGS` inside the role's namespace."""
        argv = ["ip", "netns", "exec", self.hosts[role], sys.executable, "-m", "forsaken", *args]
        proc = spawn_detached(argv, log)
        self.procs.append(proc)
        return proc

    def run(self, role: str, args: list[str]) -> subprocess.CompletedProcess[str]:
        """`python -m forsaken ARGS` in the role's namespace, to completion."""
        argv = ["ip", "netns", "exec", self.hosts[role], sys.executable, "-m", "forsaken", *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    def watch(self, role: str, code: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
        """Run a Python snippet in the role's namespace, its output going to `log`."""
        argv = ["ip", "netns", "exec", self.hosts[role], sys.executable, "-c", code, *args]
        proc = spawn_detached(argv, log)
        self.procs.append(proc)
        return proc

    def destroy(self) -> None:
        terminate(self.procs, grace_s=5)
        for ns in [*self.hosts.values(), self.bridge_ns]:
            if ns:
                _delete_namespace(ns)
        self.hosts.clear()
        self.bridge_ns = ""


@pytest.fixture
def net() -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (`ip`) is not installed")
    clean_leftovers()
    tag = f"{PREFIX}{os.getpid()}-{secrets.token_hex(2)}"
    n = Net(tag=tag, subnet=f"10.231.{secrets.randbelow(256)}")
    try:
        try:
            n.create_bridge()
        except RuntimeError as exc:
            pytest.skip(f"cannot create network namespaces or a bridge here: {exc}")
        yield n
    finally:
        n.destroy()
        leftover = [line for line in ip("netns", "list").stdout.splitlines() if tag in line]
        assert not leftover, f"namespaces left behind: {leftover}"


def _tls_flags(directory: Path, ca: Path | None = None) -> list[str]:
    return [
        "--tls-cert",
        str(directory / certs.CERT_FILE),
        "--tls-key",
        str(directory / certs.KEY_FILE),
        "--tls-ca",
        str(ca or directory / certs.CA_CERT_FILE),
    ]


def _client_args(server: str, state: Path, partition: str) -> list[str]:
    return [
        "client",
        "--server",
        server,
        "--state-dir",
        str(state),
        "--dataset",
        "digits",
        "--partition",
        partition,
        "--owner-listen",
        "127.0.0.1:0",
        "--max-backoff-s",
        "1",
    ]


def _node_id(state: Path, deadline: float) -> str:
    """The node id of a client daemon that creates its key at start-up."""
    key = state / "node_key.ed25519"
    while not key.exists():
        assert time.monotonic() < deadline, f"no node key appeared in {state}"
        time.sleep(0.2)
    return NodeIdentity.load_or_create(state).node_id


def test_three_hosts_complete_three_rounds_over_mtls(net: Net, tmp_path: Path) -> None:
    server_ip = net.add_host("srv", 1)
    for i in range(3):
        net.add_host(f"c{i}", 2 + i)
    net.add_host("nocert", 10)
    net.add_host("foreign", 11)
    layout = certs.init_federation(tmp_path / "pki", [server_ip], 3)
    other = certs.init_federation(tmp_path / "other-pki", [server_ip], 1)
    address = f"{server_ip}:{PORT}"
    logs = tmp_path / "logs"

    server = net.spawn(
        "srv",
        [
            "server",
            "--listen",
            address,
            "--state-dir",
            str(tmp_path / "server"),
            *_tls_flags(layout.server_dir),
            "--rounds",
            "3",
            "--min-clients",
            "3",
            "--min-completed",
            "2",
            "--dataset",
            "digits",
            "--local-epochs",
            "1",
            "--poll-timeout-s",
            "2",
        ],
        logs / "server.log",
    )

    watch_log = tmp_path / "status.jsonl"  # not under logs/: it is no daemon's log
    watcher = net.watch("srv", _WATCH, [address, str(layout.operator_dir("admin"))], watch_log)

    def latest() -> dict[str, Any]:
        lines = watch_log.read_text().splitlines() if watch_log.exists() else []
        for line in reversed(lines):
            if line.startswith("{"):
                try:
                    return dict(json.loads(line))
                except json.JSONDecodeError:  # a line still being written
                    continue
        return {}

    def wait_for(pred: Any, timeout_s: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert server.poll() is None, (logs / "server.log").read_text()
            assert watcher.poll() is None, watch_log.read_text()[-2000:]
            last = latest()
            if last and "error" not in last and pred(last):
                return last
            time.sleep(0.25)
        tails = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs.glob("*.log"))
        raise AssertionError(f"timed out waiting for {what}; last {last}\n{tails}")

    wait_for(lambda s: s["phase"] == "waiting", 90, "the server to serve")

    # The two intruders start first, so they have every chance to sneak in.
    nocert = tmp_path / "nocert"
    bad = [
        net.spawn(
            "nocert",
            [*_client_args(address, nocert, "0/3"), "--insecure"],
            logs / "nocert.log",
        ),
    ]
    foreign = tmp_path / "foreign"
    shutil.copytree(other.client_dir(0), foreign)
    bad.append(
        net.spawn(
            "foreign",
            # Trusts our CA, so the server's certificate verifies; presents another CA's.
            [*_client_args(address, foreign, "1/3"), *_tls_flags(foreign, ca=layout.ca_cert)],
            logs / "foreign.log",
        )
    )
    legit = []
    for i in range(3):
        state = tmp_path / f"client-{i}"
        shutil.copytree(layout.client_dir(i), state)
        legit.append(
            net.spawn(
                f"c{i}",
                [*_client_args(address, state, f"{i}/3"), *_tls_flags(state)],
                logs / f"client-{i}.log",
            )
        )

    wait_for(lambda s: s["phase"] == "finished", 240, "three rounds")
    cli = net.run(
        "srv",
        [
            "status",
            "--server",
            address,
            "--tls-dir",
            str(layout.operator_dir("admin")),
            "--rounds",
            "0",
            "--json",
        ],
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    final = json.loads(cli.stdout)
    assert final["phase"] == "finished" and final["completed_rounds"] == 3
    rounds = [r for r in final["rounds"] if r["status"] == "completed" and r["round"] > 0]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    members = set(layout.node_ids)
    for r in rounds:
        assert len(r["participants"]) >= 2 and set(r["participants"]) <= members, r
    assert final["secure_aggregation"] is True
    assert {c["node_id"] for c in final["clients"]} == members
    for proc in legit:
        assert proc.wait(timeout=60) == 0, "a member did not exit after the federation finished"

    # The intruders never joined. Each was told why its handshake failed, in plain words, and
    # gave up with exit 3 after --tls-failure-limit (5) identical certificate failures.
    nocert_id = _node_id(nocert, time.monotonic() + 30)
    assert nocert_id not in {c["node_id"] for c in final["clients"]}
    assert other.node_ids[0] not in {c["node_id"] for c in final["clients"]}
    told = {
        "nocert": "speaks TLS but this side dials in plaintext",
        "foreign": "refused this side's certificate",
    }
    for proc, (name, why) in zip(bad, told.items(), strict=True):
        text = (logs / f"{name}.log").read_text()
        assert proc.wait(timeout=60) == 3, text[-2000:]
        assert why in text and "joined as node" not in text, text[-2000:]
        assert "after 5 identical certificate failures (exit code 3)" in text, text[-2000:]


def test_insecure_server_keeps_its_admin_api_off_the_network(net: Net, tmp_path: Path) -> None:
    """--insecure exposes the Fleet API in plaintext, but the Admin API answers only on the
    server's own loopback: an operator elsewhere needs mutual TLS and an operator cert."""
    server_ip = net.add_host("srv", 1)
    net.add_host("op", 2)
    ip("netns", "exec", net.hosts["srv"], "ip", "link", "set", "lo", "up")
    server = net.spawn(
        "srv",
        [
            "server",
            "--listen",
            f"0.0.0.0:{PORT}",
            "--insecure",
            "--state-dir",
            str(tmp_path / "server"),
            "--dataset",
            "digits",
            "--rounds",
            "0",
            "--min-clients",
            "5",
        ],
        tmp_path / "logs" / "server.log",
    )
    deadline = time.monotonic() + 90
    local = remote = None
    while time.monotonic() < deadline and server.poll() is None:
        local = net.run("srv", ["status", "--server", f"127.0.0.1:{PORT}", "--json"])
        if local.returncode == 0:
            break
        time.sleep(1)
    assert local is not None and local.returncode == 0, local
    assert json.loads(local.stdout)["phase"] == "waiting"
    remote = net.run("op", ["status", "--server", f"{server_ip}:{PORT}", "--json"])
    assert remote.returncode == 1
    said = " ".join(remote.stderr.split())
    assert "PERMISSION_DENIED" in said and "only on loopback" in said
    log = (tmp_path / "logs" / "server.log").read_text()
    assert "PLAINTEXT gRPC" in log
