"""Exit codes as the README documents them, by real signals to real daemon processes.

0 SIGTERM (clean), 2 bad configuration, 3 certificates that cannot work (after
--tls-failure-limit identical failures, each logged at WARNING with the flag to fix),
4 refused (revoked), 130 SIGINT. The operator tools print the same diagnosis and exit 3.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from forsaken.common import certs, tls
from forsaken.common.identity import NodeIdentity
from forsaken.launch import forsaken_command, free_port, spawn, terminate, wait_healthy
from tests.cluster import Cluster

pytestmark = pytest.mark.slow


def _stopped_by(proc: subprocess.Popen[bytes], signum: int) -> int:
    proc.send_signal(signum)
    return proc.wait(timeout=60)


def _connected(c: Cluster, node_id: str, timeout_s: float = 90) -> None:
    c.wait_for(
        lambda s: any(x["node_id"] == node_id and x["connected"] for x in s["clients"]),
        timeout_s,
        f"node {node_id} to connect",
    )


def test_signals_revocation_and_bad_config(tmp_path: Path) -> None:
    c = Cluster(tmp_path, rounds=0, **{"min-clients": 5})
    try:
        server = c.start_server()
        for index, signum, expected in ((0, signal.SIGINT, 130), (1, signal.SIGTERM, 0)):
            client = c.start_client(index, 3)
            _connected(c, NodeIdentity.load_or_create(tmp_path / f"client-{index}").node_id)
            assert _stopped_by(client, signum) == expected, c.logs()

        revoked = c.start_client(2, 3)
        node = NodeIdentity.load_or_create(tmp_path / "client-2").node_id
        _connected(c, node)
        admin = subprocess.run(
            forsaken_command("admin", "revoke", node, "--server", c.address),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert admin.returncode == 0, admin.stdout + admin.stderr
        assert revoked.wait(timeout=60) == 4, c.logs()

        assert _stopped_by(server, signal.SIGINT) == 130, c.logs()
        server = c.start_server()  # same state directory: the lock went with the process
        assert _stopped_by(server, signal.SIGTERM) == 0, c.logs()
        assert "stopped cleanly" in (tmp_path / "logs" / "server.log").read_text()
    finally:
        c.stop()
    bad = subprocess.run(
        forsaken_command("client", "--partition", "3/2", "--state-dir", str(tmp_path / "x")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "3/2" in bad.stderr, bad.stderr


def test_certificate_failures_exit_3_with_the_diagnosis(tmp_path: Path) -> None:
    fed = certs.init_federation(tmp_path / "pki", ["127.0.0.1"], clients=1)
    stranger = certs.init_federation(tmp_path / "other", ["127.0.0.1"], clients=0)
    address = f"127.0.0.1:{free_port()}"
    tls_flags = [
        "--tls-cert",
        str(fed.server_dir / "cert.pem"),
        "--tls-key",
        str(fed.server_dir / "key.pem"),
        "--tls-ca",
        str(fed.ca_cert),
    ]
    server = spawn(
        forsaken_command(
            "server",
            "--listen",
            address,
            "--state-dir",
            str(tmp_path / "server"),
            "--dataset",
            "digits",
            "--rounds",
            "0",
            *tls_flags,
        ),
        tmp_path / "server.log",
    )
    try:
        probe = tls.channel_credentials(fed.operator_dir("admin"))
        wait_healthy(address, timeout_s=60, proc=server, credentials=probe)
        state = tmp_path / "client"
        shutil.copytree(fed.client_dir(0), state)
        log = tmp_path / "client.log"
        client = spawn(
            forsaken_command(
                "client",
                "--server",
                address,
                "--state-dir",
                str(state),
                "--dataset",
                "digits",
                "--owner-listen",
                "127.0.0.1:0",
                "--max-backoff-s",
                "0.5",
                "--tls-failure-limit",
                "3",
                "--tls-cert",
                str(state / "cert.pem"),
                "--tls-key",
                str(state / "key.pem"),
                "--tls-ca",
                str(stranger.ca_cert),  # the wrong CA
            ),
            log,
        )
        assert client.wait(timeout=90) == 3, log.read_text()
        text = log.read_text()
        warnings = [ln for ln in text.splitlines() if " WARNING " in ln and "--tls-ca" in ln]
        assert len(warnings) == 3, text
        assert "did not sign (CERTIFICATE_VERIFY_FAILED: wrong CA)" in warnings[0]
        assert "giving up after 3 identical certificate failures (exit code 3)" in text

        def tool(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                forsaken_command(*args), capture_output=True, text=True, timeout=60
            )

        plain = tool("status", "--server", address)
        assert plain.returncode == 3, plain.stderr
        assert "speaks TLS" in plain.stderr and "--tls-dir" in plain.stderr
        assert "health check" in plain.stderr

        strange = str(stranger.operator_dir("admin"))
        wrong = tool("status", "--server", address, "--tls-dir", strange)
        assert wrong.returncode == 3 and "wrong CA" in wrong.stderr, wrong.stderr
        revoke = tool("admin", "revoke", "ab" * 16, "--server", address, "--tls-dir", strange)
        assert revoke.returncode == 3 and "wrong CA" in revoke.stderr, revoke.stderr
        forget = tool("forget", "--client", address)
        assert forget.returncode == 1, forget.stdout
        assert "not a client daemon's Owner API" in " ".join(forget.stdout.split())

        ok = tool("status", "--server", address, "--tls-dir", str(fed.operator_dir("admin")))
        assert ok.returncode == 0, ok.stderr
    finally:
        terminate([server])


def test_a_call_on_a_channel_closed_by_a_signal_is_a_shutdown_not_a_crash() -> None:
    from forsaken.client.transport import FleetConnection
    from forsaken.common import errors

    conn = FleetConnection(f"127.0.0.1:{free_port()}", NodeIdentity.generate())
    conn.close()  # what the client's SIGINT/SIGTERM handler does to cut a long-poll short
    conn.token = b"session"
    with pytest.raises(errors.Unavailable, match="shutting down"):
        conn.pull(1)


def test_unusable_own_certificates_refuse_to_start_with_3(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    fed = certs.init_federation(tmp_path / "pki", ["127.0.0.1"], clients=2)
    one, other = fed.client_dir(0), fed.client_dir(1)
    swapped = subprocess.run(
        forsaken_command(
            "client",
            "--state-dir",
            str(one),
            "--dataset",
            "digits",
            "--owner-listen",
            "127.0.0.1:0",
            "--tls-cert",
            str(other / "cert.pem"),
            "--tls-key",
            str(other / "key.pem"),
            "--tls-ca",
            str(fed.ca_cert),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert swapped.returncode == 3, swapped.stderr
    assert "not of this node" in swapped.stderr and "forsaken certs issue" in swapped.stderr

    ca = certs.load_ca(fed.root)
    month_ago = datetime.now(UTC) - timedelta(days=30)
    expired = certs.issue_server_cert(ca, ["127.0.0.1"], days=2, now=month_ago)
    certs.write_credential(tmp_path / "old", expired, ca.cert)
    server = subprocess.run(
        forsaken_command(
            "server",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--state-dir",
            str(tmp_path / "server"),
            "--dataset",
            "digits",
            "--tls-cert",
            str(tmp_path / "old" / "cert.pem"),
            "--tls-key",
            str(tmp_path / "old" / "key.pem"),
            "--tls-ca",
            str(fed.ca_cert),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert server.returncode == 3, server.stderr
    assert "the server's certificate" in server.stderr and "expired on" in server.stderr
