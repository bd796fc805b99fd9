"""ForgetMe with real processes: the owner's command, idempotency, authorization, crashes."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from forsaken.client.forgetting import CONTRIBUTION_FILE, ContributionRecord
from forsaken.client.transport import FleetConnection
from forsaken.common import errors
from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.identity import NodeIdentity
from forsaken.launch import forsaken_command
from forsaken.v1 import owner_pb2, owner_pb2_grpc
from tests.cluster import Cluster

pytestmark = pytest.mark.slow

# Rounds never end on their own (0), so clients stay up to serve their owners.
SERVER = {
    "rounds": 0,
    "min-clients": 3,
    "min-completed": 2,
    "recovery-rounds": 1,
    "round-timeout-s": 20,
}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, **SERVER)
    c.start_server()
    for i in range(3):
        c.start_client(i, 3)
    c.wait_for(lambda s: s["completed_rounds"] >= 2, 90, "two rounds")
    yield c
    c.stop()


def forget(c: Cluster, index: int, *extra: str, wait: bool = True) -> subprocess.CompletedProcess:
    args = ["forget", "--client", str(c.root / f"client-{index}"), "--json", *extra]
    if wait:
        args += ["--wait", "--timeout", "120"]
    return subprocess.run(forsaken_command(*args), capture_output=True, text=True, timeout=200)


def receipt_of(out: subprocess.CompletedProcess) -> dict[str, Any]:
    start = out.stdout.index("{")
    return json.loads(out.stdout[start:])


def owner_status(c: Cluster, index: int) -> owner_pb2.OwnerStatus:
    address = (c.root / f"client-{index}" / "owner_address").read_text().strip()
    with grpc.insecure_channel(address) as channel:
        return owner_pb2_grpc.OwnerStub(channel).Status(owner_pb2.OwnerStatusRequest(), timeout=10)


def _window(vector: np.ndarray) -> np.ndarray:
    """Four entries around the record's largest one: bytes no other file would hold."""
    i = min(int(np.abs(vector).argmax()), len(vector) - 4)
    return vector[i : i + 4]


def test_owner_forgets_everything_and_gets_a_receipt(cluster: Cluster) -> None:
    record = ContributionRecord(cluster.root / "client-0" / CONTRIBUTION_FILE)
    recorded, counted = record.load()
    assert recorded is not None and counted >= 1  # the node kept its own record of training
    out = forget(cluster, 0, "--method", "forsaken", "--request-id", "owner-req-1")
    assert out.returncode == 0, out.stdout + out.stderr
    info = receipt_of(out)
    assert info["state"] == "completed"
    receipt = info["receipt"]
    assert receipt["method"] == "forsaken" and receipt["samples"] == "all"
    assert receipt["unlearning_rounds"] >= 1 and receipt["recovery_rounds"] == 1
    assert receipt["model_sha256_before"] != receipt["model_sha256_after"]
    for key in ("mia_auc", "forget_acc", "held_out_acc"):
        assert 0.0 <= receipt["evidence"][key] <= 1.0
    # Once reversed, the record is cleared (its round counter stays, so no old round is
    # counted again); the server never held it: no file it keeps carries the record's bytes.
    deadline = time.monotonic() + 30
    while record.load()[0] is not None and time.monotonic() < deadline:
        time.sleep(0.5)
    cleared, last = record.load()
    assert cleared is None and last >= counted
    needles = [_window(recorded).tobytes(), _window(recorded).astype(np.float32).tobytes()]
    for path in (cluster.root / "server").rglob("*"):
        if path.is_file():
            held = path.read_bytes()
            assert not any(n in held for n in needles), path
    # The same request id again is the same request, not a second one.
    again = forget(cluster, 0, "--request-id", "owner-req-1", wait=False)
    assert again.returncode == 0
    requests = cluster.status()["forget_requests"]
    assert len(requests) == 1 and requests[0]["state"] == "completed"
    # The node trains on nothing from now on, also after a restart.
    assert owner_status(cluster, 0).num_samples == 0
    cluster.clients[0].terminate()
    cluster.clients[0].wait(timeout=30)
    cluster.start_client(0, 3)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status = owner_status(cluster, 0)
            break
        except grpc.RpcError:
            time.sleep(0.5)
    assert (status.num_samples == 0 and status.excluded_samples == 0) or status.num_samples == 0
    rounds = cluster.status()["rounds"]
    last = [r for r in rounds if r["status"] == "completed"][-1]
    assert status.node_id not in last["participants"]


def test_forgetting_someone_elses_data_is_denied(cluster: Cluster) -> None:
    victim = cluster.status()["clients"][0]["node_id"]
    conn = FleetConnection(cluster.address, NodeIdentity.generate())
    conn.join(10, "digits", (1, 8, 8), 10)
    with pytest.raises(errors.PermissionDenied, match="may not ask to forget"):
        conn.forget_me("evil-1", (), ForgetMethod.FORSAKEN, node_id=victim)
    assert cluster.status()["forget_requests"] == []
    conn.close()


