"""One untrusted member against a real server and real honest clients (separate processes).

Each hostile node is written from the protos and the pure protocol states, as an attacker
would: one forges the sample-count slot of its masked input round after round; one opens
hundreds of stalled streams and long-polls; one files ForgetMe and goes silent. Honest rounds
must keep completing, the model must stay where an honest federation takes it, and the ledger
must say what happened.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from forsaken.cli.status import admin_channel
from forsaken.client.transport import SESSION_KEY, FleetConnection
from forsaken.common import errors, wire
from forsaken.common.chunking import header_for
from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.identity import NodeIdentity
from forsaken.common.round_tasks import SecAggTask
from forsaken.common.secagg.client_states import ClientDone
from forsaken.common.secagg.messages import MaskedInput, ShareKeys
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.tensors import TensorSpec
from forsaken.v1 import admin_pb2, admin_pb2_grpc, fleet_pb2, fleet_pb2_grpc
from tests.cluster import Cluster
from tests.hand_node import DIGITS, SAMPLES, HandNode

pytestmark = pytest.mark.slow

ROUNDS = 30
FEDERATION = {
    "rounds": ROUNDS,
    "seed": 3,
    "min-clients": 3,
    "min-completed": 3,
    "liveness-s": 60,
    "round-timeout-s": 30,
    "stage-timeout-s": 10,
    "local-epochs": 1,
}


class CountForger(threading.Thread):
    """Plays every secure round it is given, with its count slot forged the way that once made
    the server divide the sum by 1: (1 - (W - w)) mod 2^32, W the round's total weight."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.node = HandNode(address)
        self.refusals: list[tuple[grpc.StatusCode, str]] = []
        self.denied = ""
        self.stop = threading.Event()
        self.handled: set[tuple[str, str]] = set()

    def run(self) -> None:
        node = self.node
        while not self.stop.is_set():
            try:
                task = node.conn.pull(SAMPLES)
            except errors.PermissionDenied as exc:
                self.denied = str(exc)
                return
            except errors.ForsakenError:
                time.sleep(0.2)
                continue
            if not isinstance(task, SecAggTask):
                continue
            seen = (task.task_id, type(task.message).__name__)
            if seen in self.handled:
                time.sleep(0.1)  # refused: wait for the round to move on without it
                continue
            self.handled.add(seen)
            try:
                if isinstance(task.message, SetupInfo):
                    setup = task.message
                    forged = 1 - int(setup.weight_scale - setup.weight)
                    node.answer(task, node.begin(task, count_slot=forged))
                elif node.state is not None and not isinstance(node.state, ClientDone):
                    message = node.step(task)
                    if isinstance(message, MaskedInput):
                        try:
                            node.push(message.vector, task)
                        except grpc.RpcError as exc:
                            self.refusals.append((exc.code(), exc.details() or ""))
                    else:
                        node.answer(task, message)
            except (grpc.RpcError, AssertionError, errors.ForsakenError):
                continue  # the round moved on without it


class GarbageDealer(CountForger):
    """Plays honestly except that every share it deals is random bytes: no neighbour can open
    them, so the round cannot unmask its input; the server must name it and go on."""

    def run(self) -> None:
        node = self.node
        while not self.stop.is_set():
            try:
                task = node.conn.pull(SAMPLES)
            except errors.PermissionDenied as exc:
                self.denied = str(exc)
                return
            except errors.ForsakenError:
                time.sleep(0.2)
                continue
            if not isinstance(task, SecAggTask):
                continue
            seen = (task.task_id, type(task.message).__name__)
            if seen in self.handled:
                time.sleep(0.1)
                continue
            self.handled.add(seen)
            try:
                if isinstance(task.message, SetupInfo):
                    node.answer(task, node.begin(task))
                elif node.state is not None and not isinstance(node.state, ClientDone):
                    message = node.step(task)
                    if isinstance(message, ShareKeys):
                        message = ShareKeys(
                            tuple(
                                replace(s, ciphertext=secrets.token_bytes(len(s.ciphertext)))
                                for s in message.shares
                            ),
                            message.seed_commitment,
                        )
                    node.answer(task, message)
            except (grpc.RpcError, AssertionError, errors.ForsakenError):
                continue


