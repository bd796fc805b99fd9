"""The forget codec: typed values survive the wire both ways, and what the wire should never
carry (unknown enum values, a report without a body, NaNs, a missing model digest) is refused
by name before anything past the codec sees it."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from forsaken.common import wire_forget
from forsaken.common.errors import CorruptState, InvalidPayload
from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.forget_receipt import Evidence, Receipt, Verifier
from forsaken.common.forget_reports import (
    EvidenceReport,
    FailureReport,
    ForgetReport,
    ReportKind,
    StepReport,
)
from forsaken.common.forget_states import ForgetState, PendingState
from forsaken.common.forget_status import ForgetStatus
from forsaken.common.receipts import verdict
from forsaken.v1 import fleet_pb2

SHA, AFTER = "ab" * 32, "cd" * 32
EVIDENCE = Evidence(
    mia_auc=0.52,
    forget_acc=0.8,
    held_out_acc=0.81,
    conf_auc=0.49,
    auc_resolution=0.04,
    extra={"forget_mean_loss": 0.7},
)


def receipt(**kw: Any) -> Receipt:
    fields: dict[str, Any] = dict(
        forget_id="f1",
        node_id="a" * 32,
        method=ForgetMethod.PGA,
        samples=0,
        requested_ms=5,
        completed_ms=9,
        model_sha256_before=SHA,
        model_sha256_after=AFTER,
        unlearning_rounds=3,
        recovery_rounds=2,
        stopped_by="oracle",
        client_gradient_evaluations=12,
        client_progress={"objective": 0.1, "gradient_evaluations": 4.0},
        evidence=EVIDENCE,
        reference="what it shows",
    )
    fields.update(kw)
    return Receipt(**fields)


@pytest.mark.parametrize("method", [*ForgetMethod, None])
def test_every_method_and_the_default_cross_the_wire(method: ForgetMethod | None) -> None:
    assert wire_forget.optional_method_from_proto(wire_forget.method_to_proto(method)) is method


@pytest.mark.parametrize("state", [*ForgetState, *PendingState])
def test_every_state_crosses_the_wire(state: ForgetState | PendingState) -> None:
    assert wire_forget.state_from_proto(wire_forget.state_to_proto(state)) is state


def test_unknown_enum_values_are_refused_by_name() -> None:
    with pytest.raises(InvalidPayload, match="unknown forget method 99"):
        wire_forget.optional_method_from_proto(99)
    with pytest.raises(InvalidPayload, match="unknown forget method 0"):
        wire_forget.method_from_proto(0)  # where a method is required, unspecified is not one
    with pytest.raises(InvalidPayload, match="unknown forget state 0"):
        wire_forget.state_from_proto(fleet_pb2.FORGET_STATE_UNSPECIFIED)


@pytest.mark.parametrize(
    "body",
    [
        StepReport(False, 3, {"objective": 0.5}),
        StepReport(True, 0),
        EvidenceReport(EVIDENCE, AFTER),
        FailureReport("out of memory"),
        FailureReport(""),
    ],
)
def test_each_report_body_crosses_the_wire(
    body: StepReport | EvidenceReport | FailureReport,
) -> None:
    sent = ForgetReport("r1", "f1", body)
    msg = wire_forget.report_to_proto(sent)
    got = wire_forget.report_from_proto(fleet_pb2.ForgetReport.FromString(msg.SerializeToString()))
    assert got == sent and got.body.kind is body.kind


def test_a_report_without_a_body_or_a_forget_id_is_refused() -> None:
    with pytest.raises(InvalidPayload, match="must hold progress, done, evidence or failed"):
        wire_forget.report_from_proto(fleet_pb2.ForgetReport(request_id="r", forget_id="f1"))
    with pytest.raises(InvalidPayload, match="forget_id is required"):
        wire_forget.report_from_proto(
            fleet_pb2.ForgetReport(request_id="r", failed=fleet_pb2.ForgetFailure())
        )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused_wherever_they_travel(bad: float) -> None:
    step = fleet_pb2.ForgetReport(
        forget_id="f1", progress=fleet_pb2.ForgetStep(metrics={"objective": bad})
    )
    with pytest.raises(InvalidPayload, match="objective is"):
        wire_forget.report_from_proto(step)
    evidence = fleet_pb2.ForgetReport(
        forget_id="f1",
        evidence=fleet_pb2.ForgetEvidence(mia_auc=bad, forget_acc=0.5, held_out_acc=0.5),
        evidence_model_sha256=bytes.fromhex(AFTER),
    )
    with pytest.raises(InvalidPayload, match="mia_auc is"):
        wire_forget.report_from_proto(evidence)
    extra = fleet_pb2.ForgetEvidence(extra={"forget_mean_loss": bad})
    with pytest.raises(InvalidPayload, match="forget_mean_loss is"):
        wire_forget.evidence_from_proto(extra)


def test_evidence_must_name_the_model_it_was_measured_on() -> None:
    msg = wire_forget.report_to_proto(ForgetReport("r", "f1", EvidenceReport(EVIDENCE, AFTER)))
    msg.evidence_model_sha256 = b"short"
    with pytest.raises(InvalidPayload, match="name the model it was measured on"):
        wire_forget.report_from_proto(msg)


def test_a_negative_step_cost_is_refused() -> None:
    msg = fleet_pb2.ForgetReport(forget_id="f1", done=fleet_pb2.ForgetStep(gradient_evaluations=-1))
    with pytest.raises(InvalidPayload, match="gradient_evaluations must be >= 0"):
        wire_forget.report_from_proto(msg)


def test_evidence_keeps_named_fields_named_and_says_what_is_missing() -> None:
    flat = {"mia_auc": 0.5, "forget_acc": 0.9, "forget_samples": 12.0}
    evidence = Evidence.of(flat)
    assert evidence.mia_auc == 0.5 and evidence.extra == {"forget_samples": 12.0}
    assert evidence.as_dict() == flat
    assert evidence.missing() == ["held_out_acc"]
    assert wire_forget.evidence_from_proto(wire_forget.evidence_to_proto(evidence)) == evidence
    with pytest.raises(InvalidPayload, match="belong in their own fields"):
        Evidence(extra={"mia_auc": 0.5})


@pytest.mark.parametrize(
    "made",
    [
        receipt(),
        receipt(samples=7, model_sha256_before=""),
        receipt(
            method=ForgetMethod.RETRAIN,
            evidence=Evidence(validation_acc=0.9),
            verified_by=Verifier.SERVER,
            initiated_by="operator:admin",
        ),
    ],
)
def test_a_receipt_crosses_the_wire_and_the_ledger_unchanged(made: Receipt) -> None:
    wired = wire_forget.receipt_from_proto(
        fleet_pb2.ForgetReceipt.FromString(wire_forget.receipt_to_proto(made).SerializeToString())
    )
    assert wired == made
    assert Receipt.from_json(made.to_json()) == made
    assert made.verdict == verdict(json.loads(made.to_json()))


def test_a_receipt_stored_by_an_earlier_version_still_reads() -> None:
    # As the server wrote it before the verdict and the cost were recorded, with a NaN the
    # node of that time could send (read as not measured).
    stored = {
        "forget_id": "f1",
        "node_id": "a" * 32,
        "method": "forsaken",
        "samples": "all",
        "requested_ms": 1,
        "completed_ms": 2,
        "model_sha256_before": None,
        "model_sha256_after": AFTER,
        "unlearning_rounds": 2,
        "recovery_rounds": 1,
        "stopped_by": "oracle",
        "client_progress": {"objective": 0.1},
        "evidence": {"mia_auc": 0.5, "excess_confidence_drop_ci95": float("nan")},
        "reference": "old words",
    }
    old = Receipt.from_json(json.dumps(stored))
    assert old is not None
    assert (
        old.samples == 0 and old.model_sha256_before == "" and old.method is ForgetMethod.FORSAKEN
    )
    assert old.evidence.excess_confidence_drop_ci95 is None
    assert old.verdict.startswith("Node " + "a" * 32 + " asked to forget all the data")
    assert Receipt.from_json("{}") is None
    with pytest.raises(CorruptState, match="stored receipt is unreadable"):
        Receipt.from_json(json.dumps({**stored, "method": "bogus"}))


def test_a_status_crosses_the_wire_with_its_receipt_or_none() -> None:
    done = ForgetStatus("f1", "a" * 32, ForgetMethod.PGA, ForgetState.COMPLETED, receipt=receipt())
    pending = ForgetStatus("", "a" * 32, None, PendingState.SUBMITTING, num_samples=3)
    for status in (done, pending):
        msg = wire_forget.status_to_proto(status)
        assert wire_forget.status_from_proto(msg) == status
    assert pending.as_dict()["method"] == "" and done.as_dict()["receipt"]["method"] == "pga"


def test_report_kinds_name_the_body() -> None:
    assert [b.kind for b in (StepReport(False), StepReport(True))] == [
        ReportKind.PROGRESS,
        ReportKind.DONE,
    ]
