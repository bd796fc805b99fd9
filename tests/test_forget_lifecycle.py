"""The forget lifecycle's transition function, driven directly: no ledger, no network, no torch.

Each test feeds events to `transition` and checks the actions it asks for (what the ledger
would record) and the case it returns. The last tests check the stored strings and the
progress format against what earlier versions wrote, through a real SQLite ledger.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from forsaken.common.errors import InvalidPayload, StaleRequest
from forsaken.common.forget_methods import METHOD_NAMES, ForgetMethod
from forsaken.common.forget_reports import ReportKind
from forsaken.server.forget_lifecycle import (
    Begin,
    Fail,
    ForgetAction,
    ForgetEvent,
    LivenessCheck,
    Report,
    RollBack,
    RoundCompleted,
    SetStage,
    WriteReceipt,
    transition,
)
from forsaken.server.forget_state import Checkpoint, ForgetCase, ForgetPolicy, ForgetProgress
from forsaken.server.forget_strategies import STRATEGIES, StartFacts
from forsaken.server.forgetting import ForgetManager
from forsaken.server.ledger import ClientRecord, ForgetState, RoundRecord, SqliteLedger
from tests import reports
from tests.reports import body

S = ForgetState
M = ForgetMethod
SHA, AFTER, NEGATED, BASE = "ab" * 32, "cd" * 32, "ee" * 32, "01" * 32
EVIDENCE = {"mia_auc": 0.5, "forget_acc": 0.9, "held_out_acc": 0.9}
POLICY = ForgetPolicy(recovery_rounds=1, max_unlearning_rounds=3, node_timeout_s=5)


def new_case(method: ForgetMethod, samples: int = 0, initiated_by: str = "") -> ForgetCase:
    return ForgetCase("f1", "a", method, samples, 7, initiated_by, S.REQUESTED, ForgetProgress())


def begin_event(method: ForgetMethod, now_ms: int = 1) -> Begin:
    """What the server passes at the start: only what the method's strategy asks for."""
    strategy = STRATEGIES[method]
    return Begin(
        StartFacts(
            SHA,
            3,
            negated_model=NEGATED if strategy.needs_negated_model else None,
            before_node=Checkpoint(1, BASE) if strategy.needs_checkpoint_before_node else None,
        ),
        now_ms,
    )


def rnd(*participants: str, now_ms: int = 10, acc: float | None = None) -> RoundCompleted:
    return RoundCompleted(frozenset(participants), now_ms, AFTER, acc)


def report(kind: ReportKind, metrics: dict[str, float] | None = None, **kw: str) -> Report:
    return Report(body(kind, metrics, **kw), 20)


def feed(
    case: ForgetCase, *events: ForgetEvent, policy: ForgetPolicy = POLICY
) -> tuple[ForgetCase, list[ForgetAction]]:
    actions: list[ForgetAction] = []
    for event in events:
        case, more = transition(case, event, policy)
        actions += more
    return case, actions


def stages(actions: list[ForgetAction]) -> list[ForgetState]:
    return [a.stage for a in actions if isinstance(a, SetStage)]


# ---- every method's happy path -----------------------------------------------------------


