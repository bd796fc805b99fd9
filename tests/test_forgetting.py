"""The forget-request lifecycle, driven directly with a memory ledger: no network, no torch."""

from __future__ import annotations

import json

import pytest

from forsaken.common.errors import InvalidPayload, PermissionDenied, StaleRequest
from forsaken.server.forgetting import ForgetManager, ForgetPolicy
from forsaken.server.ledger import ClientRecord, ForgetState, MemoryLedger, RoundRecord
from tests.reports import report

SHA = "ab" * 32
EVIDENCE = {"mia_auc": 0.5, "forget_acc": 0.9, "held_out_acc": 0.9}


def setup(policy: ForgetPolicy | None = None) -> tuple[MemoryLedger, ForgetManager]:
    ledger = MemoryLedger()
    for node in ("a", "b"):
        ledger.upsert_client(ClientRecord(node, b"k" * 32))
    ledger.record_round(RoundRecord(0, 0, "completed", model_sha256=SHA))
    return ledger, ForgetManager(ledger, policy or ForgetPolicy(recovery_rounds=1))


def test_request_is_durable_idempotent_and_own_data_only() -> None:
    ledger, fm = setup()
    rec, created = fm.request("a", "", "req-1", (3, 1), "", 10)
    assert created and rec.method == "forsaken" and rec.sample_ids == (1, 3)
    again, created_again = fm.request("a", "", "req-1", (3, 1), "", 11)
    assert not created_again and again.forget_id == rec.forget_id
    assert len(ledger.forgets()) == 1
    with pytest.raises(PermissionDenied, match="may not ask to forget node b"):
        fm.request("a", "b", "req-2", (), "", 12)
    with pytest.raises(PermissionDenied, match="belongs to another node"):
        fm.get("b", rec.forget_id)
    with pytest.raises(InvalidPayload, match="unknown method"):
        fm.request("a", "", "req-3", (), "magic", 13)
    # Repeated ids are one id; more distinct ids than the node ever declared is refused.
    twice, _ = fm.request("a", "", "req-4", (1, 1, 7), "", 13, max_samples=2)
    assert twice.sample_ids == (1, 7)
    with pytest.raises(
        InvalidPayload, match="3 distinct sample ids, but node a declared at most 2"
    ):
        fm.request("a", "", "req-5", (1, 2, 3), "", 14, max_samples=2)
    assert len(ledger.forgets()) == 2  # the refused request left nothing behind


def test_forsaken_lifecycle_to_a_receipt() -> None:
    ledger, fm = setup()
    rec, _ = fm.request("a", "", "r", (), "forsaken", 0)
    assert fm.begin(SHA, 5, 1) is None
    assert ledger.forget(rec.forget_id).state is ForgetState.UNLEARNING
    order = fm.instruction_for("a")
    assert order is not None and order.method == "forsaken"
    assert fm.instruction_for("b") is None
    fm.on_report("a", report(rec.forget_id, "progress", {"objective": 1.0}, "", ""), 2)
    fm.on_round_completed(("a", "b"), 3)
    assert ledger.forget(rec.forget_id).state is ForgetState.UNLEARNING
    fm.on_report("a", report(rec.forget_id, "done", {"objective": 0.1}, "", ""), 4)
    fm.on_round_completed(("a", "b"), 5)
    assert ledger.forget(rec.forget_id).state is ForgetState.RECOVERING
    assert fm.excluded_nodes() == {"a"}  # it forgot all its data: no more training
    fm.on_round_completed(("b",), 6)
    assert ledger.forget(rec.forget_id).state is ForgetState.VERIFYING
    assert fm.verify_for("a") is not None
    with pytest.raises(InvalidPayload, match="evidence lacks"):
        fm.on_report("a", report(rec.forget_id, "evidence", {"mia_auc": 0.5}, "", "cd" * 32), 7)
    done = fm.on_report("a", report(rec.forget_id, "evidence", EVIDENCE, "", "cd" * 32), 8)
    assert done.state is ForgetState.COMPLETED
    receipt = json.loads(done.receipt_json)
    assert receipt["model_sha256_before"] == SHA and receipt["model_sha256_after"] == "cd" * 32
    assert receipt["unlearning_rounds"] == 2 and receipt["recovery_rounds"] == 1
    assert receipt["evidence"] == EVIDENCE and receipt["stopped_by"] == "oracle"
    assert "in 2 unlearning and 1 recovery rounds" in receipt["verdict"]
    assert fm.active() is None


