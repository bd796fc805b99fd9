"""Revocation with real processes: a revoked node is refused at once and on every re-join."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from forsaken.procs import forsaken_command
from tests.cluster import Cluster

pytestmark = pytest.mark.slow


def test_revoked_client_is_refused_and_exits(tmp_path: Path) -> None:
    c = Cluster(tmp_path, rounds=0, **{"min-clients": 3, "min-completed": 2})
    try:
        c.start_server()
        proc = c.start_client(0, 2)
        status = c.wait_for(lambda s: len(s["clients"]) == 1, 60, "the client to join")
        node = status["clients"][0]["node_id"]
        out = subprocess.run(
            forsaken_command("admin", "revoke", node, "--server", c.address, "--reason", "test"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert f"node {node} is now revoked" in out.stdout
        # The client's next call is refused; it exits with the documented code 4.
        assert proc.wait(timeout=60) == 4
        assert "PERMISSION_DENIED" in (c.root / "logs" / "client-0.log").read_text()
        # It cannot come back, even after a restart with the same identity.
        again = c.start_client(0, 2)
        assert again.wait(timeout=60) == 4
        assert "is revoked" in (c.root / "logs" / "client-0.log").read_text()
        # Revoking twice is idempotent; an unknown node is NOT_FOUND.
        twice = subprocess.run(
            forsaken_command("admin", "revoke", node, "--server", c.address),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "was already revoked" in twice.stdout
        unknown = subprocess.run(
            forsaken_command("admin", "revoke", "f" * 32, "--server", c.address),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stdout
        assert c.status()["clients"][0]["node_id"] == node
    finally:
        c.stop()