@pytest.mark.parametrize("method", list(ForgetMethod))
def test_every_method_reaches_a_receipt_through_the_same_stages(method: ForgetMethod) -> None:
    case, actions = feed(new_case(method), begin_event(method))
    rollbacks = [a.model_sha256 for a in actions if isinstance(a, RollBack)]
    assert bool(rollbacks) == method.replaces_model
    if method.unlearns_in_rounds:
        assert stages(actions) == [S.UNLEARNING] and case.stage is S.UNLEARNING
    else:
        assert stages(actions) == [S.UNLEARNING, S.RECOVERING]  # no rounds of its own
    assert case.progress.model_before == SHA and case.progress.started_round == 3
    written = [a.stage for a in actions if isinstance(a, SetStage)]
    rounds = 0
    while case.stage is not S.VERIFYING:
        if method.computed_by_node and case.stage is S.UNLEARNING:
            case, more = feed(case, report(ReportKind.DONE, {"gradient_evaluations": 4}))
            actions += more
        case, more = feed(case, rnd("a", "b"))
        actions += more
        written += stages(list(more))
        rounds += 1
        assert rounds < 10, f"{method} never reached verification"
    # Every stage of the chain was recorded, in order, each exactly once on entry.
    entered = [s for i, s in enumerate(written) if i == 0 or s is not written[i - 1]]
    assert entered == [S.UNLEARNING, S.RECOVERING, S.VERIFYING]
    assert case.progress.verifying_since_ms == 10
    done, last = feed(case, Report(body(ReportKind.EVIDENCE, EVIDENCE, model_sha256=AFTER), 30))
    assert done.stage is S.COMPLETED and len(last) == 1 and isinstance(last[0], WriteReceipt)
    receipt = json.loads(last[0].receipt.to_json())
    assert receipt["method"] == method.value and receipt["samples"] == "all"
    assert receipt["model_sha256_before"] == SHA and receipt["model_sha256_after"] == AFTER
    assert receipt["evidence"] == EVIDENCE and receipt["completed_ms"] == 30
    assert receipt["stopped_by"] == ("oracle" if method.computed_by_node else method.value)
    if method.computed_by_node:
        assert receipt["client_gradient_evaluations"] == 4 * receipt["unlearning_rounds"]
    assert receipt["verdict"].startswith("Node a asked to forget all the data")


def test_retrain_rolls_back_before_the_node_and_retrains_the_lost_rounds() -> None:
    case, actions = feed(new_case(M.RETRAIN), begin_event(M.RETRAIN))
    assert RollBack(BASE) in actions
    p = case.progress
    assert (p.rollback_model, p.rollback_to_round, p.retrain_rounds_left) == (BASE, 1, 2)
    case, actions = feed(case, rnd("b"))
    assert stages(actions) == [S.UNLEARNING] and case.progress.retrain_rounds_left == 1
    case, actions = feed(case, rnd("b", now_ms=40))
    # Exact, so nothing to recover from: recovery is passed in the same round.
    assert stages(actions) == [S.RECOVERING, S.VERIFYING]
    assert case.progress.unlearning_rounds == 2 and case.progress.verifying_since_ms == 40
    first, second = (a for a in actions if isinstance(a, SetStage))
    # The clock starts on entering verifying, not before.
    assert (first.progress.verifying_since_ms, second.progress.verifying_since_ms) == (None, 40)


def test_retrain_of_a_node_that_never_contributed_keeps_the_model() -> None:
    event = Begin(StartFacts(SHA, 3, before_node=None), 1)
    case, actions = feed(new_case(M.RETRAIN), event)
    assert RollBack(SHA) in actions and case.progress.retrain_rounds_left == 0
    assert feed(case, rnd("b"))[0].stage is S.VERIFYING


def test_not_refuses_to_start_without_its_negated_model() -> None:
    case = new_case(M.NEGATION)
    with pytest.raises(InvalidPayload, match="negated model"):
        transition(case, Begin(StartFacts(SHA, 3), 1), POLICY)
    started, actions = feed(case, begin_event(M.NEGATION))
    assert RollBack(NEGATED) in actions and started.progress.rollback_model == NEGATED


def test_a_restart_between_the_two_start_writes_still_reaches_recovery() -> None:
    for method in (M.FINETUNE, M.NEGATION):
        halfway = replace(new_case(method), stage=S.UNLEARNING)
        case, actions = feed(halfway, rnd("b"))
        assert case.stage is S.RECOVERING and stages(actions) == [S.RECOVERING]


def test_round_cap_ends_unlearning_without_an_oracle_verdict() -> None:
    policy = replace(POLICY, recovery_rounds=0)
    case, _ = feed(new_case(M.PGA, samples=2), begin_event(M.PGA), policy=policy)
    case, actions = feed(case, rnd("a"), rnd("a"), rnd("a"), policy=policy)
    assert case.stage is S.VERIFYING and case.progress.stopped_by == "round cap"
    assert case.progress.unlearning_rounds == 3
    assert stages(actions)[-2:] == [S.RECOVERING, S.VERIFYING]  # no recovery rounds asked