def test_owner_api_rejects_ids_it_does_not_hold(cluster: Cluster) -> None:
    ids = cluster.root / "ids.json"
    ids.write_text("[999999]")
    out = forget(cluster, 1, "--samples", str(ids), wait=False)
    assert out.returncode == 1
    said = " ".join(out.stdout.split())  # rich wraps long lines
    assert "INVALID_ARGUMENT" in said and "not in this node's training data" in said


def test_two_clients_forget_one_after_the_other(tmp_path: Path) -> None:
    # Four nodes, so two remain to hold a quorum once two have forgotten everything.
    c = Cluster(tmp_path, **SERVER)
    try:
        c.start_server()
        for i in range(4):
            c.start_client(i, 4)
        c.wait_for(lambda s: s["completed_rounds"] >= 1, 90, "a round")
        first = subprocess.Popen(
            forsaken_command(
                "forget",
                "--client",
                str(c.root / "client-1"),
                "--wait",
                "--json",
                "--timeout",
                "150",
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        second = forget(c, 2, "--method", "finetune")
        out1, _ = first.communicate(timeout=200)
        assert second.returncode == 0 and first.returncode == 0, out1
        requests = c.status()["forget_requests"]
        assert [r["state"] for r in requests] == ["completed", "completed"]
        # Served one after the other: the later one started after the earlier one finished.
        ordered = sorted(requests, key=lambda r: r["created_unix_ms"])
        assert {r["method"] for r in ordered} == {"forsaken", "finetune"}
    finally:
        c.stop()


def test_server_killed_during_unlearning_resumes(tmp_path: Path) -> None:
    c = Cluster(tmp_path, **SERVER)
    try:
        c.start_server(env={"FORSAKEN_FAILPOINTS": "server-after-forget-unlearning"})
        for i in range(3):
            c.start_client(i, 3)
        c.wait_for(lambda s: s["completed_rounds"] >= 1, 90, "a round")
        owner = subprocess.Popen(
            forsaken_command(
                "forget",
                "--client",
                str(c.root / "client-0"),
                "--wait",
                "--json",
                "--timeout",
                "150",
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert c.server is not None
        assert c.server.wait(timeout=60) == -9  # the failpoint SIGKILLed it mid-request
        c.start_server()  # no failpoint this time: it resumes from the ledger
        out, _ = owner.communicate(timeout=200)
        assert owner.returncode == 0, out
        (request,) = c.status()["forget_requests"]
        assert request["state"] == "completed"
        assert request["receipt"]["evidence"]["mia_auc"] >= 0
    finally:
        c.stop()


def test_client_dropping_out_mid_unlearning_fails_with_a_reason(tmp_path: Path) -> None:
    c = Cluster(tmp_path, **{**SERVER, "forget-node-timeout-s": 4, "liveness-s": 3})
    try:
        c.start_server()
        c.start_client(0, 3, env={"FORSAKEN_FAILPOINTS": "client-after-forget-step"})
        for i in (1, 2):
            c.start_client(i, 3)
        c.wait_for(lambda s: s["completed_rounds"] >= 1, 90, "a round")
        forget(c, 0, wait=False)
        assert c.clients[0].wait(timeout=60) == -9
        status = c.wait_for(
            lambda s: s["forget_requests"] and s["forget_requests"][0]["state"] == "failed",
            60,
            "the request to fail",
        )
        request = status["forget_requests"][0]
        assert "silent" in request["reason"]
        assert request["receipt"] is None
    finally:
        c.stop()


def test_an_owner_waiting_at_the_federations_end_still_sees_its_receipt(tmp_path: Path) -> None:
    """The request ends as the federation does: the client stays up long enough for its
    owner's `forget --wait` to read the outcome instead of losing the daemon mid-wait."""
    c = Cluster(tmp_path, **{**SERVER, "rounds": 2, "min-clients": 4, "recovery-rounds": 1})
    try:
        c.start_server()
        for i in range(3):
            c.start_client(i, 4)
        c.wait_for(lambda s: len(s["clients"]) == 3, 90, "three clients (no round yet)")
        waiting = subprocess.Popen(
            forsaken_command(
                "forget",
                "--client",
                str(c.root / "client-0"),
                "--json",
                "--wait",
                "--timeout",
                "120",
                "--method",
                "finetune",
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        c.wait_for(lambda s: len(s["forget_requests"]) == 1, 60, "the request on record")
        c.start_client(3, 4)  # now the two rounds run, and the request with them
        out, _ = waiting.communicate(timeout=180)
        assert waiting.returncode == 0, out
        assert json.loads(out[out.index("{") :])["state"] == "completed"
        assert c.clients[0].wait(timeout=60) == 0  # and then it did exit, cleanly
    finally:
        c.stop()