def test_a_member_dealing_garbage_shares_is_named_and_every_round_completes(
    tmp_path: Path,
) -> None:
    rounds = 20
    c = Cluster(tmp_path, **{**FEDERATION, "rounds": rounds, "stage-timeout-s": 5})
    try:
        c.start_server()
        for i in range(3):
            c.start_client(i, 4, seed=3)
        c.wait_for(lambda s: len(s["clients"]) == 3, 120, "the honest clients to join")
        dealer = GarbageDealer(c.address)
        dealer.start()
        status = c.wait_for(lambda s: s["completed_rounds"] >= rounds, 600, f"{rounds} rounds")
        dealer.stop.set()
    finally:
        c.stop()
    culprit = dealer.node.node_id
    completed = c.completed(status)
    assert [r["round"] for r in completed] == list(range(1, rounds + 1))
    assert all(culprit not in r["participants"] for r in completed)
    named = [r for r in status["rounds"] if r["status"] == "aborted" and culprit in r["reason"]]
    # Each of its rounds aborted once, naming it, and the retry went on without it; after
    # three faults it was quarantined and no round waited on it again.
    assert len(named) == 3, [r["reason"] for r in status["rounds"]]
    for r in named:
        assert "could not open the shares of a surviving client" in r["reason"]
        assert f"node {culprit} by 3" in r["reason"]
    retried = {r["round"] for r in named}
    assert all(r["round"] in retried or r["attempt"] == 0 for r in completed)
    assert "quarantined" in dealer.denied
    (record,) = [cl for cl in status["clients"] if cl["node_id"] == culprit]
    assert record["quarantine"].startswith("3 faults")


def final_accuracy(c: Cluster) -> tuple[float, dict[str, Any]]:
    status = c.wait_for(
        lambda s: s["completed_rounds"] >= ROUNDS, 600, f"{ROUNDS} completed rounds"
    )
    return float(status["last_test_acc"]), c.status()


def honest_run(root: Path) -> float:
    c = Cluster(root, **FEDERATION)
    try:
        c.start_server()
        for i in range(3):
            c.start_client(i, 4, seed=3)
        return final_accuracy(c)[0]
    finally:
        c.stop()


def test_a_member_forging_its_count_slot_is_refused_named_and_quarantined(
    tmp_path: Path,
) -> None:
    c = Cluster(tmp_path / "attacked", **FEDERATION)
    try:
        c.start_server()
        forger = CountForger(c.address)
        forger.start()
        for i in range(3):  # shards 0-2 of 4: the forger is the fourth member, with no data
            c.start_client(i, 4, seed=3)
        attacked_acc, status = final_accuracy(c)
        forger.stop.set()
    finally:
        c.stop()
    victim = forger.node.node_id

    # Every masked input it sent was refused, by name; then it was shut out.
    assert forger.refusals, "the forger never reached the masked-input stage"
    for code, details in forger.refusals:
        assert code is grpc.StatusCode.INVALID_ARGUMENT, details
        assert f"node {victim}'s masked input carries sample count" in details
    assert len(forger.refusals) == 3  # --quarantine-after 3
    assert "quarantined" in forger.denied and "forsaken admin release" in forger.denied

    # No round ever took its input, every completed round stayed within the norm bound, and
    # the ledger says what happened.
    completed = c.completed(status)
    assert len(completed) == ROUNDS
    assert all(victim not in r["participants"] for r in completed)
    assert all(r["metrics"]["update_norm"] <= 30.0 for r in completed)
    noted = [r for r in completed if f"left out node {victim}" in r["reason"]]
    assert len(noted) == 3, [r["reason"] for r in completed]
    (record,) = [cl for cl in status["clients"] if cl["node_id"] == victim]
    assert record["quarantine"].startswith("3 faults")
    assert "carries sample count" in record["quarantine"]

    # The model ends where the same federation without the forger ends.
    assert abs(attacked_acc - honest_run(tmp_path / "honest")) <= 0.01