def test_starting_twice_or_rounds_before_the_start_do_nothing() -> None:
    queued = new_case(M.FORSAKEN)
    assert transition(queued, rnd("a"), POLICY) == (queued, ())
    started, _ = feed(queued, begin_event(M.FORSAKEN))
    assert transition(started, begin_event(M.FORSAKEN), POLICY) == (started, ())


def test_transition_is_pure() -> None:
    case, _ = feed(new_case(M.FORSAKEN), begin_event(M.FORSAKEN))
    event = report(ReportKind.PROGRESS, {"objective": 1.0, "gradient_evaluations": 2})
    assert transition(case, event, POLICY) == transition(case, event, POLICY)
    assert case.progress.client == {} and case.progress.client_gradient_evaluations == 0


# ---- failures ----------------------------------------------------------------------------


def test_a_silent_node_fails_its_request_with_a_reason() -> None:
    case, _ = feed(new_case(M.FORSAKEN), begin_event(M.FORSAKEN))
    assert transition(case, LivenessCheck(5_000, 1_000, 0), POLICY) == (case, ())
    failed, actions = transition(case, LivenessCheck(7_000, 1_000, 0), POLICY)
    assert failed.stage is S.FAILED and len(actions) == 1 and isinstance(actions[0], Fail)
    assert actions[0].reason == "node a silent for 6s during unlearning"


def test_silence_counts_from_the_server_start_when_the_node_was_not_seen_since() -> None:
    case, _ = feed(new_case(M.FORSAKEN), begin_event(M.FORSAKEN))
    assert transition(case, LivenessCheck(7_000, None, 4_000), POLICY)[1] == ()
    assert transition(case, LivenessCheck(7_000, 100, 4_000), POLICY)[1] == ()
    assert transition(case, LivenessCheck(9_500, None, 4_000), POLICY)[0].stage is S.FAILED


def test_a_node_that_keeps_calling_but_never_verifies_fails() -> None:
    case = replace(
        new_case(M.FORSAKEN),
        stage=S.VERIFYING,
        progress=ForgetProgress(model_before=SHA, verifying_since_ms=1_000),
    )
    assert transition(case, LivenessCheck(5_000, 4_900, 0), POLICY)[1] == ()
    failed, actions = transition(case, LivenessCheck(7_000, 6_900, 0), POLICY)
    assert failed.stage is S.FAILED
    assert actions == (Fail("node a reported no evidence in 6s", case.progress),)


def test_the_node_is_not_needed_while_the_server_unlearns_or_for_an_operators_request() -> None:
    retraining, _ = feed(new_case(M.RETRAIN), begin_event(M.RETRAIN))
    assert transition(retraining, LivenessCheck(10**9, 0, 0), POLICY)[1] == ()
    operator, _ = feed(new_case(M.RETRAIN, initiated_by="operator:x"), begin_event(M.RETRAIN))
    operator, _ = feed(operator, rnd("b"))
    assert transition(operator, LivenessCheck(10**9, 0, 0), POLICY)[1] == ()


@pytest.mark.parametrize("method", [M.FORSAKEN, M.PGA])
def test_a_node_that_takes_no_part_fails_after_the_round_cap(method: ForgetMethod) -> None:
    case, _ = feed(new_case(method), begin_event(method))
    case, actions = feed(case, rnd("b"), rnd("b"))
    assert case.stage is S.UNLEARNING and case.progress.rounds_missed == 2
    failed, actions = feed(case, rnd("b"))
    assert failed.stage is S.FAILED and failed.progress.rounds_missed == 3
    assert actions == [Fail("node a took no part in 3 unlearning rounds", failed.progress)]


def test_fedquit_is_held_to_taking_part_like_the_other_node_methods() -> None:
    # It used to stay unlearning for ever and block the queue behind it.
    case, _ = feed(new_case(M.FEDQUIT), begin_event(M.FEDQUIT))
    case, _ = feed(case, rnd("b"), rnd("b"))
    assert case.stage is S.UNLEARNING and case.progress.rounds_missed == 2
    failed, actions = feed(case, rnd("b"))
    assert failed.stage is S.FAILED
    assert actions == [Fail("node a took no part in 3 unlearning rounds", failed.progress)]


