"""The client daemon loop: join, long-poll for tasks, train, push; reconnect with backoff."""

from __future__ import annotations

import hashlib
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from forsaken.client.forgetting import ForgetExecutor
from forsaken.client.observers import ClientObserver, ForgetStepReport, Observers, RoundReport
from forsaken.client.secure import SecureSessions
from forsaken.client.state import ClientState, LocalForget, StateFile
from forsaken.client.transport import FleetConnection
from forsaken.common import errors, failpoints
from forsaken.common.diagnosis import Diagnosis, Problem
from forsaken.common.exitcodes import ExitCode
from forsaken.common.forget_methods import ForgetMethod
from forsaken.common.forget_receipt import Evidence
from forsaken.common.forget_reports import EvidenceReport, FailureReport, StepReport
from forsaken.common.forget_states import ForgetState, PendingState, RequestState
from forsaken.common.partition import ClientData
from forsaken.common.round_tasks import SecAggTask, StopTask, TrainTask, VerifyTask, WaitTask
from forsaken.common.secagg.client_states import ClientDone
from forsaken.common.secagg.setup import SetupInfo
from forsaken.common.simulation import client_round_seed
from forsaken.common.task import LoadedTask
from forsaken.common.tensors import flatten, from_bytes, specs_of, to_bytes
from forsaken.common.training import load_vector
from forsaken.common.unlearning.engine import RoundWeights

log = logging.getLogger(__name__)

# States in which the node follows its request's progress with the server.
FOLLOWED_STATES: frozenset[RequestState] = frozenset(
    {PendingState.SUBMITTING, ForgetState.REQUESTED, ForgetState.UNLEARNING}
)
# After the federation finishes, keep the Owner API up this long past the end of a forget
# request, so an owner waiting on it (`forsaken forget --wait`) sees how it ended.
OWNER_LINGER_S = 10.0


@dataclass
class Backoff:
    """Exponential backoff with full jitter, capped; reset after any success."""

    initial_s: float = 0.5
    max_s: float = 30.0
    attempt: int = 0

    def next_delay(self, rng: random.Random) -> float:
        ceiling = min(self.max_s, self.initial_s * (2**self.attempt))
        self.attempt += 1
        return rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0


def _connect_failure(exc: errors.Unavailable) -> bool:
    """Whether gRPC failed to reach the server at all (so a probe may say why), rather than
    the server answering UNAVAILABLE itself (shutting down, not ready)."""
    text = str(exc).lower()
    return any(
        marker in text
        for marker in ("failed to connect", "socket closed", "handshake", "ssl", "connection")
    )


