"""Per-node limits: a token bucket per (action, node) with the clock passed in, and quotas on
the long-running calls a node may hold open at once."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from forsaken.common.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Allows `burst` actions at once and `per_minute` on average for each key."""

    def __init__(
        self, action: str, per_minute: float, burst: int, clock: Callable[[], float]
    ) -> None:
        if per_minute <= 0 or burst < 1:
            raise ValueError("rate limits need per_minute > 0 and burst >= 1")
        self.action = action
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> None:
        """Take one token for `key` or raise RateLimited saying when to retry."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / self.rate
                raise RateLimited(
                    f"{self.action} rate limit reached for node {key}; retry in {wait:.0f}s"
                )
            bucket.tokens -= 1.0
            if len(self._buckets) > 100_000:  # bound memory under a flood of distinct keys
                full = [k for k, b in self._buckets.items() if b.tokens >= self.burst]
                for k in full:
                    del self._buckets[k]


class CallQuota:
    """Caps the long-running calls (long-polls and streams) in flight, per node and in total.

    Each such call holds one of the server's worker threads for its whole length, so without a
    cap one node could hold them all and starve everyone, Status and Join included. `total`
    stays below the thread count so short calls always find a thread. A node has at most one
    upload in flight: an honest client never sends two at once.
    """

    def __init__(self, per_node: int, total: int, uploads_per_node: int = 1) -> None:
        if per_node < 1 or total < 1 or uploads_per_node < 1:
            raise ValueError("call quotas must be at least 1")
        self.per_node = per_node
        self.total = total
        self.uploads_per_node = uploads_per_node
        self._by_node: dict[str, int] = {}
        self._uploads: dict[str, int] = {}
        self._in_flight = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, node_id: str, kind: str) -> Iterator[None]:
        """Count one `kind` call ("poll", "upload", "download") of `node_id` while it runs."""
        upload = kind == "upload"
        with self._lock:
            if self._in_flight >= self.total:
                raise RateLimited(
                    f"the server has {self._in_flight} long calls in flight, its limit; retry soon"
                )
            if self._by_node.get(node_id, 0) >= self.per_node:
                raise RateLimited(
                    f"node {node_id} already has {self.per_node} long calls in flight "
                    f"(polls, uploads, downloads); wait for one to end"
                )
            if upload and self._uploads.get(node_id, 0) >= self.uploads_per_node:
                raise RateLimited(f"node {node_id} already has an upload in flight")
            self._in_flight += 1
            self._by_node[node_id] = self._by_node.get(node_id, 0) + 1
            if upload:
                self._uploads[node_id] = self._uploads.get(node_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                _decrement(self._by_node, node_id)
                if upload:
                    _decrement(self._uploads, node_id)

    def in_flight(self, node_id: str | None = None) -> int:
        with self._lock:
            return self._in_flight if node_id is None else self._by_node.get(node_id, 0)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
