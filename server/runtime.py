"""Thread-safe wrapper that drives the coordinator from many RPC threads and one ticker.

No gRPC here: the servicers call these methods. Long-polls wait on a condition that every
state change notifies, so a task reaches a waiting node as soon as its round starts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from forsaken.common.errors import Unavailable
from forsaken.common.tensors import TensorSpec
from forsaken.server.coordinator import (
    Coordinator,
    Event,
    StatusView,
    Submission,
    SubmitOutcome,
    Task,
)
from forsaken.server.ledger import ForgetRecord
from forsaken.server.sessions import SessionTable

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def wall_ms(clock: Clock = time.time) -> int:
    return int(clock() * 1000)


class ServerRuntime:
    def __init__(
        self,
        coordinator: Coordinator,
        sessions: SessionTable,
        *,
        clock: Clock = time.time,
        tick_interval_s: float = 0.1,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.sessions = sessions
        self.clock = clock
        self.tick_interval_s = tick_interval_s
        self.on_event = on_event
        self.started = clock()
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def now_ms(self) -> int:
        return wall_ms(self.clock)

    # ---- lifecycle --------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._tick_loop, name="coordinator-tick", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _tick_loop(self) -> None:
        while not self._stopping.wait(self.tick_interval_s):
            self.tick()

    def tick(self) -> list[Event]:
        with self._lock:
            before = self.coordinator.progress_key()
            events = self.coordinator.tick(self.now_ms())
            if events or self.coordinator.progress_key() != before:
                self._lock.notify_all()
        for event in events:
            if self.on_event is not None:
                self.on_event(event)
        return events

    # ---- calls from the RPC edge ------------------------------------------------------

    def join(
        self, node_id: str, public_key: bytes, num_samples: int, max_clients: int = 1_000_000
    ) -> None:
        with self._lock:
            self.coordinator.join(node_id, public_key, num_samples, self.now_ms(), max_clients)
            self._lock.notify_all()

    def poll(self, node_id: str, num_samples: int, timeout_s: float) -> Task | None:
        """Wait up to `timeout_s` for a task; None means poll again."""
        deadline = self.clock() + timeout_s
        with self._lock:
            while True:
                if self._stopping.is_set():
                    raise Unavailable("server is shutting down")
                task = self.coordinator.poll(node_id, num_samples, self.now_ms())
                remaining = deadline - self.clock()
                if task is not None or remaining <= 0:
                    return task
                self._lock.wait(timeout=min(remaining, 1.0))

    def submit(self, node_id: str, submission: Submission) -> SubmitOutcome:
        with self._lock:
            outcome = self.coordinator.submit(node_id, submission, self.now_ms())
        # Close the round at once when this was the last expected update.
        self.tick()
        return outcome

    def admit_upload(
        self,
        node_id: str,
        round_: int,
        task_id: str,
        request_id: str,
        tensors: tuple[TensorSpec, ...],
    ) -> bool:
        with self._lock:
            return self.coordinator.admit_upload(node_id, round_, task_id, request_id, tensors)

    def secagg_message(
        self, node_id: str, round_: int, task_id: str, request_id: str, message: object
    ) -> SubmitOutcome:
        with self._lock:
            outcome = self.coordinator.secagg_message(
                node_id, round_, task_id, request_id, message, self.now_ms()
            )
        self.tick()  # close the stage at once when this was the last expected message
        return outcome

    def forget_request(
        self,
        caller: str,
        node_id: str,
        request_id: str,
        sample_ids: tuple[int, ...],
        method: str,
        admit: Callable[[], None] | None = None,
    ) -> tuple[ForgetRecord, bool]:
        with self._lock:
            out = self.coordinator.forget_request(
                caller, node_id, request_id, sample_ids, method, self.now_ms(), admit
            )
            self._lock.notify_all()
        return out

    def operator_forget(
        self, operator: str, node_id: str, request_id: str, method: str, reason: str
    ) -> tuple[ForgetRecord, bool]:
        with self._lock:
            out = self.coordinator.operator_forget(
                operator, node_id, request_id, method, reason, self.now_ms()
            )
            self._lock.notify_all()
        return out

    def forget_status(self, caller: str, forget_id: str) -> ForgetRecord:
        with self._lock:
            return self.coordinator.forget_status(caller, forget_id)

    def forget_report(
        self,
        caller: str,
        forget_id: str,
        kind: str,
        metrics: dict[str, float],
        reason: str,
        model_sha256: str,
    ) -> ForgetRecord:
        with self._lock:
            record = self.coordinator.forget_report(
                caller, forget_id, kind, metrics, reason, model_sha256, self.now_ms()
            )
            self._lock.notify_all()
        return record

    def revoke(self, node_id: str, reason: str) -> bool:
        """Revoke a node; True if it was revoked already. Its session stays so that its next
        call is told PERMISSION_DENIED (revoked) rather than asked to join again."""
        with self._lock:
            already = self.coordinator.revoke(node_id, reason)
            self._lock.notify_all()
        return already

    def check_admitted(self, node_id: str) -> None:
        with self._lock:
            self.coordinator.check_admitted(node_id)

    def release(self, node_id: str) -> bool:
        with self._lock:
            released = self.coordinator.release(node_id)
            self._lock.notify_all()
        return released

    def leave(self, node_id: str) -> None:
        with self._lock:
            self.coordinator.leave(node_id)
        self.sessions.close(node_id)

    def live_nodes(self) -> list[str]:
        with self._lock:
            return self.coordinator.live_nodes(self.now_ms())

    def contacts(self, node_ids: list[str]) -> dict[str, tuple[int, int | None]]:
        """Each node's last call and declared samples, for those heard from since start."""
        with self._lock:
            found = {n: self.coordinator.contact(n) for n in node_ids}
        return {n: c for n, c in found.items() if c is not None}

    def model_payload(self, sha256: str) -> bytes:
        with self._lock:
            return self.coordinator.model_payload(sha256)

    def status(self) -> StatusView:
        with self._lock:
            return self.coordinator.status(self.now_ms())

    def locked(self) -> threading.Condition:
        """For read-only views that need several coordinator calls to be consistent."""
        return self._lock
