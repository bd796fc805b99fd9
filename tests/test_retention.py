"""Checkpoint retention: recent rounds, rollback anchors and forget-named models stay; the rest
goes after each completed round, and nothing goes when the keep set cannot be computed."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from forsaken.common.errors import ConfigError
from forsaken.common.round_tasks import TrainTask
from forsaken.common.tensors import TensorSpec, to_bytes
from forsaken.common.types import ModelSpec, TrainSettings
from forsaken.server.app import ServerConfig
from forsaken.server.checkpoints import MemoryCheckpointStore
from forsaken.server.coordinator import Coordinator
from forsaken.server.ledger import ForgetRecord, MemoryLedger
from forsaken.server.policy import RoundPolicy
from forsaken.server.retention import RetentionError, checkpoints_to_keep, forget_models
from forsaken.server.rounds import RoundCompleted, Submission

SPECS = (TensorSpec("w", (4,)),)


class _Federation:
    """A coordinator over in-memory stores, driven round by round with a fake clock."""

    def __init__(self, keep: int) -> None:
        self.ledger, self.store = MemoryLedger(), MemoryCheckpointStore()
        self.coord = Coordinator(
            policy=RoundPolicy(rounds=0, min_clients=2, min_completed=2, round_timeout_s=10),
            model_spec=ModelSpec("test", (4,), 2),
            tensors=SPECS,
            initial_model=lambda: np.zeros(4, dtype=np.float32),
            ledger=self.ledger,
            checkpoints=self.store,
            train=TrainSettings(),
            keep_checkpoints=keep,
            now_ms=0,
        )
        self.now = 0
        self.shas: dict[int, str] = {0: self.ledger.last_completed().model_sha256}  # type: ignore[union-attr]

    def join(self, node: str) -> None:
        self.coord.registry.join(node, b"k" * 32, 10, self.now)

    def round(self, nodes: tuple[str, ...]) -> int:
        self.now += 1
        self.coord.tick(self.now)
        for node in nodes:
            task = self.coord.poll(node, 10, self.now)
            assert isinstance(task, TrainTask)
            delta = np.full(4, task.round, dtype=np.float32)
            sub = Submission(
                request_id=f"{node}-{task.round}",
                task_id=task.task_id,
                round=task.round,
                base_model_sha256=task.model_sha256,
                num_samples=10,
                metrics={},
                tensors=SPECS,
                payload=to_bytes(delta),
            )
            assert self.coord.submit(node, sub, self.now).accepted
        self.now += 1
        (event,) = self.coord.tick(self.now)
        assert isinstance(event, RoundCompleted)
        self.shas[event.record.round] = event.record.model_sha256  # type: ignore[assignment]
        return event.record.round


def _late_joiner_federation(keep: int) -> _Federation:
    """a and b from round 1; c first contributes in round 4: its rollback anchor is round 3."""
    fed = _Federation(keep)
    fed.join("a")
    fed.join("b")
    for _ in range(3):
        fed.round(("a", "b"))
    fed.join("c")
    for _ in range(3):
        fed.round(("a", "b", "c"))
    return fed


def test_keeps_recent_rounds_and_every_rollback_anchor() -> None:
    fed = _late_joiner_federation(keep=2)
    s = fed.shas
    assert set(fed.store.addresses()) == {s[0], s[3], s[5], s[6]}
    # retrain for a (or b) rolls back to round 0, for c to round 3: both are still there.
    for node, anchor in (("a", 0), ("c", 3)):
        first = fed.ledger.first_contribution(node)
        assert first is not None
        base = fed.ledger.last_checkpoint_before(first)
        assert base is not None and base.model_sha256 == s[anchor]
        assert fed.store.has(s[anchor])
    # The ledger still names every round's model: only the bytes went.
    assert [fed.ledger.completed_round(n).model_sha256 for n in range(7)] == [
        s[n] for n in range(7)
    ]


def test_models_named_by_forget_requests_are_kept() -> None:
    fed = _Federation(keep=2)
    fed.join("a")
    fed.join("b")
    fed.round(("a", "b"))
    fed.round(("a", "b"))
    receipt = {"model_sha256_before": fed.shas[1], "model_sha256_after": fed.shas[2]}
    fed.ledger.create_forget(
        ForgetRecord("f1", "a", "req", "forsaken", receipt_json=json.dumps(receipt))
    )
    for _ in range(4):
        fed.round(("a", "b"))
    s = fed.shas
    assert set(fed.store.addresses()) == {s[0], s[1], s[2], s[5], s[6]}


def test_zero_keeps_every_checkpoint() -> None:
    fed = _late_joiner_federation(keep=0)
    assert set(fed.store.addresses()) == set(fed.shas.values())


def test_unreadable_forget_row_collects_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger validates JSON on write, so only a damaged database yields such a row; then
    skipping it would delete the models it names, so collection stops instead."""
    fed = _Federation(keep=2)
    fed.join("a")
    fed.join("b")
    fed.round(("a", "b"))
    damaged = ForgetRecord("f1", "a", "req", "forsaken")
    object.__setattr__(damaged, "progress_json", '{"model_before": ')
    with pytest.raises(RetentionError, match="f1"):
        forget_models([damaged])
    monkeypatch.setattr(fed.ledger, "forgets", lambda node_id=None: [damaged])
    for _ in range(4):
        fed.round(("a", "b"))  # the rounds still complete
    assert set(fed.store.addresses()) == set(fed.shas.values())


def test_keep_set_rules_directly() -> None:
    fed = _late_joiner_federation(keep=0)
    s = fed.shas
    assert checkpoints_to_keep(fed.ledger, 1) == {s[6], s[0], s[3]}
    assert checkpoints_to_keep(fed.ledger, 100) == set(s.values())
    with pytest.raises(ValueError):
        checkpoints_to_keep(fed.ledger, 0)
    progress = ForgetRecord(
        "f2", "c", "r", "retrain", progress_json=json.dumps({"rollback_model": s[2], "x": 3})
    )
    assert forget_models([progress, replace(progress, progress_json="[]")]) == {s[2]}


@pytest.mark.parametrize("value", [1, -1])
def test_server_config_rejects_a_window_without_the_previous_model(value: int) -> None:
    with pytest.raises(ConfigError, match="checkpoint_keep_last"):
        ServerConfig(checkpoint_keep_last=value).validate()


def test_collection_runs_every_half_window() -> None:
    """keep=4 collects after rounds 2, 4, 6, ...: between collections one more model waits."""
    fed = _Federation(keep=4)
    fed.join("a")
    fed.join("b")
    for _ in range(6):
        fed.round(("a", "b"))
    s = fed.shas
    assert set(fed.store.addresses()) == {s[0], s[3], s[4], s[5], s[6]}
    fed.round(("a", "b"))  # round 7: no collection
    assert set(fed.store.addresses()) == {s[0], s[3], s[4], s[5], s[6], s[7]}