def test_evidence_is_refused_before_verification() -> None:
    _, fm = setup()
    rec, _ = fm.request("a", "", "r", (), "forsaken", 0)
    fm.begin(SHA, 1, 1)
    with pytest.raises(StaleRequest, match="not verifying"):
        fm.on_report("a", report(rec.forget_id, "evidence", EVIDENCE, "", SHA), 2)


def test_round_cap_stops_unlearning_without_an_oracle_verdict() -> None:
    ledger, fm = setup(ForgetPolicy(recovery_rounds=0, max_unlearning_rounds=2))
    rec, _ = fm.request("a", "", "r", (7,), "pga", 0)
    fm.begin(SHA, 1, 1)
    fm.on_round_completed(("a", "b"), 2)
    fm.on_round_completed(("a", "b"), 3)
    cur = ledger.forget(rec.forget_id)
    assert cur.state is ForgetState.VERIFYING
    assert json.loads(cur.progress_json)["stopped_by"] == "round cap"
    assert fm.excluded_nodes() == frozenset()  # a subset: it keeps training on the rest


def test_retrain_rolls_back_to_before_the_first_contribution() -> None:
    ledger, fm = setup(ForgetPolicy(recovery_rounds=0))
    for n, parts in ((1, ("b",)), (2, ("a", "b")), (3, ("a", "b"))):
        ledger.record_round(
            RoundRecord(n, 0, "completed", participants=parts, model_sha256=f"{n:02d}" * 32)
        )
    rec, _ = fm.request("a", "", "r", (), "retrain", 0)
    rollback = fm.begin("03" * 32, 3, 1)
    assert rollback is not None
    progress = json.loads(rollback.progress_json)
    assert progress["rollback_model"] == "01" * 32 and progress["retrain_rounds_left"] == 2
    assert fm.excluded_nodes() == {"a"}
    fm.on_round_completed(("b",), 2)
    assert ledger.forget(rec.forget_id).state is ForgetState.UNLEARNING
    fm.on_round_completed(("b",), 3)
    assert ledger.forget(rec.forget_id).state is ForgetState.VERIFYING


def test_silent_node_fails_the_request_with_a_reason() -> None:
    ledger, fm = setup(ForgetPolicy(node_timeout_s=5))
    rec, _ = fm.request("a", "", "r", (), "forsaken", 0)
    fm.begin(SHA, 1, 1000)
    fm.fail_stale({"a": 1000}, 4000)
    assert ledger.forget(rec.forget_id).state is ForgetState.UNLEARNING
    fm.fail_stale({"a": 1000}, 7000)
    failed = ledger.forget(rec.forget_id)
    assert failed.state is ForgetState.FAILED and "silent" in failed.reason
    assert failed.receipt_json == "{}"  # never a receipt without evidence


def test_requests_are_served_one_at_a_time_oldest_first() -> None:
    ledger, fm = setup()
    first, _ = fm.request("a", "", "r1", (), "finetune", 0)
    second, _ = fm.request("b", "", "r2", (), "finetune", 1)
    fm.begin(SHA, 1, 2)
    assert ledger.forget(first.forget_id).state is ForgetState.RECOVERING
    assert ledger.forget(second.forget_id).state is ForgetState.REQUESTED
    fm.on_round_completed(("b",), 3)
    fm.on_report("a", report(first.forget_id, "evidence", EVIDENCE, "", SHA), 4)
    assert fm.active() is not None and fm.active().forget_id == second.forget_id


def test_manager_resumes_from_the_ledger() -> None:
    ledger, fm = setup()
    rec, _ = fm.request("a", "", "r", (), "forsaken", 0)
    fm.begin(SHA, 1, 1)
    restarted = ForgetManager(ledger, ForgetPolicy())
    assert restarted.active() is not None and restarted.active().forget_id == rec.forget_id
    assert restarted.instruction_for("a") is not None


