"""Revocation with real processes: a revoked node is refused at once and on every re-join."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from forsaken.launch import forsaken_command
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


def admin(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        forsaken_command("admin", *args, "--server", c.address),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_operator_forgets_a_revoked_node_by_retraining_with_a_server_receipt(
    tmp_path: Path,
) -> None:
    c = Cluster(tmp_path, rounds=0, **{"min-clients": 3, "min-completed": 2, "round-timeout-s": 20})
    try:
        c.start_server()
        for i in range(4):  # three stay after the revocation, enough for a round
            c.start_client(i, 4)
        status = c.wait_for(
            lambda s: s["completed_rounds"] >= 3 and len(s["clients"]) == 4, 120, "three rounds"
        )
        node = status["clients"][0]["node_id"]
        # A live node keeps training on its data: the operator must revoke it first.
        live = admin(c, "forget", node)
        assert live.returncode == 1 and "FAILED_PRECONDITION" in live.stdout
        assert "revoke it first" in live.stdout
        assert admin(c, "revoke", node).returncode == 0
        first = admin(c, "forget", node, "--method", "finetune", "--request-id", "x")
        assert first.returncode == 0 and "(finetune): requested" in first.stdout, first.stdout
        out = admin(c, "forget", node, "--request-id", "op-1", "--wait", "--json")
        # finetune went first (one request at a time); retrain follows it to its receipt.
        assert out.returncode == 0, out.stdout + out.stderr
        info = json.loads(out.stdout)
        assert info["state"] == "completed" and info["initiated_by"] == "operator:loopback"
        receipt = info["receipt"]
        assert receipt["verified_by"] == "server" and receipt["method"] == "retrain"
        assert receipt["reference"].startswith("exact: the model was rolled back")
        assert receipt["model_sha256_after"] != receipt["model_sha256_before"]
        # The same request id is the same request.
        again = admin(c, "forget", node, "--request-id", "op-1", "--json")
        assert json.loads(again.stdout)["forget_id"] == info["forget_id"]
        requests = c.status()["forget_requests"]
        assert [r["initiated_by"] for r in requests] == ["operator:loopback"] * 2
    finally:
        c.stop()
