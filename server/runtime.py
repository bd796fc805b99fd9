"""Drives the transport-free coordinator from many RPC threads and one ticker, under one lock.

No gRPC here. The servicers hand a function of (coordinator, now) to `call`, which runs it
under the lock and wakes every long-poll afterwards, so a task reaches a waiting node as soon
as its round starts; there is no mirror of the coordinator's methods to keep in step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from forsaken.common.errors import Unavailable
from forsaken.common.round_tasks import AnyTask
from forsaken.server.coordinator import Coordinator
from forsaken.server.rounds import Event
from forsaken.server.sessions import SessionTable

log = logging.getLogger(__name__)

Clock = Callable[[], float]
T = TypeVar("T")


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

    def call(self, fn: Callable[[Coordinator, int], T], *, then_tick: bool = False) -> T:
        """Run `fn(coordinator, now_ms)` under the lock, then wake waiting long-polls.

        `then_tick`: tick at once afterwards, so a round or stage closes as soon as its last
        expected message arrived instead of at the next tick.
        """
        with self._lock:
            out = fn(self.coordinator, self.now_ms())
            self._lock.notify_all()
        if then_tick:
            self.tick()
        return out

    def read(self, fn: Callable[[Coordinator, int], T]) -> T:
        """Run a read-only `fn(coordinator, now_ms)` under the lock (no one is woken)."""
        with self._lock:
            return fn(self.coordinator, self.now_ms())

    def poll(self, node_id: str, num_samples: int, timeout_s: float) -> AnyTask | None:
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

    def leave(self, node_id: str) -> None:
        self.call(lambda c, _: c.registry.leave(node_id))
        self.sessions.close(node_id)
