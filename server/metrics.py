"""Prometheus metrics without new dependencies: a small thread-safe registry, the text
exposition format (version 0.0.4), and a stdlib HTTP endpoint at ``/metrics``.

Counters, gauges and fixed-bucket histograms, each optionally labelled. Output is
deterministic (metrics in registration order, series sorted by label values) so it can be
compared with golden text. This module must stay importable by the server core: no grpc,
torch or protobuf here.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import re
import socket
import socketserver
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar, Generic, TypeVar
from urllib.parse import urlsplit

from forsaken.common.errors import ConfigError
from forsaken.server.ledger_contract import ForgetState, RoundStatus

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_PATH = "/metrics"

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def format_value(value: float) -> str:
    """A sample value as Prometheus parses it: integers without a fraction, +Inf/-Inf/NaN."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


class _Series:
    """One labelled time series; its parent metric's lock guards its state."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock


class CounterSeries(_Series):
    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self._value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        with self._lock:
            self._value += amount

    @property
    def value(self) -> float:
        with self._lock:
            return self._value


class GaugeSeries(_Series):
    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self._value = 0.0
        self._function: Callable[[], float] | None = None

    def set(self, value: float) -> None:
        with self._lock:
            self._value = float(value)
            self._function = None

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self._value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.inc(-amount)

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the value from `function` at each scrape (e.g. the live session count)."""
        with self._lock:
            self._function = function

    @property
    def value(self) -> float:
        with self._lock:
            function, value = self._function, self._value
        # Called outside the lock: the callback may take locks of its own.
        return float(function()) if function is not None else value


