"""Token-bucket rate limits, call quotas and stream deadlines, driven with fake clocks."""

from __future__ import annotations

import threading

import pytest

from forsaken.common.errors import RateLimited
from forsaken.server.limits import CallQuota, RateLimiter
from forsaken.server.stream_watchdog import StreamStalled, StreamWatchdog


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


def refused(quota: CallQuota, node: str, kind: str, match: str) -> None:
    with pytest.raises(RateLimited, match=match), quota.hold(node, kind):
        pass


def test_call_quota_caps_each_node_one_upload_and_the_total() -> None:
    quota = CallQuota(per_node=3, total=4)
    with quota.hold("a", "poll"), quota.hold("a", "upload"):
        refused(quota, "a", "upload", "node a already has an upload in flight")
        with quota.hold("a", "download"):
            refused(quota, "a", "poll", "node a already has 3 long calls in flight")
            with quota.hold("b", "poll"):  # the fourth call overall
                refused(quota, "c", "poll", "4 long calls in flight, its limit")
    # Everything was given back, including after the refusals.
    assert quota.in_flight() == 0 and quota.in_flight("a") == 0
    with quota.hold("a", "upload"):
        assert quota.in_flight("a") == 1


class FakeContext:
    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()


def test_watchdog_cancels_a_stream_that_stops_moving_and_spares_one_that_moves() -> None:
    now = [0.0]
    dog = StreamWatchdog(idle_s=5, clock=lambda: now[0])
    stalled, moving = FakeContext(), FakeContext()
    with (
        pytest.raises(StreamStalled, match="upload of node a stalled: nothing moved for 5s"),
        dog.watch(stalled, "upload of node a"),
        dog.watch(moving, "download") as touch,
    ):
        for _ in range(3):
            now[0] += 3
            touch()
            dog.sweep()
        assert stalled.cancelled.is_set() and not moving.cancelled.is_set()
        raise RuntimeError("the cancelled call's iterator fails")  # as grpc's does
    assert dog.watched() == 0


def test_watchdog_thread_cuts_off_a_real_wait() -> None:
    dog = StreamWatchdog(idle_s=0.2)
    dog.start()
    try:
        target = FakeContext()
        with pytest.raises(StreamStalled), dog.watch(target, "upload"):
            assert target.cancelled.wait(5), "the watchdog never fired"
    finally:
        dog.stop()