# ---- stalled streams and long-polls ---------------------------------------------------------


def outcome(future: grpc.Future) -> str:
    error = future.exception(timeout=60)
    return "OK" if error is None else error.code().name  # type: ignore[attr-defined]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def status_latency(address: str) -> float:
    with admin_channel(address) as channel:
        started = time.monotonic()
        admin_pb2_grpc.AdminStub(channel).GetStatus(admin_pb2.StatusRequest(), timeout=10)
        return time.monotonic() - started


@pytest.fixture
def busy_cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(
        tmp_path,
        rounds=0,
        **{
            "min-clients": 3,
            "min-completed": 3,
            "liveness-s": 60,
            "round-timeout-s": 6,
            "stage-timeout-s": 3,
            "stream-idle-timeout-s": 3,
            "local-epochs": 1,
        },
    )
    c.start_server()
    for i in range(3):
        c.start_client(i, 3)
    c.wait_for(lambda s: s["completed_rounds"] >= 3, 120, "three rounds")
    yield c
    c.stop()


def test_stalled_streams_and_long_polls_from_one_node_block_nobody(busy_cluster: Cluster) -> None:
    c = busy_cluster
    assert c.server is not None
    idle_rss = rss_bytes(c.server.pid)
    # It declares no data, so it is never sampled and every long-poll of it waits its full time.
    conn = FleetConnection(c.address, NodeIdentity.generate())
    conn.join(0, *DIGITS)
    assert conn.token is not None
    md = ((SESSION_KEY, conn.token),)
    stub = fleet_pb2_grpc.FleetStub(conn.channel)
    release = threading.Event()
    vector_len = 1 << 16  # the header's claimed size; no byte of it is ever sent
    data = bytes(4 * vector_len)

    def stalled(with_header: bool) -> Iterator[fleet_pb2.UploadChunk]:
        if with_header:  # a header as large as a real upload, then nothing
            header = fleet_pb2.UploadHeader(
                request_id=uuid.uuid4().hex,
                task_id="r1.a0.x",
                round=1,
                payload=wire.payload_header_to_proto(
                    header_for((TensorSpec("masked_input", (vector_len,), "uint32"),), data)
                ),
            )
            yield fleet_pb2.UploadChunk(header=header)
        release.wait(120)

    before = c.status()["completed_rounds"]
    uploads = [stub.PushUpdate.future(stalled(i % 2 == 0), metadata=md) for i in range(200)]
    polls = [
        stub.PullTask.future(
            fleet_pb2.PullTaskRequest(num_samples=SAMPLES), metadata=md, timeout=60
        )
        for _ in range(300)
    ]
    try:
        latencies, peak = [], 0
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            latencies.append(status_latency(c.address))
            peak = max(peak, rss_bytes(c.server.pid))
            time.sleep(0.5)
        during = c.status()["completed_rounds"]
    finally:
        release.set()
    upload_codes = Counter(outcome(f) for f in uploads)
    poll_codes = Counter(outcome(f) for f in polls)

    assert max(latencies) < 1.0, latencies
    assert during - before >= 2, "honest rounds stopped completing"
    assert peak <= 1.5 * idle_rss, (peak, idle_rss)
    # The quota refused nearly all of it at once. Of what it let in, a stream that sent no
    # header was cut off by the idle deadline, one whose header named no open task was refused
    # before a byte was buffered, and long-polls ended as long-polls do.
    assert upload_codes["RESOURCE_EXHAUSTED"] >= 190, upload_codes
    assert set(upload_codes) <= {"RESOURCE_EXHAUSTED", "CANCELLED", "FAILED_PRECONDITION"}
    # How many polls are held at once depends on the load and on whether the server has a task
    # for the node at once (HTTP/2 admits 100 streams per connection); beyond the quota of four
    # held ones they are refused (the quota itself: tests/test_limits.py). Either way, no poll
    # fails otherwise and, above, nobody else waited.
    assert set(poll_codes) <= {"RESOURCE_EXHAUSTED", "OK"}, poll_codes
    # And the server still serves honest rounds afterwards.
    c.wait_for(lambda s: s["completed_rounds"] >= during + 1, 60, "a round after the attack")


