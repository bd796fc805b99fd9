"""Prometheus exposition of the server's metrics, in process and over HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from forsaken.server.ledger import RoundStatus
from forsaken.server.metrics import MetricsServer, Registry, ServerMetrics


def test_exposition_text_format() -> None:
    reg = Registry()
    c = reg.counter("demo_total", 'Things "done"\nso far.', ("kind",))
    c.labels(kind='a"b\\c').inc(2)
    g = reg.gauge("demo_gauge", "A level.")
    g.set(1.5)
    h = reg.histogram("demo_seconds", "Durations.", buckets=(0.1, 1.0))
    for v in (0.05, 0.5, 5.0):
        h.observe(v)
    text = reg.expose()
    assert '# HELP demo_total Things "done"\\nso far.' in text
    assert "# TYPE demo_total counter" in text
    assert 'demo_total{kind="a\\"b\\\\c"} 2' in text
    assert "demo_gauge 1.5" in text
    # Histogram buckets are cumulative and end with +Inf, count and sum.
    assert 'demo_seconds_bucket{le="0.1"} 1' in text
    assert 'demo_seconds_bucket{le="1"} 2' in text or 'demo_seconds_bucket{le="1.0"} 2' in text
    assert 'demo_seconds_bucket{le="+Inf"} 3' in text
    assert "demo_seconds_count 3" in text
    assert "demo_seconds_sum 5.55" in text


def test_server_metrics_over_http() -> None:
    metrics = ServerMetrics.create()
    metrics.round_finished(RoundStatus.COMPLETED, 0.25)
    metrics.round_finished(RoundStatus.ABORTED, 2.0)
    metrics.bytes_received.inc(1024)
    metrics.clients_connected.set_function(lambda: 7)
    with MetricsServer(metrics.registry, "127.0.0.1:0") as server:
        body = urllib.request.urlopen(server.url, timeout=5).read().decode()
        assert 'forsaken_rounds_total{status="completed"} 1' in body
        assert 'forsaken_rounds_total{status="aborted"} 1' in body
        assert "forsaken_round_aborts_total 1" in body
        assert "forsaken_clients_connected 7" in body
        assert "forsaken_bytes_received_total 1024" in body
        base = server.url.rsplit("/", 1)[0]
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/other", timeout=5)
        assert info.value.code == 404


def test_daemon_exports_forget_requests_by_state(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from forsaken.procs import free_port
    from forsaken.server.app import ServerConfig, ServerDaemon
    from forsaken.server.evaluation import SyntheticModel
    from forsaken.server.ledger import ClientRecord

    config = ServerConfig(
        listen=f"127.0.0.1:{free_port()}",
        state_dir=tmp_path,
        rounds=0,
        min_clients=2,
        metrics_listen="127.0.0.1:0",
        evaluate=False,
    )
    daemon = ServerDaemon(config, model=SyntheticModel(10))
    daemon.ledger.upsert_client(ClientRecord("a" * 32, b"k" * 32))
    daemon.coordinator.forget_request("a" * 32, "", "req", (), "forsaken", 0)
    daemon.start()
    try:
        assert daemon.metrics_server is not None
        body = urllib.request.urlopen(daemon.metrics_server.url, timeout=5).read().decode()
        assert 'forsaken_forget_requests{state="requested"} 1' in body
        assert 'forsaken_forget_requests{state="completed"} 0' in body
    finally:
        daemon.stop(grace_s=0.5)
