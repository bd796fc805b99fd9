"""The one codec for forget messages: typed values <-> protobuf, used by both sides.

Everything a forget message carries is decoded here once, into ForgetMethod, ForgetState,
ForgetReport, Receipt and ForgetStatus; nothing past this module reads a forget proto field.
Decoding refuses what the wire should never carry (an unknown enum value, a report without a
body, a NaN) with `InvalidPayload` naming it, which the RPC edge returns as INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from forsaken.common.errors import InvalidPayload
from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.forget_receipt import Evidence, Receipt, Verifier, finite_metrics
from forsaken.common.forget_reports import (
    EvidenceReport,
    FailureReport,
    ForgetReport,
    ReportBody,
    StepReport,
)
from forsaken.common.forget_states import ForgetState, PendingState, RequestState
from forsaken.common.forget_status import ForgetStatus
from forsaken.v1 import fleet_pb2

_METHOD_TO_PROTO: Mapping[ForgetMethod, fleet_pb2.ForgetMethod] = MappingProxyType(
    {
        ForgetMethod.FORSAKEN: fleet_pb2.FORGET_METHOD_FORSAKEN,
        ForgetMethod.PGA: fleet_pb2.FORGET_METHOD_PGA,
        ForgetMethod.FEDQUIT: fleet_pb2.FORGET_METHOD_FEDQUIT,
        ForgetMethod.FINETUNE: fleet_pb2.FORGET_METHOD_FINETUNE,
        ForgetMethod.NEGATION: fleet_pb2.FORGET_METHOD_NOT,
        ForgetMethod.RETRAIN: fleet_pb2.FORGET_METHOD_RETRAIN,
    }
)
_METHOD_FROM_PROTO: Mapping[int, ForgetMethod] = MappingProxyType(
    {int(v): k for k, v in _METHOD_TO_PROTO.items()}
)

_STATE_TO_PROTO: Mapping[RequestState, fleet_pb2.ForgetState] = MappingProxyType(
    {
        PendingState.SUBMITTING: fleet_pb2.FORGET_STATE_SUBMITTING,
        ForgetState.REQUESTED: fleet_pb2.FORGET_STATE_REQUESTED,
        ForgetState.UNLEARNING: fleet_pb2.FORGET_STATE_UNLEARNING,
        ForgetState.RECOVERING: fleet_pb2.FORGET_STATE_RECOVERING,
        ForgetState.VERIFYING: fleet_pb2.FORGET_STATE_VERIFYING,
        ForgetState.COMPLETED: fleet_pb2.FORGET_STATE_COMPLETED,
        ForgetState.FAILED: fleet_pb2.FORGET_STATE_FAILED,
    }
)
_STATE_FROM_PROTO: Mapping[int, RequestState] = MappingProxyType(
    {int(v): k for k, v in _STATE_TO_PROTO.items()}
)

_VERIFIER_TO_PROTO: Mapping[Verifier, fleet_pb2.ReceiptVerifier] = MappingProxyType(
    {
        Verifier.NODE: fleet_pb2.RECEIPT_VERIFIER_NODE,
        Verifier.SERVER: fleet_pb2.RECEIPT_VERIFIER_SERVER,
    }
)
_VERIFIER_FROM_PROTO: Mapping[int, Verifier] = MappingProxyType(
    {int(v): k for k, v in _VERIFIER_TO_PROTO.items()}
)

assert set(_METHOD_TO_PROTO) == set(ForgetMethod)
assert set(_STATE_TO_PROTO) == {*ForgetState, *PendingState}


# ---- enums -------------------------------------------------------------------------------


def method_to_proto(method: ForgetMethod | None) -> fleet_pb2.ForgetMethod:
    """None: the server's default (UNSPECIFIED)."""
    return fleet_pb2.FORGET_METHOD_UNSPECIFIED if method is None else _METHOD_TO_PROTO[method]


def optional_method_from_proto(value: int) -> ForgetMethod | None:
    """The method a request asks for; None: it asks for the server's default."""
    if value == fleet_pb2.FORGET_METHOD_UNSPECIFIED:
        return None
    return method_from_proto(value)


def method_from_proto(value: int) -> ForgetMethod:
    try:
        return _METHOD_FROM_PROTO[value]
    except KeyError:
        raise InvalidPayload(f"unknown forget method {value} on the wire") from None


def state_to_proto(state: RequestState) -> fleet_pb2.ForgetState:
    return _STATE_TO_PROTO[state]


def state_from_proto(value: int) -> RequestState:
    try:
        return _STATE_FROM_PROTO[value]
    except KeyError:
        raise InvalidPayload(f"unknown forget state {value} on the wire") from None


# ---- reports -----------------------------------------------------------------------------


def report_to_proto(report: ForgetReport) -> fleet_pb2.ForgetReport:
    msg = fleet_pb2.ForgetReport(request_id=report.request_id, forget_id=report.forget_id)
    match report.body:
        case StepReport() as step:
            target = msg.done if step.done else msg.progress
            target.gradient_evaluations = step.gradient_evaluations
            target.metrics.update(step.metrics)
            target.SetInParent()  # a step without metrics is still the body
        case EvidenceReport(evidence, sha):
            msg.evidence.CopyFrom(evidence_to_proto(evidence))
            msg.evidence_model_sha256 = bytes.fromhex(sha)
        case FailureReport(reason):
            msg.failed.reason = reason
            msg.failed.SetInParent()
    return msg


