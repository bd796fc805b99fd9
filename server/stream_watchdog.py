"""Server-side deadlines for streams that stop moving.

A gRPC stream handler blocks on the next chunk (an upload) or on flow control (a download)
with no deadline of its own, holding a worker thread for as long as the peer likes. The
watchdog gives each watched stream an idle deadline: every chunk moves it on, and a stream idle
for longer is cancelled from the watchdog's thread, which ends the handler's wait. One thread
watches every stream; a stream costs a dictionary entry, not a timer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from forsaken.common.errors import DeadlineExceeded

log = logging.getLogger(__name__)


class Cancellable(Protocol):
    def cancel(self) -> object: ...  # gRPC's returns a bool, which the watchdog ignores


@dataclass
class _Watch:
    what: str
    target: Cancellable
    last_ms: float
    cancelled: bool = False


class StreamWatchdog:
    def __init__(self, idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if idle_s <= 0:
            raise ValueError("the stream idle timeout must be > 0")
        self.idle_s = idle_s
        self.clock = clock
        self._watches: dict[int, _Watch] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="stream-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @contextmanager
    def watch(self, target: Cancellable, what: str) -> Iterator[Callable[[], None]]:
        """Watch `target` (a servicer context) while the block runs; yields `touch`, to be
        called whenever the stream moves. Raises `StreamStalled` if the watchdog cut it off."""
        with self._lock:
            key = self._next
            self._next += 1
            watch = _Watch(what, target, self.clock())
            self._watches[key] = watch

        def touch() -> None:
            watch.last_ms = self.clock()

        try:
            yield touch
        except Exception:
            if watch.cancelled:
                raise StreamStalled(self._reason(watch)) from None
            raise
        finally:
            with self._lock:
                self._watches.pop(key, None)
        if watch.cancelled:
            raise StreamStalled(self._reason(watch))

    def sweep(self) -> int:
        """Cancel every stream idle for longer than the timeout; how many were cancelled."""
        now = self.clock()
        with self._lock:
            stale = [
                w
                for w in self._watches.values()
                if not w.cancelled and now - w.last_ms > self.idle_s
            ]
            for w in stale:
                w.cancelled = True
        for w in stale:
            log.warning("%s", self._reason(w))
            w.target.cancel()
        return len(stale)

    def watched(self) -> int:
        with self._lock:
            return len(self._watches)

    def _reason(self, watch: _Watch) -> str:
        return f"{watch.what} stalled: nothing moved for {self.idle_s:g}s; the server cut it off"

    def _run(self) -> None:
        period = min(1.0, self.idle_s / 4)
        while not self._stop.wait(period):
            self.sweep()


class StreamStalled(DeadlineExceeded):
    """A watched stream was cancelled for being idle too long."""
