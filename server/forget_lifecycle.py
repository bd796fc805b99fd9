"""The forget-request lifecycle as a pure function from (case, event) to (case, actions).

requested -> unlearning -> recovering -> verifying -> completed, or failed with a reason from
any stage before completed (README, "Forgetting"). The same chain serves every method; what
differs per method is asked of its strategy (forget_strategies.py).

`transition` touches neither the ledger nor the network: the caller (ForgetManager) loads the
case from the ledger, applies the actions in order (each `SetStage`, `Fail` or `WriteReceipt`
is one durable write, so a restart resumes between any two of them) and only then tells
anyone. An event that does not belong raises and leaves the case unchanged: `StaleRequest`
for a report in the wrong stage, `InvalidPayload` for incomplete evidence or a start that
lacks what its method needs. Events that mean nothing in the current stage (a round while
the request is still queued, anything after it ended) give no actions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import assert_never

from forsaken.common.errors import InvalidPayload, StaleRequest
from forsaken.common.forget_receipt import Receipt
from forsaken.common.forget_reports import EvidenceReport, FailureReport, ReportBody, StepReport
from forsaken.server.forget_receipts import node_receipt, server_receipt
from forsaken.server.forget_state import ForgetCase, ForgetPolicy, ForgetProgress
from forsaken.server.forget_strategies import STRATEGIES, StartFacts
from forsaken.server.ledger import ForgetState

_S = ForgetState
# The stages a request passes through, in order; FAILED is reachable from any before COMPLETED.
_CHAIN = (_S.REQUESTED, _S.UNLEARNING, _S.RECOVERING, _S.VERIFYING, _S.COMPLETED)


# ---- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Begin:
    """The server may start the oldest queued request (no round is open)."""

    facts: StartFacts
    now_ms: int


@dataclass(frozen=True, slots=True)
class RoundCompleted:
    participants: frozenset[str]  # the nodes whose updates the round aggregated
    now_ms: int
    model_sha256: str = ""  # the round's model
    test_acc: float | None = None  # its validation accuracy, when the server measured one


@dataclass(frozen=True, slots=True)
class Report:
    """The forgetting node reports on its own request."""

    body: ReportBody
    now_ms: int


@dataclass(frozen=True, slots=True)
class LivenessCheck:
    """A periodic look at whether the node a request waits for is still there."""

    now_ms: int
    last_contact_ms: int | None  # the node's last call of any kind; None: none seen
    server_started_ms: int  # contact before this start is counted as made at it


ForgetEvent = Begin | RoundCompleted | Report | LivenessCheck


# ---- actions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetStage:
    """Record the stage (perhaps unchanged) and the progress."""

    stage: ForgetState
    progress: ForgetProgress


@dataclass(frozen=True, slots=True)
class Fail:
    reason: str
    progress: ForgetProgress


@dataclass(frozen=True, slots=True)
class WriteReceipt:
    """Complete the request with this receipt."""

    receipt: Receipt


@dataclass(frozen=True, slots=True)
class RollBack:
    """The federation continues from this model (already checkpointed) instead."""

    model_sha256: str


ForgetAction = SetStage | Fail | WriteReceipt | RollBack
Step = tuple[ForgetCase, tuple[ForgetAction, ...]]


# ---- the transition ----------------------------------------------------------------------


def transition(case: ForgetCase, event: ForgetEvent, policy: ForgetPolicy) -> Step:
    """The case after `event`, and what to record, in order."""
    if case.stage.terminal:
        return case, ()
    match event:
        case Begin():
            return _begin(case, event)
        case RoundCompleted():
            return _round_completed(case, event, policy)
        case Report():
            return _report(case, event)
        case LivenessCheck():
            return _check_liveness(case, event, policy)
        case _:
            assert_never(event)


def _begin(case: ForgetCase, ev: Begin) -> Step:
    if case.stage is not _S.REQUESTED:
        return case, ()
    facts = ev.facts
    fresh = ForgetProgress(model_before=facts.model_sha256, started_round=facts.completed_round)
    start = STRATEGIES[case.method].start(fresh, facts)
    actions: list[ForgetAction] = [SetStage(stage, start.progress) for stage in start.stages]
    if start.rollback is not None:
        actions.append(RollBack(start.rollback))
    return replace(case, stage=start.stages[-1], progress=start.progress), tuple(actions)


def _round_completed(case: ForgetCase, ev: RoundCompleted, policy: ForgetPolicy) -> Step:
    strategy = STRATEGIES[case.method]
    actions: tuple[ForgetAction, ...] = ()
    if case.stage is _S.UNLEARNING:
        took_part = case.node_id in ev.participants
        out = strategy.unlearning_round(case.progress, took_part, policy)
        if out.stage is _S.FAILED:
            return _fail(case, f"node {case.node_id} {out.reason}", out.progress)
        target = out.stage
        if target is _S.RECOVERING and policy.recovery_rounds == 0:
            target = _S.VERIFYING
        case, actions = _move(case, target, out.progress, ev.now_ms)
    elif case.stage is _S.RECOVERING:
        progress = replace(case.progress, recovery_rounds=case.progress.recovery_rounds + 1)
        done = progress.recovery_rounds >= policy.recovery_rounds
        case, actions = _move(case, _S.VERIFYING if done else _S.RECOVERING, progress, ev.now_ms)
    if case.by_operator and case.stage is _S.VERIFYING:
        # Nobody can ask the node: the server's own work is the evidence.
        shows = strategy.server_shows(case.progress)
        receipt = server_receipt(case, shows, ev.test_acc, ev.model_sha256, ev.now_ms)
        return replace(case, stage=_S.COMPLETED), (*actions, WriteReceipt(receipt))
    return case, actions


def _report(case: ForgetCase, ev: Report) -> Step:
    p = case.progress
    match ev.body:
        case FailureReport(reason):
            return _fail(case, reason or "client failed", p)
        case EvidenceReport(evidence, model_sha256):
            if case.stage is not _S.VERIFYING:
                raise StaleRequest(f"forget {case.forget_id} is {case.stage}, not verifying")
            missing = evidence.missing()
            if missing:
                raise InvalidPayload(f"evidence lacks {missing}")
            receipt = node_receipt(case, evidence, model_sha256, ev.now_ms)
            return replace(case, stage=_S.COMPLETED), (WriteReceipt(receipt),)
        case StepReport(done, gradient_evaluations, metrics):
            if case.stage is not _S.UNLEARNING:
                raise StaleRequest(f"forget {case.forget_id} is {case.stage}, not unlearning")
            # Each report covers one step; the receipt's cost is the sum over all of them. The
            # stored last step keeps its cost beside its metrics, as it always has.
            last = {**metrics, "gradient_evaluations": float(gradient_evaluations)}
            progress = replace(
                p,
                client=MappingProxyType(last),
                client_gradient_evaluations=p.client_gradient_evaluations + gradient_evaluations,
                client_done=p.client_done or done,
            )
            return replace(case, progress=progress), (SetStage(case.stage, progress),)
        case _:
            assert_never(ev.body)


def _check_liveness(case: ForgetCase, ev: LivenessCheck, policy: ForgetPolicy) -> Step:
    """Silence is measured from the node's last real contact with the server, not from the
    request's last write, which every round rewrites. A node that keeps calling but never
    reports its evidence fails once verification has waited as long."""
    if case.by_operator or case.stage not in (_S.UNLEARNING, _S.VERIFYING):
        return case, ()  # an operator's request needs nothing from the node
    if case.method.server_side and case.stage is _S.UNLEARNING:
        return case, ()  # the node is not needed until verification
    started = ev.server_started_ms
    contact = max(started if ev.last_contact_ms is None else ev.last_contact_ms, started)
    silent_s = (ev.now_ms - contact) / 1000
    if silent_s > policy.node_timeout_s:
        reason = f"node {case.node_id} silent for {silent_s:.0f}s during {case.stage}"
        return _fail(case, reason, case.progress)
    if case.stage is _S.VERIFYING:
        since = case.progress.verifying_since_ms
        waited_s = (ev.now_ms - max(ev.now_ms if since is None else since, started)) / 1000
        if waited_s > policy.node_timeout_s:
            reason = f"node {case.node_id} reported no evidence in {waited_s:.0f}s"
            return _fail(case, reason, case.progress)
    return case, ()


def _fail(case: ForgetCase, reason: str, progress: ForgetProgress) -> Step:
    return replace(case, stage=_S.FAILED, progress=progress), (Fail(reason, progress),)


def _move(case: ForgetCase, target: ForgetState, progress: ForgetProgress, now_ms: int) -> Step:
    """Record `progress` at `target`, writing each stage passed on the way (the ledger allows
    only single steps); entering verification starts its clock."""
    if target is case.stage:
        return replace(case, progress=progress), (SetStage(target, progress),)
    passed = _CHAIN[_CHAIN.index(case.stage) + 1 : _CHAIN.index(target) + 1]
    actions: list[ForgetAction] = []
    for stage in passed:
        if stage is _S.VERIFYING:
            progress = replace(progress, verifying_since_ms=now_ms)
        actions.append(SetStage(stage, progress))
    return replace(case, stage=target, progress=progress), tuple(actions)
