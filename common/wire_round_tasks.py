"""Tasks on the wire: the one codec between `common.round_tasks` and the Task proto, both ways."""

from __future__ import annotations

from forsaken.common import wire, wire_forget, wire_secagg
from forsaken.common.errors import InvalidPayload
from forsaken.common.round_tasks import (
    AnyTask,
    ForgetOrder,
    SecAggTask,
    StopTask,
    TrainTask,
    VerifyTask,
    WaitTask,
)
from forsaken.common.types import ModelSpec
from forsaken.v1 import fleet_pb2


def task_to_proto(task: AnyTask | None, model_spec: ModelSpec) -> fleet_pb2.Task:
    """A poll's answer; None (nothing to do yet) is a WAIT."""
    if task is None or isinstance(task, WaitTask):
        retry = 0.0 if task is None else task.retry_after_s
        return fleet_pb2.Task(kind=fleet_pb2.TASK_KIND_WAIT, retry_after_s=retry)
    if isinstance(task, StopTask):
        return fleet_pb2.Task(kind=fleet_pb2.TASK_KIND_STOP)
    model = wire.model_spec_to_proto(model_spec)
    if isinstance(task, VerifyTask):
        return fleet_pb2.Task(
            kind=fleet_pb2.TASK_KIND_VERIFY,
            task_id=f"verify.{task.forget_id}",
            round=task.round,
            model_sha256=bytes.fromhex(task.model_sha256),
            forget_id=task.forget_id,
            model=model,
        )
    out = fleet_pb2.Task(
        kind=fleet_pb2.TASK_KIND_SECAGG
        if isinstance(task, SecAggTask)
        else fleet_pb2.TASK_KIND_TRAIN,
        task_id=task.task_id,
        round=task.round,
        model_sha256=bytes.fromhex(task.model_sha256),
        train=wire.train_settings_to_proto(task.settings),
        deadline_unix_ms=task.deadline_ms,
        seed=task.seed,
        model=model,
        weight=task.weight,
        total_weight=task.total_weight,
    )
    if isinstance(task, SecAggTask):
        out.secagg.CopyFrom(wire_secagg.server_message_to_proto(task.message))
    if task.forget is not None:
        out.forget.CopyFrom(
            fleet_pb2.ForgetInstruction(
                forget_id=task.forget.forget_id,
                forget_method=wire_forget.method_to_proto(task.forget.method),
                sample_ids=list(task.forget.sample_ids),
            )
        )
    return out


def task_from_proto(msg: fleet_pb2.Task) -> AnyTask:
    """The domain task a PullTask reply stands for (one decoder for every client)."""
    if msg.kind == fleet_pb2.TASK_KIND_STOP:
        return StopTask()
    if msg.kind == fleet_pb2.TASK_KIND_VERIFY:
        return VerifyTask(msg.forget_id, msg.model_sha256.hex(), msg.round)
    if msg.kind not in (fleet_pb2.TASK_KIND_TRAIN, fleet_pb2.TASK_KIND_SECAGG):
        return WaitTask(msg.retry_after_s)
    if msg.weight < 0 or msg.total_weight < msg.weight:
        raise InvalidPayload("a task's weight must be >= 0 and at most the round's total weight")
    forget = None
    if msg.HasField("forget"):
        f = msg.forget
        method = wire_forget.method_from_proto(f.forget_method)
        forget = ForgetOrder(f.forget_id, method, tuple(f.sample_ids))
    sha, settings = msg.model_sha256.hex(), wire.train_settings_from_proto(msg.train)
    head = (msg.task_id, msg.round, sha, settings, msg.deadline_unix_ms, msg.seed)
    weight, total = int(msg.weight), int(msg.total_weight)
    if msg.kind == fleet_pb2.TASK_KIND_SECAGG:
        message = wire_secagg.server_message_from_proto(msg.secagg)
        return SecAggTask(*head, message, forget=forget, weight=weight, total_weight=total)
    return TrainTask(*head, forget=forget, weight=weight, total_weight=total)