class ClientDaemon:
    def __init__(
        self,
        *,
        connection: FleetConnection,
        data: ClientData,
        task: LoadedTask,
        dataset_name: str,
        input_shape: tuple[int, ...],
        num_classes: int,
        state_file: StateFile,
        state: ClientState,
        partition_index: int,
        seed: int,
        max_backoff_s: float = 30.0,
        max_payload_bytes: int = 512 << 20,
        diagnose: Callable[[], Diagnosis | None] | None = None,
        tls_failure_limit: int = 5,
        observers: Sequence[ClientObserver] = (),
    ) -> None:
        self.conn = connection
        self.data = data
        self.task = task
        self.dataset_name = dataset_name
        self.input_shape = input_shape
        self.num_classes = num_classes
        self.state_file = state_file
        self.state = state
        self.partition_index = partition_index
        self.seed = seed
        self.backoff = Backoff(max_s=max_backoff_s)
        self.max_payload_bytes = max_payload_bytes
        self.stop_event = threading.Event()
        self._forget_ended_at: float | None = None  # when a forget request last ended
        self.connected = False
        self.diagnose = diagnose
        self.tls_failure_limit = tls_failure_limit  # 0: never give up
        self._failures: tuple[Problem | None, int] = (None, 0)  # the same problem, n times
        self._rng = random.Random()
        self._model: torch.nn.Module | None = None
        self._model_sha: str | None = None
        self._lock = threading.Lock()
        self.secure = SecureSessions(connection, connection.identity.signing_seed)
        self.forgetter = ForgetExecutor(Path(state_file.path).parent, data, seed)
        self._pending_contribution: tuple[int, np.ndarray, int] | None = None
        self.observers = Observers(observers)
        self._pending_report: RoundReport | None = None  # a secure round's, until it ends

    # ---- data in use ------------------------------------------------------------------

    def training_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The samples this node may train on now: its partition minus anything forgotten."""
        with self._lock:
            excluded = set(self.state.excluded_ids)
            forgot_all = self.state.forgot_all
        if forgot_all:
            return self.data.x_train[:0], self.data.y_train[:0]
        if not excluded:
            return self.data.x_train, self.data.y_train
        keep = np.array([i not in excluded for i in self.data.ids_train], dtype=bool)
        return self.data.x_train[keep], self.data.y_train[keep]

    def num_samples(self) -> int:
        return int(self.training_arrays()[1].shape[0])

    # ---- main loop --------------------------------------------------------------------

    def run(self) -> int:
        while not self.stop_event.is_set():
            try:
                if self.conn.token is None:
                    self._join()
                self._submit_forgets()
                task = self.conn.pull(self.num_samples())
                self.connected = True
                self.backoff.reset()
                self._failures = (None, 0)
                if isinstance(task, StopTask):
                    if self._linger_for_owner():
                        continue
                    log.info("server says the federation has finished; exiting")
                    return 0
                if isinstance(task, WaitTask):
                    if task.retry_after_s > 0:
                        self.stop_event.wait(task.retry_after_s)
                    continue
                if isinstance(task, VerifyTask):
                    self._verify(task)
                elif isinstance(task, SecAggTask):
                    self._secure_stage(task)
                else:
                    self._train_and_push(task)
            except (errors.ModelMismatch, errors.TaskFailed) as exc:
                # Retrying cannot help: this node's code or model must change. Exit with it.
                log.error("%s", exc)
                raise
            except errors.NotAuthenticated as exc:
                log.info("session no longer valid (%s); joining again", exc)
                self.conn.token = None
                self._sleep_backoff()
            except errors.PermissionDenied as exc:
                if "TLS certificate" in str(exc):
                    log.error(
                        "the server refused this node's certificate: %s. Give this node's "
                        "own certificate as --tls-cert (`forsaken certs issue --ca CA_DIR "
                        "--state-dir STATE_DIR`)",
                        exc,
                    )
                    return ExitCode.CERTIFICATE
                log.error("the server refused this node: %s", exc)
                return ExitCode.REFUSED
            except (errors.StaleRequest, errors.DuplicateRequest) as exc:
                log.info("task no longer current: %s", exc)
            except (errors.ProtocolAborted, errors.WrongStage, errors.InvalidPayload) as exc:
                log.warning("secure round step refused: %s", exc)
            except errors.Unavailable as exc:
                self.connected = False
                if self.stop_event.is_set():
                    break
                if self._unreachable(exc):
                    return ExitCode.CERTIFICATE
                self._sleep_backoff()
            except errors.ForsakenError as exc:
                self.connected = False
                log.warning("request failed: %s", exc)
                self._sleep_backoff()
        return 0

    def stop(self) -> None:
        self.stop_event.set()

    def _unreachable(self, exc: errors.Unavailable) -> bool:
        """Say why the server cannot be reached; True once the same certificate problem has
        come back `tls_failure_limit` times in a row (no retry can fix those)."""
        found = self.diagnose() if self.diagnose is not None and _connect_failure(exc) else None
        if found is None or not found.certificate:
            self._failures = (None, 0)
            log.info("server unavailable (%s)", found or exc)
            return False
        problem, count = self._failures
        count = count + 1 if problem == found.problem else 1
        self._failures = (found.problem, count)
        limit = self.tls_failure_limit
        log.warning(
            "cannot connect to the server: %s [%s, %d in a row%s]",
            found,
            found.problem,
            count,
            f" of at most {limit}" if limit else "",
        )
        if limit and count >= limit:
            log.error(
                "giving up after %d identical certificate failures (exit code 3); "
                "--tls-failure-limit 0 keeps retrying",
                count,
            )
            return True
        return False

    def _sleep_backoff(self) -> None:
        delay = self.backoff.next_delay(self._rng)
        log.info("retrying in %.1fs", delay)
        self.stop_event.wait(delay)

    def _join(self) -> None:
        node_id = self.conn.join(
            self.num_samples(),
            self.dataset_name,
            self.input_shape,
            self.num_classes,
            self.task.structure,
            self.task.digest,
        )
        spec = self.conn.model_spec
        assert spec is not None
        if tuple(spec.input_shape) != tuple(self.input_shape):
            raise errors.ConfigError(
                f"server trains on inputs of shape {spec.input_shape}, this node holds "
                f"{self.input_shape}"
            )
        if self._model is None:
            self._model = self.task.build_model(0)
        log.info("joined as node %s (%d training samples)", node_id, self.num_samples())

    # ---- one training task ------------------------------------------------------------

    def _ensure_model(self, sha: str) -> torch.nn.Module:
        assert self._model is not None
        if self._model_sha != sha:
            specs, payload = self.conn.fetch_model(sha, self.max_payload_bytes)
            expected = specs_of(self._model.state_dict())
            if tuple(specs) != expected:
                raise errors.InvalidPayload("server model does not match this node's architecture")
            load_vector(self._model, from_bytes(payload, specs))
            self._model_sha = sha
        return self._model

    # ---- forgetting ---------------------------------------------------------------------

    def request_forget(
        self, request_id: str, sample_ids: tuple[int, ...], method: ForgetMethod | None
    ) -> LocalForget:
        """Owner API: stop using the data now (durably), then ask the server to unlearn it."""
        ids = tuple(sorted(set(sample_ids)))
        known = set(int(i) for i in self.data.ids_train)
        unknown = [i for i in ids if i not in known]
        if unknown:
            shown = ", ".join(map(str, unknown[:5]))
            raise errors.InvalidPayload(
                f"{len(unknown)} sample ids are not in this node's training data (e.g. {shown})"
            )
        with self._lock:
            for existing in self.state.forgets:
                if existing.request_id == request_id:
                    return existing  # an owner's retry: same request, same answer
            record = LocalForget(request_id, ids, method)
            self.state = replace(
                self.state,
                excluded_ids=tuple(sorted(set(self.state.excluded_ids) | set(ids))),
                forgot_all=self.state.forgot_all or not ids,
                forgets=(*self.state.forgets, record),
            )
            # Written before anything else happens: a crash now still never trains on it.
            self.state_file.save(self.state)
        log.info(
            "forget request %s: %s samples excluded from training from now on",
            request_id,
            len(ids) or "all",
        )
        if self.conn.token is not None:
            try:
                self._submit_forgets()
            except errors.ForsakenError as exc:
                log.info("will retry submitting forget request %s: %s", request_id, exc)
        return self.local_forget(request_id)

    def local_forget(self, request_id: str) -> LocalForget:
        with self._lock:
            for f in self.state.forgets:
                if f.request_id == request_id:
                    return f
        raise errors.UnknownEntity(f"no forget request {request_id}")

    def _linger_for_owner(self) -> bool:
        """At the federation's end: learn how open forget requests ended, and stay a little
        while after one ended so its owner can read the outcome. True: do not exit yet."""
        with self._lock:
            stale = [f for f in self.state.forgets if f.forget_id and not f.state.terminal]
        for f in stale:
            self._update_forget(f.request_id, state=self.conn.forget_status(f.forget_id).state)
        ended = self._forget_ended_at
        if ended is None or time.monotonic() - ended > OWNER_LINGER_S:
            return False
        self.stop_event.wait(1.0)
        return True

    def _update_forget(
        self, request_id: str, *, state: RequestState, forget_id: str | None = None
    ) -> None:
        if state.terminal:
            self._forget_ended_at = time.monotonic()
        with self._lock:
            forgets = tuple(
                replace(f, state=state, forget_id=f.forget_id if forget_id is None else forget_id)
                if f.request_id == request_id
                else f
                for f in self.state.forgets
            )
            self.state = replace(self.state, forgets=forgets)
            self.state_file.save(self.state)

    def _update_forget_by_id(self, forget_id: str, state: RequestState) -> None:
        with self._lock:
            request_ids = [f.request_id for f in self.state.forgets if f.forget_id == forget_id]
        for request_id in request_ids:
            self._update_forget(request_id, state=state)

    def _submit_forgets(self) -> None:
        """Send forget requests the server has not acknowledged yet (idempotent by id), and
        follow the state of those still open."""
        with self._lock:
            unsent = [f for f in self.state.forgets if not f.forget_id]
            open_ = [f for f in self.state.forgets if f.forget_id and f.state in FOLLOWED_STATES]
        for f in unsent:
            forget_id, state = self.conn.forget_me(f.request_id, f.sample_ids, f.method)
            self._update_forget(f.request_id, forget_id=forget_id, state=state)
            log.info("forget request %s accepted by the server as %s", f.request_id, forget_id)
        for f in open_:
            info = self.conn.forget_status(f.forget_id)
            if info.state != f.state:
                self._update_forget(f.request_id, state=info.state)

    def _forget_step(
        self, task: TrainTask | SecAggTask
    ) -> tuple[np.ndarray, int, dict[str, float]]:
        order = task.forget
        assert order is not None
        model = self._ensure_model(task.model_sha256)
        vector = flatten(model.state_dict())
        started = time.perf_counter()
        step = self.forgetter.step(
            order.forget_id,
            order.method,
            self.task.spec,  # this node's own model (the Join check made it the server's)
            order.sample_ids,
            vector,
            task.round,
            RoundWeights(task.weight, task.total_weight),
        )
        seconds = time.perf_counter() - started
        metrics = {**step.metrics, "gradient_evaluations": float(step.gradient_evaluations)}
        # Report before uploading, so the server knows the verdict when this round closes.
        # The wire carries finite numbers only: a metric that diverged is logged, not sent.
        finite = {k: v for k, v in step.metrics.items() if math.isfinite(v)}
        if len(finite) < len(step.metrics):
            log.warning("forget step metrics not finite, not reported: %s", step.metrics)
        report = StepReport(step.done, int(step.gradient_evaluations), finite)
        info = self.conn.report_forget(order.forget_id, report)
        self._update_forget_by_id(order.forget_id, info.state)
        self.observers.on_forget_step(
            ForgetStepReport(
                forget_id=order.forget_id,
                method=order.method,
                round=task.round,
                num_samples=int(step.num_samples),
                gradient_evaluations=int(step.gradient_evaluations),
                done=bool(step.done),
                seconds=seconds,
                metrics=dict(step.metrics),
            )
        )
        failpoints.hit("client-after-forget-step")
        log.info(
            "round %d: forget step for %s (%s, done=%s)",
            task.round,
            order.forget_id,
            order.method,
            step.done,
        )
        return step.update.astype(np.float32), int(step.num_samples), metrics

    def _verify(self, task: VerifyTask) -> None:
        model = self._ensure_model(task.model_sha256)
        with self._lock:
            mine = [f for f in self.state.forgets if f.forget_id == task.forget_id]
        if not mine:
            failure = FailureReport("this node has no record of the request")
            self.conn.report_forget(task.forget_id, failure)
            return
        evidence = self.forgetter.evidence(model, mine[0].sample_ids, task.forget_id)
        # What could not be measured (a NaN) is left out; the server says if it was required.
        measured = {k: v for k, v in evidence.items() if math.isfinite(v)}
        report = EvidenceReport(Evidence.of(measured), task.model_sha256)
        info = self.conn.report_forget(task.forget_id, report)
        self._update_forget(mine[0].request_id, state=info.state)
        if info.state is ForgetState.COMPLETED:
            # The server's record says which method ran (the owner may have left it to it).
            reversed_ = info.method is ForgetMethod.FORSAKEN
            self.forgetter.discard(task.forget_id, reversed_contribution=reversed_)
        log.info(
            "forget %s verified on model %s: %s",
            task.forget_id,
            task.model_sha256[:12],
            {k: round(v, 4) for k, v in evidence.items()},
        )

    # ---- training -----------------------------------------------------------------------

    def _train(self, task: TrainTask | SecAggTask) -> tuple[np.ndarray, int, dict[str, float]]:
        """Local training on the task's model: (update, samples used, metrics); or, in an
        unlearning round, the forget engine's update in its place."""
        if task.forget is not None:
            return self._forget_step(task)
        model = self._ensure_model(task.model_sha256)
        x, y = self.training_arrays()
        if len(y) == 0:
            # Everything is excluded (forgotten) but the server has not stopped sampling this
            # node yet: take part with an empty update of weight 0 rather than stall the round.
            log.info("round %d: no training data left; sending an empty update", task.round)
            return flatten(model.state_dict()) * 0.0, 0, {}
        started = time.perf_counter()
        seed = client_round_seed(self.seed, self.partition_index, task.round)
        result = self.task.train(model, x, y, task.settings, seed)
        # train_local leaves the model trained; fetch the global weights again next time.
        self._model_sha = None
        metrics = {"train_loss": float(result.mean_loss), "train_s": time.perf_counter() - started}
        if len(self.data.y_held_out):
            held = self.task.evaluate(model, self.data.x_held_out, self.data.y_held_out)
            metrics["held_out_acc"] = float(held.accuracy)
        log.info(
            "round %d: trained on %d samples (loss %.4f)",
            task.round,
            result.num_samples,
            result.mean_loss,
        )
        return result.delta.astype(np.float32), result.num_samples, metrics

    def _train_and_push(self, task: TrainTask) -> None:
        update, num_samples, metrics = self._train(task)
        request_id = self.state.pushed_request_ids.get(task.task_id) or uuid.uuid4().hex
        self._remember_push(task.task_id, request_id)
        assert self._model is not None
        reply = self.conn.push(
            request_id=request_id,
            task=task,
            num_samples=num_samples,
            metrics=metrics,
            tensors=specs_of(self._model.state_dict()),
            payload=to_bytes(update),
        )
        self._count_round(task.round)
        if task.forget is None and num_samples > 0:
            self.forgetter.record_contribution(task.round, update, num_samples)
        self.observers.on_round(_round_report(task, num_samples, metrics, secure=False))
        if reply.duplicate:
            log.info("round %d: the server already had this update", task.round)

    def _secure_stage(self, task: SecAggTask) -> None:
        if isinstance(task.message, SetupInfo):
            update, num_samples, metrics = self._train(task)
            self._pending_report = _round_report(task, num_samples, metrics, secure=True)
            # Counted as this node's contribution once the round's protocol finishes with it.
            self._pending_contribution = (
                (task.round, update, num_samples) if task.forget is None else None
            )
            seed = client_round_seed(self.seed, self.partition_index, task.round)
            rounding = hashlib.sha256(b"forsaken/secagg/rounding/v1" + seed.to_bytes(8, "big"))
            self.secure.start(task, update, num_samples, rounding.digest())
            return
        self.secure.handle(task)
        if isinstance(self.secure.current_state(), ClientDone):
            self._count_round(task.round)
            pending, self._pending_contribution = self._pending_contribution, None
            if pending is not None and pending[0] == task.round and pending[2] > 0:
                self.forgetter.record_contribution(*pending)
            report, self._pending_report = self._pending_report, None
            if report is not None and report.round == task.round:
                self.observers.on_round(report)

    def _count_round(self, round_: int) -> None:
        with self._lock:
            self.state = self.state.with_round(round_)
            self.state_file.save(self.state)

    def _remember_push(self, task_id: str, request_id: str) -> None:
        # Persisted before sending, so a retry after a crash reuses the id and cannot double-apply.
        with self._lock:
            ids = dict(self.state.pushed_request_ids)
            ids[task_id] = request_id
            if len(ids) > 64:
                ids = dict(list(ids.items())[-64:])
            self.state = replace(self.state, pushed_request_ids=ids)
            self.state_file.save(self.state)


def _round_report(
    task: TrainTask | SecAggTask, num_samples: int, metrics: dict[str, float], *, secure: bool
) -> RoundReport:
    forget_id = task.forget.forget_id if task.forget is not None else ""
    return RoundReport(task.round, num_samples, secure, forget_id, dict(metrics))
