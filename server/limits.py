"""Per-node rate limits: a token bucket per (action, node), with the clock passed in."""

from __future__ import annotations

import threading
from collections.abc import Callable
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