class HistogramSeries(_Series):
    def __init__(self, lock: threading.Lock, bounds: tuple[float, ...]) -> None:
        super().__init__(lock)
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # per bucket, last is (bounds[-1], +Inf)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        # Bucket i counts values <= bounds[i]; bisect_left puts a value equal to a bound in it.
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            self._counts[index] += 1
            self._sum += value

    def snapshot(self) -> tuple[list[int], float]:
        """Cumulative bucket counts (ending with +Inf, the total count) and the sum."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, running = [], 0
        for c in counts:
            running += c
            cumulative.append(running)
        return cumulative, total


S = TypeVar("S", bound=_Series)


class Metric(ABC, Generic[S]):
    """A metric family: a name, help text, label names and one series per label values."""

    type_name: ClassVar[str]

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_RE.fullmatch(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for {name}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], S] = {}
        if not self.labelnames:
            self._series[()] = self._new_series()

    @abstractmethod
    def _new_series(self) -> S: ...

    def labels(self, *values: str, **by_name: str) -> S:
        """The series for these label values (positional, or by name), created on first use."""
        if by_name:
            if values or set(by_name) != set(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            values = tuple(by_name[n] for n in self.labelnames)
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = self._new_series()
        return series

    def _only(self) -> S:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}; use .labels(...)")
        return self._series[()]

    def _items(self) -> list[tuple[tuple[str, ...], S]]:
        with self._lock:
            return sorted(self._series.items())

    def _label_text(self, values: tuple[str, ...], extra: tuple[tuple[str, str], ...] = ()) -> str:
        pairs = [*zip(self.labelnames, values, strict=True), *extra]
        if not pairs:
            return ""
        return "{" + ",".join(f'{k}="{escape_label_value(v)}"' for k, v in pairs) + "}"

    @abstractmethod
    def samples(self) -> Iterator[str]:
        """The sample lines of this family, without the HELP and TYPE lines."""

    def expose(self) -> str:
        head = f"# HELP {self.name} {escape_help(self.help)}\n# TYPE {self.name} {self.type_name}\n"
        return head + "".join(line + "\n" for line in self.samples())


class Counter(Metric[CounterSeries]):
    type_name = "counter"

    def _new_series(self) -> CounterSeries:
        return CounterSeries(self._lock)

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def samples(self) -> Iterator[str]:
        for values, series in self._items():
            yield f"{self.name}{self._label_text(values)} {format_value(series.value)}"


class Gauge(Metric[GaugeSeries]):
    type_name = "gauge"

    def _new_series(self) -> GaugeSeries:
        return GaugeSeries(self._lock)

    def set(self, value: float) -> None:
        self._only().set(value)

    def inc(self, amount: float = 1.0) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1.0) -> None:
        self._only().dec(amount)

    def set_function(self, function: Callable[[], float]) -> None:
        self._only().set_function(function)

    def samples(self) -> Iterator[str]:
        for values, series in self._items():
            yield f"{self.name}{self._label_text(values)} {format_value(series.value)}"


class Histogram(Metric[HistogramSeries]):
    type_name = "histogram"

    def __init__(
        self, name: str, help: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> None:
        # +Inf is implicit (always the last bucket), so a caller may include it or not.
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if any(math.isnan(b) for b in bounds):
            raise ValueError(f"{name}: NaN is not a bucket bound")
        if not bounds or any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError(f"{name}: buckets must be non-empty and strictly increasing")
        self.bounds = bounds
        super().__init__(name, help, labelnames)

    def _new_series(self) -> HistogramSeries:
        return HistogramSeries(self._lock, self.bounds)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def samples(self) -> Iterator[str]:
        les = [*(repr(b) for b in self.bounds), "+Inf"]
        for values, series in self._items():
            cumulative, total = series.snapshot()
            for le, count in zip(les, cumulative, strict=True):
                labels = self._label_text(values, (("le", le),))
                yield f"{self.name}_bucket{labels} {count}"
            yield f"{self.name}_sum{self._label_text(values)} {format_value(total)}"
            yield f"{self.name}_count{self._label_text(values)} {cumulative[-1]}"


class Registry:
    """The metrics one endpoint serves, in registration order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, Metric[_Series]] = {}

    def register(self, metric: Metric[S]) -> Metric[S]:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric  # type: ignore[assignment]
        return metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self.register(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self.register(metric)
        return metric

    def histogram(
        self, name: str, help: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> Histogram:
        metric = Histogram(name, help, buckets, labelnames)
        self.register(metric)
        return metric

    def expose(self) -> str:
        with self._lock:
            metrics = list(self._metrics.values())
        return "".join(m.expose() for m in metrics)


# --- the server's metrics ---------------------------------------------------------------------

# The label values come from the ledger's enums so the two cannot drift apart.
ROUND_STATUSES = tuple(RoundStatus)
FORGET_STATES = tuple(ForgetState)
ROUND_DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


@dataclass(frozen=True)
class ServerMetrics:
    """Every metric the server exports. Known label values start at 0, so a dashboard sees
    the series (and `rate()` works) before the first event of each kind."""

    registry: Registry
    rounds: Counter
    round_duration: Histogram
    clients_connected: Gauge
    bytes_received: Counter
    bytes_sent: Counter
    round_aborts: Counter
    forget_requests: Gauge
    secagg_aborts: Counter

    @classmethod
    def create(cls, registry: Registry | None = None) -> ServerMetrics:
        r = registry or Registry()
        metrics = cls(
            registry=r,
            rounds=r.counter(
                "forsaken_rounds_total", "Round attempts that ended, by outcome.", ["status"]
            ),
            round_duration=r.histogram(
                "forsaken_round_duration_seconds",
                "Wall time of round attempts, from start to completion or abort.",
                ROUND_DURATION_BUCKETS,
            ),
            clients_connected=r.gauge(
                "forsaken_clients_connected", "Client daemons with a live session."
            ),
            bytes_received=r.counter(
                "forsaken_bytes_received_total", "Payload bytes received from clients."
            ),
            bytes_sent=r.counter("forsaken_bytes_sent_total", "Payload bytes sent to clients."),
            round_aborts=r.counter(
                "forsaken_round_aborts_total",
                "Round attempts aborted (too few updates by the deadline, a secure-aggregation "
                'failure, shutdown); equals forsaken_rounds_total{status="aborted"}.',
            ),
            forget_requests=r.gauge(
                "forsaken_forget_requests", "Forget requests in the ledger, by state.", ["state"]
            ),
            secagg_aborts=r.counter(
                "forsaken_secagg_aborts_total",
                "Secure-aggregation sessions aborted (for example, fewer than t survivors).",
            ),
        )
        for status in ROUND_STATUSES:
            metrics.rounds.labels(status.value)
        for state in FORGET_STATES:
            metrics.forget_requests.labels(state.value)
        return metrics

    def round_finished(self, status: RoundStatus, duration_s: float) -> None:
        """Record one round attempt (a ledger `RoundRecord`'s status and duration); keeps the
        outcome counter, the abort counter and the duration histogram consistent."""
        status = RoundStatus(status)
        self.rounds.labels(status.value).inc()
        if status is RoundStatus.ABORTED:
            self.round_aborts.inc()
        self.round_duration.observe(duration_s)

    def set_forget_counts(self, counts: Mapping[str, int]) -> None:
        """Set the per-state gauge from a ledger count; states absent from `counts` are 0."""
        for state in {*(s.value for s in FORGET_STATES), *map(str, counts)}:
            self.forget_requests.labels(state).set(counts.get(state, 0))


# --- HTTP endpoint ----------------------------------------------------------------------------


def parse_listen(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` to a bind pair; an empty host binds every interface."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"metrics address {address!r} is not host:port")
    return host.strip("[]"), int(port)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn, a reverse DNS lookup that can stall
        # start-up for seconds on hosts without DNS; the name is only used in logs.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _HTTPServerV6(_HTTPServer):
    address_family = socket.AF_INET6


class MetricsServer:
    """Serves `registry` at ``/metrics`` (404 elsewhere) from a daemon thread."""

    def __init__(self, registry: Registry, address: str = "127.0.0.1:9100") -> None:
        host, port = parse_listen(address)
        handler = _handler_for(registry)
        cls = _HTTPServerV6 if ":" in host else _HTTPServer
        try:
            self._httpd = cls((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {address}: {exc.strerror or exc}") from None
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="metrics-http", daemon=True
        )

    @property
    def url(self) -> str:
        host = self.host or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}{METRICS_PATH}"

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics on %s", self.url)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()

    def __enter__(self) -> MetricsServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def serve_metrics(registry: Registry, address: str) -> MetricsServer:
    """Start serving `registry` on `address`; call `.stop()` on shutdown."""
    return MetricsServer(registry, address).start()


def _handler_for(registry: Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "forsaken-metrics"

        def do_GET(self) -> None:
            self._respond(send_body=True)

        def do_HEAD(self) -> None:
            self._respond(send_body=False)

        def _respond(self, send_body: bool) -> None:
            if urlsplit(self.path).path == METRICS_PATH:
                status, ctype, body = 200, CONTENT_TYPE, registry.expose().encode()
            else:
                status, ctype, body = 404, "text/plain; charset=utf-8", b"not found\n"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if send_body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            # Scrapes arrive every few seconds; the default handler would write each to stderr.
            log.debug("metrics %s " + format, self.address_string(), *args)

    return Handler
