"""``scp2fhir web``: Prometheus metrics, health checks and a status page, read from Redis.

    GET /metrics       Prometheus text format (counters and histograms of every
                       process, gauges of open studies, backlog, queues)
    GET /healthz       200 while this process runs
    GET /readyz        200 when Redis answers, else 503
    GET /status.json   the :mod:`scp.status` snapshot
    GET /              that snapshot as a page that refreshes itself

Binds 127.0.0.1 by default; bound elsewhere it requires HTTP basic auth (the same
credentials as the dashboard, checked at start by the settings).
"""

from __future__ import annotations

import base64
import hmac
import html
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from scp import keys, metrics
from scp.connections import RedisClients
from scp.settings import Settings
from scp.status import Snapshot, snapshot

logger = logging.getLogger(__name__)


class RedisCollector(Collector):
    """Turns the counters and histograms in Redis into Prometheus metric families."""

    def __init__(
        self, clients: RedisClients, quiet_seconds: float, destinations: Sequence[str] = ()
    ) -> None:
        self.clients = clients
        self.quiet_seconds = quiet_seconds
        self.destinations = tuple(destinations)

    def collect(self) -> Iterator[Any]:
        data = self.clients.data
        counters: dict[str, str] = data.hgetall(keys.METRICS_COUNTERS)  # type: ignore[assignment]
        families: dict[str, CounterMetricFamily] = {}
        for field, value in sorted(counters.items()):
            name, *pairs = field.split("|")
            labels = dict(pair.split("=", 1) for pair in pairs)
            if name not in families:
                families[name] = CounterMetricFamily(
                    f"scp2fhir_{name.removesuffix('_total')}",
                    metrics.COUNTERS.get(name, name),
                    labels=sorted(labels),
                )
            families[name].add_metric([labels[k] for k in sorted(labels)], float(value))
        yield from families.values()
        for name, bounds in metrics.BUCKETS.items():
            raw: dict[str, str] = data.hgetall(keys.metrics_histogram(name))  # type: ignore[assignment]
            if not raw:
                continue
            # Fields are "[label=value|...]le=<bound>" (and count, sum_us): one series each.
            series: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
            for field, value in raw.items():
                *pairs, last = field.split("|")
                label_set = tuple((k, v) for k, _, v in (pair.partition("=") for pair in pairs))
                series.setdefault(label_set, {})[last] = value
            names = sorted({k for label_set in series for k, _ in label_set})
            histogram = HistogramMetricFamily(
                f"scp2fhir_{name}", name.replace("_", " "), labels=names
            )
            for label_set, fields in sorted(series.items()):
                buckets = [(f"{b:g}", float(fields.get(f"le={b:g}", 0))) for b in bounds]
                buckets.append(("+Inf", float(fields.get("le=+Inf", 0))))
                given = dict(label_set)
                histogram.add_metric(
                    [given.get(k, "") for k in names],
                    buckets,
                    sum_value=float(fields.get("sum_us", 0)) / 1e6,
                )
            yield histogram
        snap = snapshot(
            data, self.clients.rq, self.quiet_seconds, last=0, destinations=self.destinations
        )
        yield _gauge(
            "open_studies", "Studies receiving instances (not yet quiet).", len(snap.open_studies)
        )
        yield _gauge("inbox_backlog", "Instance headers waiting to be folded.", snap.inbox_backlog)
        yield _gauge("dead_letters", "Inbox entries no worker could fold.", snap.dead_letters)
        queue = GaugeMetricFamily(
            "scp2fhir_queue_jobs", "RQ jobs by queue and state.", labels=["queue", "state"]
        )
        for q in snap.queues:
            for state in ("queued", "started", "scheduled", "failed"):
                queue.add_metric([q.name, state], float(getattr(q, state)))
        yield queue
        pending = GaugeMetricFamily(
            "scp2fhir_delivery_pending",
            "Studies whose newest output a destination does not have yet.",
            labels=["destination"],
        )
        dead = GaugeMetricFamily(
            "scp2fhir_delivery_dead_letters",
            "Studies a destination dead-lettered (retry-failed re-queues them).",
            labels=["destination"],
        )
        for destination in snap.destinations:
            pending.add_metric([destination.name], float(destination.pending))
            dead.add_metric([destination.name], float(destination.dead_lettered))
        yield pending
        yield dead


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"scp2fhir_{name}", text, value=value)


