"""Prometheus exposition of the server's metrics, in process and over HTTP."""

from __future__ import annotations

import gzip
import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from forsaken.server.ledger import ForgetState, RoundStatus
from forsaken.server.metrics import MetricsServer, Registry, ServerMetrics

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "forsaken-dashboard.json"

# What /metrics carried when the exposition format was still written by hand: every family
# with its type, and every sample name with its label names. Dashboards and alerts depend on
# these, so moving to prometheus_client must not add, drop or rename any.
FAMILIES = {
    "forsaken_rounds_total": "counter",
    "forsaken_round_duration_seconds": "histogram",
    "forsaken_clients_connected": "gauge",
    "forsaken_bytes_received_total": "counter",
    "forsaken_bytes_sent_total": "counter",
    "forsaken_round_aborts_total": "counter",
    "forsaken_forget_requests": "gauge",
    "forsaken_secagg_aborts_total": "counter",
}
SAMPLES = {
    ("forsaken_rounds_total", ("status",)),
    ("forsaken_round_duration_seconds_bucket", ("le",)),
    ("forsaken_round_duration_seconds_sum", ()),
    ("forsaken_round_duration_seconds_count", ()),
    ("forsaken_clients_connected", ()),
    ("forsaken_bytes_received_total", ()),
    ("forsaken_bytes_sent_total", ()),
    ("forsaken_round_aborts_total", ()),
    ("forsaken_forget_requests", ("state",)),
    ("forsaken_secagg_aborts_total", ()),
}
# Added since, on purpose, for the defences against untrusted members.
ADDED = {
    "forsaken_rounds_refused_total": "counter",
    "forsaken_member_faults_total": "counter",
}
FAMILIES |= ADDED
SAMPLES |= {(name, ()) for name in ADDED}
BUCKETS = ("0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0", "120.0", "300.0", "600.0")

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """The text format's TYPE lines and samples, read line by line (not by the library that
    wrote them, so a change in how it names things cannot hide from this test)."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            labels = tuple(_LABEL.findall(match.group(2) or ""))
            samples[(match.group(1), labels)] = float(match.group(3))
    return types, samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(labels.items()))]


def test_names_types_and_labels_are_unchanged() -> None:
    types, samples = parse(ServerMetrics.create().registry.expose())
    assert types == FAMILIES
    assert {(name, tuple(k for k, _ in labels)) for name, labels in samples} == SAMPLES
    statuses = {dict(lb)["status"] for n, lb in samples if n == "forsaken_rounds_total"}
    assert statuses == {s.value for s in RoundStatus}
    states = {dict(lb)["state"] for n, lb in samples if n == "forsaken_forget_requests"}
    assert states == {s.value for s in ForgetState}
    les = [dict(lb)["le"] for n, lb in samples if n == "forsaken_round_duration_seconds_bucket"]
    assert les == [*BUCKETS, "1800.0", "+Inf"]
    # No `*_created` series: the same series as before, and no extra storage per counter.
    assert not [n for n, _ in samples if n.endswith("_created")]


def test_recorded_values_read_back() -> None:
    metrics = ServerMetrics.create()
    metrics.round_finished(RoundStatus.COMPLETED, 0.25)
    metrics.round_finished(RoundStatus.COMPLETED, 3.0)
    metrics.round_finished(RoundStatus.ABORTED, 2.0)
    metrics.bytes_received.inc(1024)
    metrics.bytes_sent.inc(10)
    live = [4]
    metrics.clients_connected.set_function(lambda: live[0])
    metrics.set_forget_counts({"completed": 2, "requested": 1})
    _, s = parse(metrics.registry.expose())
    assert value(s, "forsaken_rounds_total", status="completed") == 2
    assert value(s, "forsaken_rounds_total", status="aborted") == 1
    assert value(s, "forsaken_round_aborts_total") == 1
    assert value(s, "forsaken_round_duration_seconds_count") == 3
    assert value(s, "forsaken_round_duration_seconds_sum") == pytest.approx(5.25)
    # Buckets are cumulative: 0.25 <= 0.5; 2.0 <= 2.5; 3.0 <= 5.0.
    assert value(s, "forsaken_round_duration_seconds_bucket", le="0.5") == 1
    assert value(s, "forsaken_round_duration_seconds_bucket", le="2.5") == 2
    assert value(s, "forsaken_round_duration_seconds_bucket", le="5.0") == 3
    assert value(s, "forsaken_round_duration_seconds_bucket", le="+Inf") == 3
    assert value(s, "forsaken_bytes_received_total") == 1024
    assert value(s, "forsaken_bytes_sent_total") == 10
    assert value(s, "forsaken_clients_connected") == 4
    assert value(s, "forsaken_forget_requests", state="completed") == 2
    assert value(s, "forsaken_forget_requests", state="requested") == 1
    assert value(s, "forsaken_forget_requests", state="failed") == 0
    # The gauge is read at scrape time, and a request that left a state leaves a 0 behind.
    live[0] = 1
    metrics.set_forget_counts({"completed": 3})
    _, s = parse(metrics.registry.expose())
    assert value(s, "forsaken_clients_connected") == 1
    assert value(s, "forsaken_forget_requests", state="requested") == 0


def test_each_server_has_its_own_registry() -> None:
    a, b = ServerMetrics.create(), ServerMetrics.create()
    a.round_finished(RoundStatus.COMPLETED, 1.0)
    _, sa = parse(a.registry.expose())
    _, sb = parse(b.registry.expose())
    assert value(sa, "forsaken_rounds_total", status="completed") == 1
    assert value(sb, "forsaken_rounds_total", status="completed") == 0
    with pytest.raises(ValueError):
        ServerMetrics.create(a.registry)  # the same names twice in one registry


def test_counter_refuses_to_go_down() -> None:
    metrics = ServerMetrics.create()
    with pytest.raises(ValueError):
        metrics.bytes_sent.inc(-1)
    with pytest.raises(ValueError):
        metrics.rounds.inc()  # labelled: needs .labels(status)


def test_label_values_are_escaped() -> None:
    reg = Registry()
    reg.counter("demo_total", "Things.", ("kind",)).labels('a"b\\c\nd').inc(2)
    (family,) = text_string_to_metric_families(reg.expose())
    (sample,) = [s for s in family.samples if s.name == "demo_total"]
    assert sample.labels == {"kind": 'a"b\\c\nd'} and sample.value == 2


def test_server_metrics_over_http() -> None:
    metrics = ServerMetrics.create()
    metrics.round_finished(RoundStatus.COMPLETED, 0.25)
    metrics.clients_connected.set_function(lambda: 7)
    with MetricsServer(metrics.registry, "127.0.0.1:0") as server:
        with urllib.request.urlopen(server.url, timeout=5) as reply:
            assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            _, s = parse(reply.read().decode())
        assert value(s, "forsaken_rounds_total", status="completed") == 1
        assert value(s, "forsaken_clients_connected") == 7
        # What the library adds over the old hand-written endpoint: OpenMetrics on request,
        # gzip, and a filter by metric name.
        request = urllib.request.Request(
            server.url + "?name[]=forsaken_clients_connected",
            headers={"Accept": "application/openmetrics-text", "Accept-Encoding": "gzip"},
        )
        with urllib.request.urlopen(request, timeout=5) as reply:
            assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
            body = gzip.decompress(reply.read()).decode()
        assert "forsaken_clients_connected 7" in body and "forsaken_rounds" not in body
        assert body.rstrip().endswith("# EOF")
        base = server.url.rsplit("/", 1)[0]
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(base + "/other", timeout=5)
        assert info.value.code == 404


def test_metrics_address_errors_are_clear() -> None:
    from forsaken.common.errors import ConfigError

    with pytest.raises(ConfigError, match="not host:port"):
        MetricsServer(Registry(), "9100")
    with (
        MetricsServer(Registry(), "127.0.0.1:0") as taken,
        pytest.raises(ConfigError, match="cannot serve metrics"),
    ):
        MetricsServer(Registry(), f"127.0.0.1:{taken.port}")


def test_daemon_exports_forget_requests_by_state(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from forsaken.launch import free_port
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
    daemon.coordinator.forgets.request("a" * 32, "", "req", (), "forsaken", 0)
    daemon.start()
    try:
        assert daemon.metrics_server is not None
        body = urllib.request.urlopen(daemon.metrics_server.url, timeout=5).read().decode()
        types, s = parse(body)
        assert types == FAMILIES
        assert value(s, "forsaken_forget_requests", state="requested") == 1
        assert value(s, "forsaken_forget_requests", state="completed") == 0
    finally:
        daemon.stop(grace_s=0.5)


# --- the Grafana dashboard ----------------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every target of every panel."""
    board = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["expr"]) for p in board["panels"] if p["type"] != "row" for t in p["targets"]
    ]


def test_dashboard_queries_only_exported_series() -> None:
    exported = {name for name, _ in SAMPLES}
    queries = dashboard_queries()
    assert queries
    used: set[str] = set()
    for title, expr in queries:
        names = set(re.findall(r"\bforsaken_[a-z_]+\b", expr))
        assert names, f"panel {title!r} queries no forsaken metric: {expr}"
        assert names <= exported, f"panel {title!r} queries unknown series {names - exported}"
        used |= names
    # Rounds, durations, clients, bytes, aborts and forget requests all have a panel.
    for family in FAMILIES:
        assert any(n == family or n.startswith(family + "_") for n in used), family


def test_dashboard_is_importable() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["title"] and board["uid"] and board["schemaVersion"] >= 36
    # A datasource input, so Grafana asks which Prometheus to use when importing.
    assert [i["pluginId"] for i in board["__inputs"]] == ["prometheus"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
