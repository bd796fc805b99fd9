"""Token-bucket rate limits, driven with a fake clock."""

from __future__ import annotations

import pytest

from forsaken.common.errors import RateLimited
from forsaken.server.limits import RateLimiter


def test_burst_then_refill_per_key() -> None:
    now = [0.0]
    limiter = RateLimiter("join", per_minute=6, burst=2, clock=lambda: now[0])
    limiter.check("a")
    limiter.check("a")
    with pytest.raises(RateLimited, match="join rate limit reached for node a; retry in 10s"):
        limiter.check("a")
    limiter.check("b")  # another node has its own bucket
    now[0] = 10.0  # 6 per minute: one token back after 10 s
    limiter.check("a")
    with pytest.raises(RateLimited):
        limiter.check("a")


def test_refill_is_capped_at_burst() -> None:
    now = [0.0]
    limiter = RateLimiter("forget", per_minute=60, burst=3, clock=lambda: now[0])
    now[0] = 3600.0
    for _ in range(3):
        limiter.check("x")
    with pytest.raises(RateLimited):
        limiter.check("x")