def make_server(
    settings: Settings, clients: RedisClients, port: int, destinations: Sequence[str] = ()
) -> ThreadingHTTPServer:
    registry = CollectorRegistry()
    registry.register(RedisCollector(clients, settings.quiet_seconds, destinations))
    credentials = None
    if settings.dashboard_username and settings.dashboard_password:
        credentials = (settings.dashboard_username, settings.dashboard_password)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if credentials and not _authorized(self.headers.get("Authorization"), credentials):
                self.send_response(HTTPStatus.UNAUTHORIZED)
                self.send_header("WWW-Authenticate", 'Basic realm="scp2fhir"')
                self.end_headers()
                return
            path = self.path.split("?", 1)[0]
            try:
                if path == "/metrics":
                    self._send(200, generate_latest(registry), "text/plain; version=0.0.4")
                elif path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif path == "/readyz":
                    ready = _redis_ok(clients.data)
                    self._send(
                        200 if ready else 503, b"ok\n" if ready else b"redis down\n", "text/plain"
                    )
                elif path == "/status.json":
                    snap = snapshot(
                        clients.data, clients.rq, settings.quiet_seconds, destinations=destinations
                    )
                    self._send(200, json.dumps(snap.as_json()).encode(), "application/json")
                elif path == "/":
                    snap = snapshot(
                        clients.data, clients.rq, settings.quiet_seconds, destinations=destinations
                    )
                    self._send(200, render_html(snap).encode(), "text/html; charset=utf-8")
                else:
                    self._send(404, b"not found\n", "text/plain")
            except redis.RedisError as exc:
                self._send(503, f"redis unavailable: {type(exc).__name__}\n".encode(), "text/plain")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            logger.debug("web %s", format % args)

    return ThreadingHTTPServer((settings.dashboard_bind, port), Handler)


def _authorized(header: str | None, credentials: tuple[str, str]) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return False
    return hmac.compare_digest(user, credentials[0]) and hmac.compare_digest(
        password, credentials[1]
    )


def _redis_ok(data: redis.Redis) -> bool:
    try:
        return bool(data.ping())
    except redis.RedisError:
        return False


def render_html(snap: Snapshot) -> str:
    rows = (
        "".join(
            f"<tr><td>{html.escape(s.study_uid)}</td><td>{s.series}</td><td>{s.instances}</td>"
            f"<td>{s.waiting_to_fold}</td><td>{s.seconds_until_quiet:.1f}s</td></tr>"
            for s in snap.open_studies
        )
        or '<tr><td colspan="5">none</td></tr>'
    )
    emitted = (
        "".join(
            f"<tr><td>{html.escape(e.study_uid)}</td>"
            f"<td>{(snap.now_ms - e.emitted_at_ms) / 1000:.0f}s ago</td></tr>"
            for e in snap.emitted
        )
        or '<tr><td colspan="2">none yet</td></tr>'
    )
    queues = "".join(
        f"<tr><td>{html.escape(q.name)}</td><td>{q.queued}</td><td>{q.started}</td>"
        f"<td>{q.scheduled}</td><td>{q.failed}</td></tr>"
        for q in snap.queues
    )
    return f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5"><title>scp2fhir status</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head><body>
<h1>scp2fhir</h1>
<p>Inbox backlog: {snap.inbox_backlog} &middot; dead letters: {snap.dead_letters}</p>
<h2>Open studies ({len(snap.open_studies)})</h2>
<table><tr><th>Study Instance UID</th><th>series</th><th>instances</th><th>to fold</th>
<th>quiet in</th></tr>{rows}</table>
<h2>Last emitted</h2><table><tr><th>Study Instance UID</th><th>when</th></tr>{emitted}</table>
<h2>Queues</h2><table><tr><th>queue</th><th>queued</th><th>started</th><th>scheduled</th>
<th>failed</th></tr>{queues}</table></body></html>"""


def serve(
    settings: Settings,
    clients: RedisClients,
    port: int,
    stop: threading.Event | None = None,
    destinations: Sequence[str] = (),
) -> None:
    server = make_server(settings, clients, port, destinations)
    thread = threading.Thread(target=server.serve_forever, name="web", daemon=True)
    thread.start()
    logger.info(
        "web on http://%s:%d (/metrics /healthz /readyz /status.json /)",
        settings.dashboard_bind,
        port,
    )
    try:
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        server.server_close()
