"""The coordinator against one untrusted member, driven in process with the pure client states.

The same defences as the real-process suite (tests/test_untrusted_members.py), each isolated
and fast: the count slot is checked on arrival and names the node, the divisor is the
survivors' announced weights, aggregates are bounded, a collapsing round is refused, faults
keep a node out of retries and then quarantine it, and late retries read as duplicates.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Callable

import numpy as np
import pytest

from forsaken.common.errors import MemberFault, PermissionDenied
from forsaken.common.round_tasks import SecAggTask
from forsaken.common.secagg.client_states import ClientDone, ClientIdentity, start_client
from forsaken.common.secagg.messages import MaskedInput
from forsaken.common.secagg.quantize import quantize
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.tensors import TensorSpec, to_bytes
from forsaken.common.types import ModelSpec, TrainSettings
from forsaken.server.checkpoints import MemoryCheckpointStore
from forsaken.server.coordinator import Coordinator
from forsaken.server.ledger import MemoryLedger
from forsaken.server.model_guard import GuardSettings
from forsaken.server.policy import RoundPolicy
from forsaken.server.rounds import (
    EvalResult,
    RoundAborted,
    RoundCompleted,
    Submission,
    masked_input_spec,
)
from forsaken.server.secure_round import SecureSettings

SPECS = (TensorSpec("w", (4, 5)),)
D = 20
NODES = ("a", "b", "c", "d")
SAMPLES = {"a": 10, "b": 20, "c": 30, "d": 40}


def coordinator(
    evaluator: Callable[[np.ndarray], EvalResult] | None = None,
    bound: float = 30.0,
    quarantine_after: int = 3,
) -> Coordinator:
    coord = Coordinator(
        policy=RoundPolicy(rounds=0, min_clients=3, min_completed=3, round_timeout_s=10),
        model_spec=ModelSpec("test", (5,), 4),
        tensors=SPECS,
        initial_model=lambda: np.zeros(D, np.float32),
        ledger=MemoryLedger(),
        checkpoints=MemoryCheckpointStore(),
        train=TrainSettings(max_update_norm=bound),
        evaluator=evaluator,
        secure=SecureSettings(clip=4.0, stage_timeout_s=5),
        guard=GuardSettings(max_drop=0.2),
        quarantine_after=quarantine_after,
        now_ms=0,
    )
    for node in NODES:
        coord.registry.join(node, bytes(32), SAMPLES[node], 0)
    return coord


class Member:
    """One node playing the secure round through the coordinator's entry points."""

    def __init__(self, coord: Coordinator, node: str, update: np.ndarray) -> None:
        self.coord, self.node, self.update = coord, node, update
        self.state: object = None
        self.forge: int | None = None
        self.refused: list[str] = []

    def act(self, now: int) -> None:
        task = self.coord.poll(self.node, SAMPLES[self.node], now)
        if not isinstance(task, SecAggTask):
            return
        if isinstance(task.message, SetupInfo):
            setup = task.message
            p = setup.config.params
            weighted = self.update * (setup.weight / setup.weight_scale)
            seed = hashlib.sha256(self.node.encode()).digest()
            vector = quantize(weighted, setup.weight, setup.clip, p.bits, seed, p.num_clients)
            if self.forge is not None:
                vector[-1] = np.uint32(self.forge % (1 << 32))
            self.state, out = start_client(ClientIdentity(setup.config, setup.index, seed), vector)
        elif self.state is not None and not isinstance(self.state, ClientDone):
            self.state, out = self.state.handle(task.message)  # type: ignore[attr-defined]
            if out is None:
                return
        else:
            return
        rid = uuid.uuid4().hex
        if isinstance(out, MaskedInput):
            sub = Submission(
                rid,
                task.task_id,
                task.round,
                task.model_sha256,
                0,
                {},
                (masked_input_spec(SPECS),),
                to_bytes(out.vector),
            )
            try:
                self.coord.submit(self.node, sub, now)
            except MemberFault as exc:
                self.refused.append(str(exc))
            return
        self.coord.secagg_message(self.node, task.round, task.task_id, rid, out, now)


def run_round(coord: Coordinator, members: list[Member], start: int) -> list[object]:
    """Tick and let every member act until a round completes; the events on the way."""
    events: list[object] = []
    now = start
    while not any(isinstance(e, RoundCompleted) for e in events):
        events += run_round_or_abort(coord, members, now)
        now += 100_000
    return events


def run_round_or_abort(coord: Coordinator, ms: list[Member], start: int = 0) -> list[object]:
    """Tick and let every member act until one attempt ends, completed or aborted."""
    events: list[object] = []
    now = start
    for _ in range(400):
        now += 100
        for m in ms:
            with contextlib.suppress(PermissionDenied):  # a quarantined node is refused
                m.act(now)
        new = coord.tick(now)
        events += new
        if any(isinstance(e, RoundCompleted | RoundAborted) for e in new):
            return events
    raise AssertionError(f"no attempt finished; events {events}")