def test_operator_forget_needs_a_server_side_method_and_completes_without_the_node() -> None:
    ledger, fm = setup()
    with pytest.raises(InvalidPayload, match="need the node itself"):
        fm.operator_request("admin", "a", "op", "forsaken", "", 1)
    rec, created = fm.operator_request("admin", "a", "op", "retrain", "left the consortium", 1)
    assert created and rec.initiated_by == "operator:admin" and rec.method == "retrain"
    assert fm.operator_request("admin", "a", "op", "retrain", "", 2)[0].forget_id == rec.forget_id
    fm.begin(SHA, 5, 3)
    assert fm.verify_for("a") is None  # nobody asks the node for evidence
    fm.fail_stale({}, 10**9)  # nor does its silence matter
    assert fm.active() is not None and fm.active().state is ForgetState.UNLEARNING
    for r in range(10):
        fm.on_round_completed(("b",), 10 + r, SHA, 0.9)
    done = ledger.forget(rec.forget_id)
    assert done.state is ForgetState.COMPLETED
    receipt = json.loads(done.receipt_json)
    assert receipt["verified_by"] == "server" and receipt["evidence"] == {"validation_acc": 0.9}
    assert receipt["reference"].startswith("exact:")
    assert "The server verified it, without the node: exact:" in receipt["verdict"]


def test_silence_is_measured_from_the_nodes_last_contact_not_the_rows_last_write() -> None:
    ledger, fm = setup()  # node timeout: see setup()
    rec, _ = fm.request("a", "", "r", (), "forsaken", 0)
    fm.begin(SHA, 5, 0)
    timeout_ms = int(fm.policy.node_timeout_s * 1000)
    # Rounds keep completing without the node; each rewrites the row.
    for r in range(1, 4):
        fm.on_round_completed(("b",), r * timeout_ms // 4, SHA, 0.9)
    fm.fail_stale({"a": 0}, timeout_ms + 1)
    failed = ledger.forget(rec.forget_id)
    assert failed.state is ForgetState.FAILED and "node a silent for" in failed.reason


def test_a_node_that_takes_no_part_in_unlearning_rounds_fails_its_request() -> None:
    ledger, fm = setup()
    rec, _ = fm.request("a", "", "r", (), "forsaken", 0)
    second, _ = fm.request("b", "", "r", (), "forsaken", 1)
    fm.begin(SHA, 5, 2)
    for r in range(fm.policy.max_unlearning_rounds):
        fm.on_round_completed(("b", "c"), 10 + r, SHA, 0.9)
    failed = ledger.forget(rec.forget_id)
    assert failed.state is ForgetState.FAILED and "took no part in" in failed.reason
    assert fm.active() is not None and fm.active().forget_id == second.forget_id


def test_not_starts_from_the_negated_model_and_goes_straight_to_recovery() -> None:
    ledger, fm = setup()
    rec, _ = fm.request("a", "", "r", (), "not", 0)
    assert fm.needs_negated_model()
    with pytest.raises(InvalidPayload, match="negated model"):
        fm.begin(SHA, 4, 1)
    rollback = fm.begin(SHA, 4, 1, negated_model="ee" * 32)
    assert rollback is not None
    assert json.loads(rollback.progress_json)["rollback_model"] == "ee" * 32
    assert ledger.forget(rec.forget_id).state is ForgetState.RECOVERING
    assert not fm.needs_negated_model()
    assert fm.instruction_for("a") is None  # the node computes nothing
    assert fm.excluded_nodes() == {"a"}
    fm.on_round_completed(("b",), 2)
    assert ledger.forget(rec.forget_id).state is ForgetState.VERIFYING


def test_fedquit_is_a_client_method() -> None:
    _, fm = setup()
    fm.request("a", "", "r", (), "fedquit", 0)
    assert fm.begin(SHA, 1, 1) is None
    order = fm.instruction_for("a")
    assert order is not None and order.method == "fedquit"
