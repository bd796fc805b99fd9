"""Integration: real server and client processes talking gRPC on loopback."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster

pytestmark = pytest.mark.slow


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator:
    made: list[Cluster] = []

    def factory(name: str = "c", **opts: object) -> Cluster:
        cluster = Cluster(tmp_path / name, **opts)  # type: ignore[arg-type]
        made.append(cluster)
        return cluster

    yield factory
    for cluster in made:
        cluster.stop()


def test_three_clients_complete_several_rounds(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(rounds=4, **{"min-clients": 3, "min-completed": 3})
    c.start_server()
    for i in range(3):
        c.start_client(i, 3)
    status = c.wait_for(lambda s: s["phase"] == "finished", 120, "4 rounds")
    rounds = c.completed(status)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(len(r["participants"]) == 3 for r in rounds)
    assert rounds[-1]["test_acc"] > rounds[0]["test_acc"]
    assert rounds[-1]["test_acc"] > 0.85
    # The clients exit by themselves once the federation is finished.
    for proc in c.clients.values():
        assert proc.wait(timeout=30) == 0
    # SIGTERM stops the server cleanly, and the ledger is intact afterwards.
    assert c.server is not None
    c.server.send_signal(signal.SIGTERM)
    assert c.server.wait(timeout=30) == 0
    db = sqlite3.connect(c.root / "server" / "ledger.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_client_sigkilled_mid_round_round_completes_with_others(make_cluster) -> None:  # type: ignore[no-untyped-def]
    # Many local epochs so training takes long enough to kill a client inside the round.
    c = make_cluster(
        aggregation="plaintext",
        rounds=2,
        **{"min-clients": 3, "min-completed": 2, "round-timeout-s": 12, "local-epochs": 40},
    )
    c.start_server()
    for i in range(3):
        c.start_client(i, 3)
    c.wait_for(lambda s: s["phase"] == "training" and s["current_round"] == 1, 60, "round 1 start")
    c.clients[2].send_signal(signal.SIGKILL)
    status = c.wait_for(lambda s: s["completed_rounds"] >= 1, 60, "round 1 completion")
    first = c.completed(status)[0]
    assert len(first["participants"]) == 2
    assert len(first["selected"]) == 3


def test_server_sigkilled_resumes_from_checkpoint(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(rounds=5, **{"min-clients": 2, "min-completed": 2, "local-epochs": 3})
    c.start_server()
    for i in range(2):
        c.start_client(i, 2)
    before = c.wait_for(lambda s: s["completed_rounds"] >= 2, 90, "2 rounds")
    c.kill_server()
    done_before = {r["round"]: r for r in c.completed(before)}
    c.start_server()
    after = c.wait_for(lambda s: s["phase"] == "finished", 120, "all rounds after restart")
    rounds = c.completed(after)
    # Every round exactly once, and none that had completed was lost or redone.
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    for n, r in done_before.items():
        assert rounds[n - 1]["model_sha256"] == r["model_sha256"]
    # Clients reconnected to the new server process and trained on.
    assert all(len(r["participants"]) == 2 for r in rounds)


def test_same_seeds_give_the_same_model(make_cluster) -> None:  # type: ignore[no-untyped-def]
    shas = []
    for run in ("a", "b"):
        # Secure aggregation (the default) included: masks cancel exactly and the rounding
        # noise derives from the node's seed.
        c = make_cluster(run, rounds=2, seed=7, **{"min-clients": 2, "min-completed": 2})
        c.start_server()
        for i in range(2):
            c.start_client(i, 2, seed=7)
        status = c.wait_for(lambda s: s["phase"] == "finished", 90, "2 rounds")
        shas.append([r["model_sha256"] for r in c.completed(status)])
        c.stop()
    assert shas[0] == shas[1]


def test_active_secure_aggregation_with_signed_keys(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c = make_cluster(rounds=1, **{"min-clients": 3, "min-completed": 2})
    c.start_server(env={"FORSAKEN_SERVER_SECAGG_ACTIVE": "true"})
    for i in range(3):
        c.start_client(i, 3)
    status = c.wait_for(lambda s: s["phase"] == "finished", 90, "one active round")
    (round1,) = c.completed(status)
    assert len(round1["participants"]) == 3
    log = (c.root / "logs" / "server.log").read_text()
    assert "masked_input closed -> consistency_check" in log