def report_from_proto(msg: fleet_pb2.ForgetReport) -> ForgetReport:
    if not msg.forget_id:
        raise InvalidPayload("forget_id is required")
    body: ReportBody
    match msg.WhichOneof("body"):
        case "progress" | "done" as which:
            step = getattr(msg, which)
            body = StepReport(which == "done", step.gradient_evaluations, dict(step.metrics))
        case "evidence":
            if len(msg.evidence_model_sha256) != 32:
                raise InvalidPayload("evidence must name the model it was measured on (SHA-256)")
            body = EvidenceReport(
                evidence_from_proto(msg.evidence), msg.evidence_model_sha256.hex()
            )
        case "failed":
            body = FailureReport(msg.failed.reason)
        case _:
            raise InvalidPayload("a forget report must hold progress, done, evidence or failed")
    return ForgetReport(msg.request_id, msg.forget_id, body)


def evidence_to_proto(evidence: Evidence) -> fleet_pb2.ForgetEvidence:
    named = {k: v for k, v in evidence.as_dict().items() if k not in evidence.extra}
    return fleet_pb2.ForgetEvidence(**named, extra=dict(evidence.extra))


def evidence_from_proto(msg: fleet_pb2.ForgetEvidence) -> Evidence:
    named = {
        f.name: getattr(msg, f.name)
        for f in msg.DESCRIPTOR.fields
        if f.name != "extra" and msg.HasField(f.name)
    }
    return Evidence(**named, extra=finite_metrics(dict(msg.extra), "evidence"))


# ---- receipts and status ------------------------------------------------------------------


def receipt_to_proto(r: Receipt) -> fleet_pb2.ForgetReceipt:
    return fleet_pb2.ForgetReceipt(
        forget_id=r.forget_id,
        node_id=r.node_id,
        method=method_to_proto(r.method),
        samples=r.samples,
        requested_unix_ms=r.requested_ms,
        completed_unix_ms=r.completed_ms,
        model_sha256_before=bytes.fromhex(r.model_sha256_before),
        model_sha256_after=bytes.fromhex(r.model_sha256_after),
        unlearning_rounds=r.unlearning_rounds,
        recovery_rounds=r.recovery_rounds,
        stopped_by=r.stopped_by,
        client_gradient_evaluations=r.client_gradient_evaluations,
        client_progress=dict(r.client_progress),
        evidence=evidence_to_proto(r.evidence),
        verified_by=_VERIFIER_TO_PROTO[r.verified_by],
        initiated_by=r.initiated_by,
        reference=r.reference,
        verdict=r.verdict,
    )


def receipt_from_proto(msg: fleet_pb2.ForgetReceipt) -> Receipt:
    try:
        verifier = _VERIFIER_FROM_PROTO[msg.verified_by]
    except KeyError:
        raise InvalidPayload(f"unknown receipt verifier {msg.verified_by} on the wire") from None
    return Receipt(
        forget_id=msg.forget_id,
        node_id=msg.node_id,
        method=method_from_proto(msg.method),
        samples=msg.samples,
        requested_ms=msg.requested_unix_ms,
        completed_ms=msg.completed_unix_ms,
        model_sha256_before=msg.model_sha256_before.hex(),
        model_sha256_after=msg.model_sha256_after.hex(),
        unlearning_rounds=msg.unlearning_rounds,
        recovery_rounds=msg.recovery_rounds,
        stopped_by=msg.stopped_by,
        client_gradient_evaluations=msg.client_gradient_evaluations,
        client_progress=dict(msg.client_progress),
        evidence=evidence_from_proto(msg.evidence),
        verified_by=verifier,
        initiated_by=msg.initiated_by,
        reference=msg.reference,
        verdict=msg.verdict,
    )


def status_to_proto(s: ForgetStatus) -> fleet_pb2.ForgetRequestInfo:
    msg = fleet_pb2.ForgetRequestInfo(
        forget_id=s.forget_id,
        node_id=s.node_id,
        forget_method=method_to_proto(s.method),
        forget_state=state_to_proto(s.state),
        reason=s.reason,
        created_unix_ms=s.created_ms,
        updated_unix_ms=s.updated_ms,
        num_samples=s.num_samples,
        initiated_by=s.initiated_by,
    )
    if s.receipt is not None:
        msg.receipt.CopyFrom(receipt_to_proto(s.receipt))
    return msg


def status_from_proto(msg: fleet_pb2.ForgetRequestInfo) -> ForgetStatus:
    return ForgetStatus(
        forget_id=msg.forget_id,
        node_id=msg.node_id,
        method=optional_method_from_proto(msg.forget_method),
        state=state_from_proto(msg.forget_state),
        reason=msg.reason,
        created_ms=msg.created_unix_ms,
        updated_ms=msg.updated_unix_ms,
        num_samples=msg.num_samples,
        initiated_by=msg.initiated_by,
        receipt=receipt_from_proto(msg.receipt) if msg.HasField("receipt") else None,
    )
