"""The transport-free coordinator, driven directly with a fake clock: no network, no torch."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from forsaken.common.errors import (
    DuplicateRequest,
    InvalidPayload,
    PermissionDenied,
    StaleRequest,
    UnknownEntity,
)
from forsaken.common.round_tasks import StopTask, TrainTask
from forsaken.common.tensors import TensorSpec, from_bytes, to_bytes
from forsaken.common.types import ModelSpec, TrainSettings
from forsaken.server.checkpoints import MemoryCheckpointStore
from forsaken.server.coordinator import Coordinator
from forsaken.server.ledger import ClientRecord, MemoryLedger
from forsaken.server.policy import RoundPolicy
from forsaken.server.rounds import (
    Finished,
    Phase,
    RoundAborted,
    RoundCompleted,
    RoundStarted,
    Submission,
)
from tests.reports import report

SPECS = (TensorSpec("w", (2, 3)), TensorSpec("b", (3,)))
D = 9


def make(
    policy: RoundPolicy | None = None,
    ledger: MemoryLedger | None = None,
    store: MemoryCheckpointStore | None = None,
) -> Coordinator:
    return Coordinator(
        policy=policy or RoundPolicy(rounds=3, min_clients=2, min_completed=2, round_timeout_s=10),
        model_spec=ModelSpec("test", (3,), 3),
        tensors=SPECS,
        initial_model=lambda: np.arange(D, dtype=np.float32),
        ledger=ledger or MemoryLedger(),
        checkpoints=store or MemoryCheckpointStore(),
        train=TrainSettings(),
        now_ms=0,
    )


def submission(
    coord: Coordinator, node: str, delta: np.ndarray, n: int, rid: str = "r1", **overrides: object
) -> Submission:
    task = coord.poll(node, n, 0)
    assert isinstance(task, TrainTask)
    fields = {
        "request_id": rid,
        "task_id": task.task_id,
        "round": task.round,
        "base_model_sha256": task.model_sha256,
        "num_samples": n,
        "metrics": {"train_loss": 1.0},
        "tensors": SPECS,
        "payload": to_bytes(delta.astype(np.float32)),
    }
    fields.update(overrides)
    return Submission(**fields)  # type: ignore[arg-type]


def joined(coord: Coordinator, *nodes: str, now: int = 0) -> None:
    for node in nodes:
        coord.registry.join(node, b"k" * 32, 10, now)


def test_initial_model_is_checkpointed_as_round_zero() -> None:
    ledger, store = MemoryLedger(), MemoryCheckpointStore()
    coord = make(ledger=ledger, store=store)
    last = ledger.last_completed()
    assert last is not None and last.round == 0
    assert from_bytes(store.get(last.model_sha256), SPECS).tolist() == list(range(D))
    assert coord.status(0).phase is Phase.WAITING


def test_waits_for_min_clients_then_starts_and_aggregates_weighted() -> None:
    coord = make()
    joined(coord, "a")
    coord.tick(1)
    assert coord.poll("a", 10, 1) is None  # one live node is not enough
    joined(coord, "b")
    (started,) = coord.tick(2)
    assert isinstance(started, RoundStarted) and started.selected == ("a", "b")
    da, db = np.ones(D, np.float32), np.full(D, 4.0, np.float32)
    assert coord.submit("a", submission(coord, "a", da, 10), 3).accepted
    assert coord.tick(4) == []  # b has not delivered and the deadline is far
    coord.submit("b", submission(coord, "b", db, 30), 5)
    (event,) = coord.tick(6)
    assert isinstance(event, RoundCompleted)
    assert event.record.participants == ("a", "b")
    expected = np.arange(D) + (1 * 10 + 4 * 30) / 40
    np.testing.assert_allclose(coord.model.vector, expected, rtol=1e-6)
    assert coord.completed_rounds == 1


def test_round_completes_with_survivors_after_deadline() -> None:
    coord = make(RoundPolicy(rounds=2, min_clients=3, min_completed=2, round_timeout_s=1))
    joined(coord, "a", "b", "c")
    coord.tick(0)
    coord.submit("a", submission(coord, "a", np.ones(D), 5), 10)
    coord.submit("b", submission(coord, "b", np.ones(D), 5), 10)
    assert coord.tick(500) == []
    (event,) = coord.tick(1001)
    assert isinstance(event, RoundCompleted)
    assert event.record.selected == ("a", "b", "c")
    assert event.record.participants == ("a", "b")


def test_round_with_too_few_updates_is_aborted_and_retried() -> None:
    ledger = MemoryLedger()
    coord = make(RoundPolicy(rounds=2, min_clients=2, min_completed=2, round_timeout_s=1), ledger)
    joined(coord, "a", "b")
    coord.tick(0)
    coord.submit("a", submission(coord, "a", np.ones(D), 5), 10)
    before = coord.model.vector.copy()
    (event,) = coord.tick(1001)
    assert isinstance(event, RoundAborted)
    assert "1 of 2 updates" in event.record.reason
    np.testing.assert_array_equal(coord.model.vector, before)
    assert coord.status(1001).last_abort_reason == event.record.reason
    # The retry is the same round number with the next attempt.
    joined(coord, "a", "b", now=1002)
    coord.tick(1002)
    task = coord.poll("a", 5, 1002)
    assert task is not None and task.round == 1 and ".a1." in task.task_id


def test_finishes_after_target_rounds_and_sends_stop() -> None:
    coord = make(RoundPolicy(rounds=1, min_clients=1, min_completed=1, round_timeout_s=5))
    joined(coord, "a")
    coord.tick(0)
    coord.submit("a", submission(coord, "a", np.zeros(D), 1), 1)
    events = coord.tick(2)
    assert isinstance(events[-1], Finished)
    task = coord.poll("a", 1, 3)
    assert isinstance(task, StopTask)


def test_restart_resumes_from_last_checkpoint() -> None:
    ledger, store = MemoryLedger(), MemoryCheckpointStore()
    coord = make(RoundPolicy(rounds=5, min_clients=1, min_completed=1), ledger, store)
    joined(coord, "a")
    coord.tick(0)
    coord.submit("a", submission(coord, "a", np.ones(D), 1), 1)
    coord.tick(2)
    model = coord.model.vector.copy()
    again = make(RoundPolicy(rounds=5, min_clients=1, min_completed=1), ledger, store)
    assert again.completed_rounds == 1
    np.testing.assert_array_equal(again.model.vector, model)
    assert again.model.sha256 == hashlib.sha256(to_bytes(model)).hexdigest()


class TestBadUpdates:
    """Each bad input gets a specific error and leaves the global model untouched."""

    @pytest.fixture
    def coord(self) -> Coordinator:
        c = make()
        joined(c, "a", "b")
        c.tick(0)
        return c

    def check(
        self, coord: Coordinator, exc: type[Exception], match: str, **overrides: object
    ) -> None:
        before = coord.model.vector.copy()
        sub = submission(coord, "a", np.ones(D), 5, **overrides)
        with pytest.raises(exc, match=match):
            coord.submit("a", sub, 1)
        np.testing.assert_array_equal(coord.model.vector, before)
        # the node can still deliver a good update afterwards
        assert coord.submit("a", submission(coord, "a", np.ones(D), 5, rid="good"), 2).accepted

    def test_wrong_shape(self, coord: Coordinator) -> None:
        self.check(
            coord,
            InvalidPayload,
            "names, shapes or dtype",
            tensors=(TensorSpec("w", (3, 2)), TensorSpec("b", (3,))),
        )

    def test_wrong_dtype(self, coord: Coordinator) -> None:
        self.check(
            coord,
            InvalidPayload,
            "names, shapes or dtype",
            tensors=(TensorSpec("w", (2, 3), "float64"), TensorSpec("b", (3,), "float64")),
        )

    def test_nan(self, coord: Coordinator) -> None:
        bad = np.ones(D, np.float32)
        bad[3] = np.nan
        self.check(coord, InvalidPayload, "NaN or Inf", payload=to_bytes(bad))

    def test_inf(self, coord: Coordinator) -> None:
        bad = np.ones(D, np.float32)
        bad[0] = np.inf
        self.check(coord, InvalidPayload, "NaN or Inf", payload=to_bytes(bad))

    def test_unknown_round(self, coord: Coordinator) -> None:
        self.check(coord, UnknownEntity, "round 7 does not exist", round=7)

    def test_stale_round(self, coord: Coordinator) -> None:
        self.check(coord, UnknownEntity, "round 0 does not exist", round=0)

    def test_wrong_task(self, coord: Coordinator) -> None:
        self.check(coord, StaleRequest, "not this node's open task", task_id="r1.a0.zzz")

    def test_wrong_base_model(self, coord: Coordinator) -> None:
        self.check(coord, StaleRequest, "different model", base_model_sha256="0" * 64)

    def test_negative_samples(self, coord: Coordinator) -> None:
        # Zero is legal (a forget step may contribute nothing); negative never is.
        self.check(coord, InvalidPayload, "num_samples must be >= 0", num_samples=-1)

    def test_huge_norm(self, coord: Coordinator) -> None:
        self.check(coord, InvalidPayload, "norm", payload=to_bytes(np.full(D, 1e6, np.float32)))

    def test_unselected_node(self, coord: Coordinator) -> None:
        sub = submission(coord, "a", np.ones(D), 5)
        with pytest.raises(PermissionDenied, match="not selected"):
            coord.submit("mallory", sub, 1)

    def test_duplicate_push_is_idempotent_and_second_update_refused(
        self, coord: Coordinator
    ) -> None:
        sub = submission(coord, "a", np.ones(D), 5)
        assert coord.submit("a", sub, 1).duplicate is False
        again = coord.submit("a", sub, 2)
        assert again.accepted and again.duplicate
        other = Submission(**{**{f: getattr(sub, f) for f in sub.__slots__}, "request_id": "r2"})
        with pytest.raises(DuplicateRequest, match="already pushed"):
            coord.submit("a", other, 3)


def test_revoked_node_cannot_join() -> None:
    ledger = MemoryLedger()
    ledger.upsert_client(ClientRecord("evil", b"k" * 32, 1, 0, 0, revoked=True))
    coord = make(ledger=ledger)
    with pytest.raises(PermissionDenied, match="revoked"):
        coord.registry.join("evil", b"k" * 32, 1, 0)


def test_sampling_is_reproducible_and_respects_fraction() -> None:
    policy = RoundPolicy(min_clients=2, fraction=0.5, min_completed=2, seed=3)
    nodes = [f"n{i}" for i in range(10)]
    first = policy.sample(nodes, 1, 0)
    assert len(first) == 5
    assert policy.sample(list(reversed(nodes)), 1, 0) == first
    assert policy.sample(nodes, 2, 0) != first or policy.sample(nodes, 3, 0) != first


def test_operator_neighbour_count_is_made_valid_for_the_sparse_graph() -> None:
    from forsaken.server.secure_round import SecureSettings, round_parameters

    params = round_parameters(10, SecureSettings(neighbors=5))
    assert params.neighbors == 6 and params.threshold > params.neighbors // 2
    assert round_parameters(4, SecureSettings(neighbors=7)).neighbors == 3  # complete graph


def test_sampling_always_includes_required_nodes_and_keeps_the_size() -> None:
    policy = RoundPolicy(rounds=0, min_clients=2, fraction=0.3, min_completed=2)
    pool = [f"n{i}" for i in range(10)]
    plain = policy.sample(pool, 4, 0)
    assert len(plain) == 3
    missing = next(n for n in pool if n not in plain)
    forced = policy.sample(pool, 4, 0, required=[missing])
    assert missing in forced and len(forced) == 3
    assert policy.sample(pool, 4, 0, required=["not-live"]) == plain


def test_not_replaces_the_model_with_its_negated_first_layers() -> None:
    store = MemoryCheckpointStore()
    coord = make(
        RoundPolicy(rounds=1, min_clients=2, min_completed=2, round_timeout_s=10), store=store
    )
    joined(coord, "a", "b", "c")
    coord.tick(1)
    for node in ("a", "b", "c"):
        coord.submit(node, submission(coord, node, np.ones(D, np.float32), 10, rid=node), 2)
    coord.tick(3)
    before = coord.model.vector.copy()
    coord.forgets.request("a", "a", "req", (), "not", 4)
    (started,) = coord.tick(5)
    assert isinstance(started, RoundStarted) and "a" not in started.selected
    # Both tensors of this two-layer toy model count as "the first two layers".
    np.testing.assert_array_equal(coord.model.vector, -before)
    rec = coord.forgets.active()
    assert rec is not None
    sha = json.loads(rec.progress_json)["rollback_model"]
    assert from_bytes(store.get(sha), SPECS).tolist() == (-before).tolist()


def _one_round(coord: Coordinator, now: int, rid: str) -> None:
    """Start a round, have every selected node upload ones, close it."""
    (started,) = [e for e in coord.tick(now) if isinstance(e, RoundStarted)]
    for node in started.selected:
        sub = submission(coord, node, np.ones(D, np.float32), 10, rid=f"{rid}.{node}")
        coord.submit(node, sub, now + 1)
    coord.tick(now + 2)


def test_evidence_on_a_model_sent_for_verification_counts_after_rounds_move_on() -> None:
    """A node verifying a large model can take longer than a round: its evidence is measured
    on the model it was sent, which the receipt then names; a model never sent is refused."""
    from forsaken.common.errors import StaleRequest
    from forsaken.common.round_tasks import VerifyTask

    coord = make(RoundPolicy(rounds=20, min_clients=2, min_completed=2, round_timeout_s=10))
    joined(coord, "a", "b", "c")
    _one_round(coord, 10, "t")
    rec, _ = coord.forgets.request("a", "a", "req", (), "finetune", 20)
    now = 30
    while coord.forgets.verify_for("a") is None:
        _one_round(coord, now, f"r{now}")
        now += 10
    task = coord.poll("a", 0, now)
    assert isinstance(task, VerifyTask)
    sent = task.model_sha256
    _one_round(coord, now + 5, "later")
    assert coord.model.sha256 != sent
    evidence = {"mia_auc": 0.5, "forget_acc": 0.9, "held_out_acc": 0.9}
    with pytest.raises(StaleRequest, match="one this server sent"):
        coord.forget_rounds.report(
            "a", report(rec.forget_id, "evidence", evidence, "", "ee" * 32), now + 20
        )
    done = coord.forget_rounds.report(
        "a", report(rec.forget_id, "evidence", evidence, "", sent), now + 21
    )
    assert done.state.terminal and json.loads(done.receipt_json)["model_sha256_after"] == sent
