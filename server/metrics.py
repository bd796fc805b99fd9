"""The server's Prometheus metrics, through the official client library (`prometheus_client`),
and an HTTP endpoint at ``/metrics``.

Each server gets its own registry rather than the library's process-wide default one, so
several servers in one process (the tests start many) keep separate counts and never collide
on names. This module must stay importable by the server core: no grpc, torch or protobuf.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest, make_wsgi_app

from forsaken.common.errors import ConfigError
from forsaken.server.ledger_contract import ForgetState, RoundStatus

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
METRICS_PATH = "/metrics"

# Counters and histograms would also export a `*_created` timestamp series each. Dashboards
# here use rate() and increase(), which do not need them, and every series costs the
# operator's Prometheus storage, so the server exports the same set of series as before.
prometheus_client.disable_created_metrics()


class Registry:
    """The metrics one endpoint serves: a private `CollectorRegistry` and factories that
    register into it (a name registered twice raises ValueError)."""

    def __init__(self) -> None:
        self.collectors = CollectorRegistry(auto_describe=True)

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return Counter(name, help, labelnames, registry=self.collectors)

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return Gauge(name, help, labelnames, registry=self.collectors)

    def histogram(
        self, name: str, help: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> Histogram:
        return Histogram(name, help, labelnames, registry=self.collectors, buckets=buckets)

    def expose(self) -> str:
        """The Prometheus text exposition format (version 0.0.4) of every metric."""
        return generate_latest(self.collectors).decode()


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
    rounds_refused: Counter
    member_faults: Counter

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
            rounds_refused=r.counter(
                "forsaken_rounds_refused_total",
                "Round attempts whose aggregate was refused (over the norm bound, or validation "
                "collapsed); the previous model was kept.",
            ),
            member_faults=r.counter(
                "forsaken_member_faults_total",
                "Attributable member faults (e.g. a forged sample count, a lying share).",
            ),
        )
        for status in ROUND_STATUSES:
            metrics.rounds.labels(status.value)
        for state in FORGET_STATES:
            metrics.forget_requests.labels(state.value)
        return metrics

    def round_aborted(self, cause: str) -> None:
        """Why an attempt aborted, beyond the status counter: secure sessions, refusals."""
        if cause == "secagg":
            self.secagg_aborts.inc()
        elif cause == "refused":
            self.rounds_refused.inc()

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


class _WSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn, a reverse DNS lookup that can stall
        # start-up for seconds on hosts without DNS; the name only goes into the WSGI environ.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()


class _WSGIServerV6(_WSGIServer):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes arrive every few seconds; the default handler would write each to stderr.
        log.debug("metrics %s " + format, self.address_string(), *args)


WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def metrics_app(registry: Registry) -> WSGIApp:
    """The library's exposition app (content negotiation, gzip, ``name[]`` filters) at
    ``/metrics``, and 404 elsewhere, so a mistyped scrape path fails visibly."""
    serve = make_wsgi_app(registry.collectors)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found\n"]
        return serve(environ, start_response)

    return app


class MetricsServer:
    """Serves `registry` at ``/metrics`` (404 elsewhere) from a daemon thread."""

    def __init__(self, registry: Registry, address: str = "127.0.0.1:9100") -> None:
        host, port = parse_listen(address)
        cls = _WSGIServerV6 if ":" in host else _WSGIServer
        try:
            self._httpd = make_server(
                host, port, metrics_app(registry), server_class=cls, handler_class=_QuietHandler
            )
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