# ---- a silent forgetting node ---------------------------------------------------------------


def test_a_silent_forgetting_node_fails_its_request_and_the_next_one_completes(
    tmp_path: Path,
) -> None:
    c = Cluster(
        tmp_path,
        rounds=0,
        **{
            "min-clients": 3,
            "min-completed": 2,
            "liveness-s": 5,
            "round-timeout-s": 8,
            "recovery-rounds": 1,
            "forget-node-timeout-s": 8,
        },
    )
    try:
        c.start_server()
        for i in range(3):
            c.start_client(i, 3)
        c.wait_for(lambda s: s["completed_rounds"] >= 2, 90, "two rounds")
        silent = FleetConnection(c.address, NodeIdentity.generate())
        silent_id = silent.join(SAMPLES, *DIGITS)
        silent_forget, _ = silent.forget_me("silent-1", (), ForgetMethod.FORSAKEN)
        silent.channel.close()  # and never calls again
        started = c.status()["completed_rounds"]
        status = c.wait_for(
            lambda s: any(
                f["forget_id"] == silent_forget and f["state"] == "failed"
                for f in s["forget_requests"]
            ),
            90,
            "the silent node's request to fail",
        )
        (failed,) = [f for f in status["forget_requests"] if f["forget_id"] == silent_forget]
        assert f"node {silent_id} silent for" in failed["reason"]
        c.wait_for(lambda s: s["completed_rounds"] > started, 60, "rounds to go on without it")

        # The next request in the queue now runs to its receipt.
        out = forget_with_owner(c, 0)
        assert out["state"] == "completed", out
    finally:
        c.stop()


def forget_with_owner(c: Cluster, index: int) -> dict[str, Any]:
    import json
    import subprocess

    from forsaken.launch import forsaken_command

    args = ["forget", "--client", str(c.root / f"client-{index}"), "--json", "--wait"]
    done = subprocess.run(
        forsaken_command(*args, "--timeout", "180"), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout[done.stdout.index("{") :])


# ---- replayed Joins and enrollment ----------------------------------------------------------


def test_a_replayed_join_is_refused_and_never_touches_the_victims_session(tmp_path: Path) -> None:
    node_ids = [NodeIdentity.generate() for _ in range(2)]
    allow = tmp_path / "allow.txt"
    allow.write_text(f"# the one enrolled node\n{node_ids[0].node_id}\n")
    c = Cluster(tmp_path, rounds=0, **{"allow-nodes": allow})
    try:
        c.start_server()
        victim = FleetConnection(c.address, node_ids[0])
        stub = fleet_pb2_grpc.FleetStub(victim.channel)
        challenge = stub.JoinChallenge(fleet_pb2.JoinChallengeRequest(), timeout=10).challenge
        captured = wire.join_request(node_ids[0], challenge, SAMPLES, *DIGITS)
        token = stub.Join(captured, timeout=10).session_token
        with pytest.raises(grpc.RpcError) as replay:
            stub.Join(captured, timeout=10)  # byte for byte what the victim sent
        assert replay.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "already used" in (replay.value.details() or "")
        # The victim's session is untouched: its token still works.
        task = stub.PullTask(
            fleet_pb2.PullTaskRequest(num_samples=SAMPLES),
            metadata=((SESSION_KEY, token),),
            timeout=30,
        )
        assert task.kind in (fleet_pb2.TASK_KIND_WAIT, fleet_pb2.TASK_KIND_SECAGG)
        # A node that is not on the allow-list cannot join at all.
        stranger = FleetConnection(c.address, node_ids[1])
        with pytest.raises(errors.PermissionDenied, match="is not enrolled"):
            stranger.join(SAMPLES, *DIGITS)
    finally:
        c.stop()