def members(coord: Coordinator) -> list[Member]:
    rng = np.random.default_rng(0)
    return [Member(coord, n, rng.normal(0, 0.1, D).astype(np.float32)) for n in NODES]


def weighted_mean(ms: list[Member]) -> np.ndarray:
    total = sum(SAMPLES[m.node] for m in ms)
    return sum(m.update.astype(np.float64) * SAMPLES[m.node] for m in ms) / total


def test_honest_secure_round_divides_by_the_survivors_announced_weights() -> None:
    coord = coordinator()
    ms = members(coord)
    events = run_round(coord, ms, 0)
    (done,) = [e for e in events if isinstance(e, RoundCompleted)]
    assert done.record.total_samples == 100
    np.testing.assert_allclose(coord.model.vector, weighted_mean(ms), atol=1e-6)
    assert done.record.metrics["update_norm"] == pytest.approx(
        np.linalg.norm(coord.model.vector), 1e-5
    )


def test_a_forged_count_slot_is_refused_by_name_and_the_round_completes_without_it() -> None:
    coord = coordinator()
    ms = members(coord)
    evil = ms[3]
    evil.forge = 1 - (100 - SAMPLES["d"])  # what once made the server divide by 1
    events = run_round(coord, ms, 0)
    assert evil.refused == [
        "node d's masked input carries sample count 4294967237, not the weight 40 announced "
        "for it (or 0); the input is refused"
    ]
    (done,) = [e for e in events if isinstance(e, RoundCompleted)]
    assert "d" not in done.record.participants
    assert done.record.reason.startswith("left out node d: node d's masked input")
    # The honest mean, not a mean scaled by the weight of the whole round.
    np.testing.assert_allclose(coord.model.vector, weighted_mean(ms[:3]), atol=1e-6)


def test_repeated_faults_quarantine_the_node_until_an_operator_releases_it() -> None:
    coord = coordinator(quarantine_after=2)
    ms = members(coord)
    ms[3].forge = 7
    now = 0
    for _ in range(2):
        run_round(coord, ms, now)
        now += 100_000
    assert len(ms[3].refused) == 2
    with pytest.raises(PermissionDenied, match=r"quarantined .*forsaken admin release d"):
        coord.registry.check_admitted("d")
    with pytest.raises(PermissionDenied, match="quarantined"):
        coord.registry.join("d", bytes(32), 40, now)
    assert coord.ledger.client("d").quarantine.startswith("2 faults")  # durable
    events = run_round(coord, ms, now)
    (done,) = [e for e in events if isinstance(e, RoundCompleted)]
    assert "d" not in done.record.selected  # no longer even sampled
    assert coord.registry.release("d") and not coord.registry.release("d")
    coord.registry.check_admitted("d")


def test_an_aggregate_over_the_norm_bound_is_refused_and_the_model_kept() -> None:
    coord = coordinator(bound=0.05)  # honest updates here have norm ~0.45: clip-free misuse
    before = coord.model.vector.copy()
    ms = members(coord)
    events = run_round_or_abort(coord, ms)
    (aborted,) = [e for e in events if isinstance(e, RoundAborted)]
    assert aborted.record.reason.startswith("refused: aggregate update norm")
    assert "--max-update-norm 0.05" in aborted.record.reason
    np.testing.assert_array_equal(coord.model.vector, before)


def test_a_round_whose_validation_collapses_is_refused_and_the_model_kept() -> None:
    scores = iter([0.9, 0.9, 0.3])  # initial model, round 1, then a collapse

    def evaluator(_: np.ndarray) -> EvalResult:
        return EvalResult(next(scores), 0.5)

    coord = coordinator(evaluator)
    run_round(coord, members(coord), 0)
    before = coord.model.vector.copy()
    events = run_round_or_abort(coord, members(coord), 100_000)
    (aborted,) = [e for e in events if isinstance(e, RoundAborted)]
    assert aborted.record.reason.startswith("refused: validation accuracy would fall to 0.3000")
    np.testing.assert_array_equal(coord.model.vector, before)
    assert coord.completed_rounds == 1


def test_a_retry_that_arrives_after_its_stage_closed_is_a_duplicate() -> None:
    coord = coordinator()
    ms = members(coord)
    sent: list[tuple[str, int, str, str, object]] = []
    original = coord.secagg_message

    def spy(node: str, round_: int, task_id: str, rid: str, msg: object, now: int) -> object:
        sent.append((node, round_, task_id, rid, msg))
        return original(node, round_, task_id, rid, msg, now)

    coord.secagg_message = spy  # type: ignore[method-assign]
    run_round(coord, ms, 0)
    node, round_, task_id, rid, msg = sent[0]  # an advertisement, long since closed
    assert original(node, round_, task_id, rid, msg, 10**6).duplicate