def test_a_node_can_fail_its_own_request() -> None:
    case, _ = feed(new_case(M.FORSAKEN), begin_event(M.FORSAKEN))
    failed, actions = feed(case, report(ReportKind.FAILED, reason="out of memory"))
    assert failed.stage is S.FAILED and actions == [Fail("out of memory", case.progress)]
    assert feed(case, report(ReportKind.FAILED))[1] == [Fail("client failed", case.progress)]


# ---- reports that do not belong ----------------------------------------------------------


def test_evidence_is_refused_before_verification_and_when_incomplete() -> None:
    case, _ = feed(new_case(M.FORSAKEN), begin_event(M.FORSAKEN))
    with pytest.raises(StaleRequest, match="is unlearning, not verifying"):
        transition(case, report(ReportKind.EVIDENCE, EVIDENCE), POLICY)
    verifying = replace(case, stage=S.VERIFYING)
    with pytest.raises(InvalidPayload, match=r"evidence lacks \['forget_acc', 'held_out_acc'\]"):
        transition(verifying, report(ReportKind.EVIDENCE, {"mia_auc": 0.5}), POLICY)


def test_progress_is_refused_outside_unlearning() -> None:
    recovering = replace(new_case(M.FORSAKEN), stage=S.RECOVERING)
    for kind in (ReportKind.PROGRESS, ReportKind.DONE):
        with pytest.raises(StaleRequest, match="is recovering, not unlearning"):
            transition(recovering, report(kind, {"objective": 1.0}), POLICY)


def test_nothing_changes_after_the_end() -> None:
    for stage in (S.COMPLETED, S.FAILED):
        ended = replace(new_case(M.FORSAKEN), stage=stage)
        for event in (
            report(ReportKind.EVIDENCE, EVIDENCE),
            report(ReportKind.FAILED),
            rnd("a"),
            LivenessCheck(10**9, 0, 0),
            begin_event(M.FORSAKEN),
        ):
            assert transition(ended, event, POLICY) == (ended, ())


def test_progress_reports_accumulate_the_cost_and_keep_the_oracle_verdict() -> None:
    case, _ = feed(new_case(M.FORSAKEN), begin_event(M.FORSAKEN))
    case, actions = feed(
        case,
        report(ReportKind.DONE, {"objective": 0.2, "gradient_evaluations": 3}),
        report(ReportKind.PROGRESS, {"objective": 0.1, "gradient_evaluations": 5}),
    )
    assert stages(actions) == [S.UNLEARNING, S.UNLEARNING]
    p = case.progress
    assert p.client_done and p.client_gradient_evaluations == 8 and p.client["objective"] == 0.1


# ---- an operator's request: the server verifies alone ------------------------------------


@pytest.mark.parametrize(
    ("method", "shows"),
    [
        (M.RETRAIN, "exact: the model was rolled back to the checkpoint of round 1"),
        (M.FINETUNE, "nothing by itself"),
    ],
)
def test_an_operators_request_completes_with_the_servers_receipt(
    method: ForgetMethod, shows: str
) -> None:
    case, _ = feed(new_case(method, initiated_by="operator:admin"), begin_event(method))
    for _ in range(5):
        case, actions = feed(case, rnd("b", acc=0.8))
        if case.stage is S.COMPLETED:
            break
    assert case.stage is S.COMPLETED and isinstance(actions[-1], WriteReceipt)
    assert stages(actions)[-1] is S.VERIFYING  # recorded before the receipt
    receipt = json.loads(actions[-1].receipt.to_json())
    assert receipt["verified_by"] == "server" and receipt["initiated_by"] == "operator:admin"
    assert receipt["reference"].startswith(shows) and receipt["evidence"] == {"validation_acc": 0.8}


# ---- what the ledger stores ----------------------------------------------------------------


def test_stored_strings_are_those_of_earlier_versions() -> None:
    assert METHOD_NAMES == ("forsaken", "pga", "fedquit", "finetune", "not", "retrain")
    assert [s.value for s in ForgetState] == [
        "requested",
        "unlearning",
        "recovering",
        "verifying",
        "completed",
        "failed",
    ]
    assert {m.value for m in ForgetMethod if m.server_side} == {"retrain", "finetune", "not"}
    assert set(STRATEGIES) == set(ForgetMethod)


def test_progress_reads_the_old_format_and_writes_the_same_keys() -> None:
    # As the previous version wrote it after a round that went on without the node.
    old = {
        "model_before": SHA,
        "started_round": 5,
        "unlearning_rounds": 1,
        "recovery_rounds": 0,
        "client": {"objective": 0.25},
        "client_gradient_evaluations": 4,
        "client_done": True,
        "rounds_missed": 1,
        "stopped_by": "oracle",
        "verifying_since_ms": 99,
    }
    progress = ForgetProgress.from_json(json.dumps(old))
    assert progress.client == {"objective": 0.25} and progress.rounds_missed == 1
    assert json.loads(progress.to_json()) == old
    retrain = {
        "model_before": SHA,
        "started_round": 3,
        "unlearning_rounds": 0,
        "recovery_rounds": 0,
        "client": {},
        "rollback_to_round": 1,
        "retrain_rounds_left": 2,
        "rollback_model": BASE,
    }
    assert json.loads(ForgetProgress.from_json(json.dumps(retrain)).to_json()) == retrain
    assert ForgetProgress.from_json("{}") == ForgetProgress()


def test_unreadable_progress_is_refused_by_name() -> None:
    from forsaken.common.errors import CorruptState

    for text in ("[]", '{"unlearning_rounds": "many"}', '{"client": 3}'):
        with pytest.raises(CorruptState, match="forget progress is unreadable"):
            ForgetProgress.from_json(text)


def test_a_ledger_written_the_old_way_resumes(tmp_path: Path) -> None:
    """Rows as the previous version stored them: strings for method and state, its JSON."""
    path = tmp_path / "ledger.db"
    with SqliteLedger(path) as ledger:
        for node in ("a", "b"):
            ledger.upsert_client(ClientRecord(node, b"k" * 32))
        ledger.record_round(RoundRecord(0, 0, "completed", model_sha256=SHA))
    conn = sqlite3.connect(path)
    old_progress = json.dumps(
        {
            "model_before": SHA,
            "started_round": 0,
            "unlearning_rounds": 1,
            "recovery_rounds": 0,
            "client": {"objective": 0.1},
            "client_done": True,
        }
    )
    conn.execute(
        "INSERT INTO forgets (forget_id, node_id, request_id, method, sample_ids, state, "
        "reason, created_ms, updated_ms, receipt_json, progress_json) "
        "VALUES ('f1', 'a', 'r1', 'pga', '[3]', 'unlearning', '', 1, 2, '{}', ?)",
        (old_progress,),
    )
    conn.commit()
    with SqliteLedger(path) as ledger:
        fm = ForgetManager(ledger, POLICY)
        rec = fm.active()
        assert rec is not None and rec.method is ForgetMethod.PGA
        assert rec.state is ForgetState.UNLEARNING
        fm.on_round_completed(("a", "b"), 10)  # the oracle said done: on to recovery
        assert ledger.forget("f1").state is ForgetState.RECOVERING
        fm.on_round_completed(("b",), 11)
        done = fm.on_report("a", reports.report("f1", "evidence", EVIDENCE, "", AFTER), 12)
        assert done.state is ForgetState.COMPLETED
    stored = conn.execute("SELECT method, state, progress_json FROM forgets").fetchone()
    conn.close()
    assert stored[:2] == ("pga", "completed")
    progress = json.loads(stored[2])
    assert progress["unlearning_rounds"] == 2 and progress["recovery_rounds"] == 1
    assert progress["stopped_by"] == "oracle" and progress["client"] == {"objective": 0.1}
