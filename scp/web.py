"""``scp2fhir web``: Prometheus metrics, health checks and a status page, read from Redis.

    GET /metrics       Prometheus text format (counters and histograms of every
                       process, gauges of open studies, backlog, queues)
    GET /healthz       200 while this process runs
    GET /readyz        200 when Redis answers, else 503
    GET /status.json   the :mod:`scp.status` snapshot and the last hour, per minute
    GET /              both as a page that refreshes itself (``?refresh=N`` seconds, 0 for
                       never): counts, charts of the last
                       hour (SVG drawn here, nothing loaded from elsewhere), the open and
                       the last emitted studies with their destinations' outcome

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
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from scp import charts, keys, metrics
from scp.access import REJECTION_REASONS
from scp.connections import RedisClients
from scp.status import (
    DELIVERY_STATES,
    EmittedStudy,
    Minute,
    Snapshot,
    history,
    reconcile_line,
    snapshot,
)
from scp.up.settings import UpSettings

logger = logging.getLogger(__name__)


class RedisCollector(Collector):
    """Turns the counters and histograms in Redis into Prometheus metric families.

    A scrape never fails because of what is stored: a field this version cannot read
    (garbage, a newer version's) is skipped. With Redis unreachable it still answers,
    with ``scp2fhir_redis_up 0``.
    """

    def __init__(
        self, clients: RedisClients, quiet_seconds: float, destinations: Sequence[str] = ()
    ) -> None:
        self.clients = clients
        self.quiet_seconds = quiet_seconds
        self.destinations = tuple(destinations)

    def collect(self) -> Iterator[Any]:
        up = 1.0
        for part in (self._counters, self._histograms, self._gauges):
            try:
                families: list[Any] = part() if up else []
            except redis.RedisError as exc:
                logger.warning("metrics: Redis unavailable (%s)", type(exc).__name__)
                families, up = [], 0.0
            except Exception as exc:  # something stored that this version cannot read
                logger.error("metrics: %s skipped: %s", part.__name__, type(exc).__name__)
                families = []
            yield from families
        yield _gauge("redis_up", "1 while Redis answers this process, else 0.", up)

    def _counters(self) -> list[CounterMetricFamily]:
        # Read undecoded: a field that is not UTF-8 must not fail the scrape.
        stored: dict[bytes, bytes] = self.clients.rq.hgetall(keys.METRICS_COUNTERS)  # type: ignore[assignment]
        values: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in metrics.COUNTERS}
        for raw_field, raw_value in stored.items():
            decoded = metrics.decode_field(raw_field.decode("utf-8", "replace"))
            if decoded is None or decoded[0] not in metrics.COUNTERS:
                continue
            name, labels = decoded
            names = metrics.COUNTERS[name][1]
            if set(labels) != set(names):
                continue
            try:
                value = float(int(raw_value))
            except ValueError:
                continue
            key = tuple(labels[label] for label in names)
            values[name][key] = values[name].get(key, 0.0) + value
        for reason in REJECTION_REASONS:  # every reason, counted or not: alerts need a 0
            values["association_rejections_total"].setdefault((reason,), 0.0)
        families = []
        for name, (text, names) in metrics.COUNTERS.items():
            family = CounterMetricFamily(
                f"scp2fhir_{name.removesuffix('_total')}", text, labels=list(names)
            )
            if not names:
                values[name].setdefault((), 0.0)
            for key, value in sorted(values[name].items()):
                family.add_metric(list(key), value)
            families.append(family)
        return families

    def _histograms(self) -> list[HistogramMetricFamily]:
        families = []
        for name, bounds in metrics.BUCKETS.items():
            stored: dict[bytes, bytes] = self.clients.rq.hgetall(keys.metrics_histogram(name))  # type: ignore[assignment]
            raw = {
                k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                for k, v in stored.items()
            }
            # Fields are "[label=value|...]le=<bound>" (and count, sum_us): one series per
            # label set (label values are names scp2fhir checked, e.g. destinations').
            series: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
            for field, value in raw.items():
                *pairs, last = field.split("|")
                label_set = tuple((k, v) for k, _, v in (pair.partition("=") for pair in pairs))
                series.setdefault(label_set, {})[last] = value
            names = sorted({k for label_set in series for k, _ in label_set})
            histogram = HistogramMetricFamily(
                f"scp2fhir_{name}", metrics.HISTOGRAMS[name], labels=names
            )
            if not series:
                series[()] = {}
            for label_set, fields in sorted(series.items()):
                buckets = [(f"{b:g}", _float(fields.get(f"le={b:g}"))) for b in bounds]
                buckets.append(("+Inf", _float(fields.get("le=+Inf"))))
                given = dict(label_set)
                histogram.add_metric(
                    [given.get(k, "") for k in names],
                    buckets,
                    sum_value=_float(fields.get("sum_us")) / 1e6,
                )
            families.append(histogram)
        return families

    def _gauges(self) -> list[GaugeMetricFamily]:
        data = self.clients.data
        snap = snapshot(
            data, self.clients.rq, self.quiet_seconds, last=0, destinations=self.destinations
        )
        queue = GaugeMetricFamily(
            "scp2fhir_queue_jobs", "RQ jobs by queue and state.", labels=["queue", "state"]
        )
        for q in snap.queues:
            for state in ("queued", "started", "scheduled", "failed"):
                queue.add_metric([q.name, state], float(getattr(q, state)))
        return [
            _gauge(
                "open_studies",
                "Studies receiving instances (not yet quiet).",
                len(snap.open_studies),
            ),
            _gauge(
                "open_studies_past_quiet",
                "Open studies whose quiet period is over (emission is due).",
                len(snap.past_quiet),
            ),
            _gauge("inbox_backlog", "Instance headers waiting to be folded.", snap.inbox_backlog),
            _gauge(
                "inbox_dead_letters",
                "Received instances no worker could fold (scp2fhir:dead-letter).",
                snap.inbox_dead_letters,
            ),
            *_destination_gauges(snap),
            queue,
            *_reconcile_gauges(snap.reconcile),
        ]


def _destination_gauges(snap: Snapshot) -> list[GaugeMetricFamily]:
    pending = GaugeMetricFamily(
        "scp2fhir_delivery_pending",
        "Studies whose newest output a destination does not have yet.",
        labels=["destination"],
    )
    dead = GaugeMetricFamily(
        "scp2fhir_delivery_dead_letters",
        "Studies a destination dead-lettered (scp2fhir retry-failed re-queues them).",
        labels=["destination"],
    )
    for destination in snap.destinations:
        pending.add_metric([destination.name], float(destination.pending))
        dead.add_metric([destination.name], float(destination.dead_lettered))
    return [pending, dead]


def _float(value: str | None) -> float:
    try:
        return float(value) if value else 0.0
    except ValueError:
        return 0.0


def _reconcile_gauges(outcome: dict[str, Any] | None) -> Iterator[GaugeMetricFamily]:
    """Drift found by the last scheduled reconcile (nothing until one has run)."""
    if outcome is None:
        return
    yield _gauge(
        "reconcile_last_run_timestamp_seconds",
        "When the last scheduled reconcile with the PACS ran.",
        outcome.get("at_ms", 0) / 1000,
    )
    yield _gauge(
        "reconcile_failed",
        "1 if the last scheduled reconcile failed.",
        float(bool(outcome.get("error"))),
    )
    if outcome.get("error"):
        return  # the last counts would pass for current
    studies = GaugeMetricFamily(
        "scp2fhir_reconcile_studies",
        "Studies of the reconciled days by state, as of the last scheduled reconcile.",
        labels=["state"],
    )
    for state, count in (outcome.get("counts") or {}).items():
        studies.add_metric([state], float(count))
    yield studies
    yield _gauge(
        "reconcile_missing_instances",
        "Instances the PACS has and scp2fhir lacks, as of the last scheduled reconcile.",
        float(outcome.get("missing_instances", 0)),
    )


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"scp2fhir_{name}", text, value=value)


def make_server(
    settings: UpSettings,
    quiet_seconds: float,
    clients: RedisClients,
    port: int,
    destinations: Sequence[str] = (),
) -> ThreadingHTTPServer:
    """The web's server: bind, port and credentials of ``settings``; ``quiet_seconds``
    (:class:`workers.settings.WorkerSettings`) for the status."""
    registry = CollectorRegistry()
    registry.register(RedisCollector(clients, quiet_seconds, destinations))
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
                        clients.data, clients.rq, quiet_seconds, destinations=destinations
                    )
                    body = {
                        **snap.as_json(),
                        "history": [asdict(m) for m in history(clients.data)],
                    }
                    self._send(200, json.dumps(body).encode(), "application/json")
                elif path == "/":
                    snap = snapshot(
                        clients.data, clients.rq, quiet_seconds, destinations=destinations
                    )
                    page = render_html(snap, history(clients.data), _refresh(self.path))
                    self._send(200, page.encode(), "text/html; charset=utf-8")
                else:
                    self._send(404, b"not found\n", "text/plain")
            except redis.RedisError as exc:
                self._send(503, f"redis unavailable: {type(exc).__name__}\n".encode(), "text/plain")
            except Exception as exc:
                logger.error("web %s failed: %s", path, type(exc).__name__)
                self._send(500, f"internal error: {type(exc).__name__}\n".encode(), "text/plain")

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


def _ago(now_ms: int, then_ms: int | None) -> str:
    if then_ms is None:
        return "-"
    seconds = max(0.0, (now_ms - then_ms) / 1000)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _cell(value: object) -> str:
    return "-" if value is None else html.escape(str(value))


def _delivery_cell(study: EmittedStudy, now_ms: int) -> str:
    text = study.delivery
    if study.delivery == "delivered":
        version = f" v{study.delivered_version}" if study.delivered_version else ""
        text = f"delivered{version}, {_ago(now_ms, study.delivered_at_ms)}"
    css = {"delivered": "ok", "pending": "wait", "dead-lettered": "bad"}.get(study.delivery, "")
    return (
        f'<td class="{css}" title="{html.escape(DELIVERY_STATES.get(study.delivery, ""))}">'
        f"{html.escape(text)}</td>"
    )


def _refresh(target: str) -> int:
    """``/?refresh=N``: reload every N seconds (default 5; 0: never)."""
    values = parse_qs(urlsplit(target).query).get("refresh", [])
    try:
        return max(0, min(3600, int(values[-1]))) if values else 5
    except ValueError:
        return 5


def render_html(snap: Snapshot, minutes: list[Minute] | None = None, refresh: int = 5) -> str:
    """The status page: counts first, then the charts of the last hour, then the studies."""
    now = snap.now_ms
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
            f"<tr><td>{html.escape(e.study_uid)}</td><td>{_cell(e.series)}</td>"
            f"<td>{_cell(e.instances)}</td><td>{_ago(now, e.emitted_at_ms)}</td>"
            f"<td>{'-' if e.after_quiet_ms is None else f'{e.after_quiet_ms / 1000:.1f}s'}</td>"
            f'<td class="ok">written</td>{_delivery_cell(e, now)}</tr>'
            for e in snap.emitted
        )
        or '<tr><td colspan="7">none yet</td></tr>'
    )
    drift = reconcile_line(snap)
    queues = "".join(
        f"<tr><td>{html.escape(q.name)}</td><td>{q.queued}</td><td>{q.started}</td>"
        f"<td>{q.scheduled}</td><td>{q.failed}</td></tr>"
        for q in snap.queues
    )
    minutes = minutes or []
    received = sum(m.received for m in minutes)
    figures = "".join(
        f"<figure><figcaption>{caption}</figcaption>{svg}</figure>"
        for caption, svg in (
            (
                f"Instances received per minute ({received} in the last hour, "
                f"{sum(m.refused for m in minutes)} refused)",
                charts.bar_chart([m.received for m in minutes], "instances received", "/min"),
            ),
            (
                f"Studies emitted per minute ({sum(m.emitted for m in minutes)} in the last "
                f"hour, {sum(m.delivered for m in minutes)} delivered to FHIR)",
                charts.bar_chart(
                    [m.emitted for m in minutes], "studies emitted", "/min", color="#4a9e5c"
                ),
            ),
            (
                "Emission delay after the quiet period (seconds, mean per minute)",
                charts.line_chart(
                    [m.emitted_after_quiet_s for m in minutes], "delay after quiet", "s"
                ),
            ),
            (
                "C-STORE received to durable in Redis (milliseconds, mean per minute)",
                charts.line_chart(
                    [m.receive_to_redis_ms for m in minutes],
                    "receive to Redis",
                    "ms",
                    color="#8a5cc4",
                ),
            ),
        )
    )
    dead = "bad" if snap.inbox_dead_letters or snap.delivery_dead_letters else "ok"
    return f"""<!doctype html><html><head><meta charset="utf-8">
{f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""}
<title>scp2fhir status</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse;margin-bottom:2em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
td.ok{{color:#2d7a3e}}td.wait{{color:#a66b00}}td.bad,span.bad{{color:#b3261e;font-weight:bold}}
.charts{{display:flex;flex-wrap:wrap;gap:1em}}figure{{margin:0}}
figcaption{{font-size:90%;margin-bottom:4px}}</style></head><body>
<h1>scp2fhir</h1>
<p>Open studies: {len(snap.open_studies)} ({len(snap.past_quiet)} past their quiet period)
&middot; inbox backlog: {snap.inbox_backlog}
&middot; <span class="{dead}">inbox dead letters: {snap.inbox_dead_letters}</span>
(instances no worker could fold)
&middot; <span class="{dead}">delivery dead letters: {snap.delivery_dead_letters}</span>
(FHIR deliveries given up; <code>scp2fhir retry-failed</code>)</p>
<h2>Last hour</h2><div class="charts">{figures}</div>
{f"<p>{html.escape(drift)}</p>" if drift else ""}
<h2>Open studies ({len(snap.open_studies)})</h2>
<table><tr><th>Study Instance UID</th><th>series</th><th>instances</th><th>to fold</th>
<th>quiet in</th></tr>{rows}</table>
<h2>Last emitted</h2><table><tr><th>Study Instance UID</th><th>series</th><th>instances</th>
<th>emitted</th><th>delay after quiet</th><th>folder</th><th>FHIR server</th></tr>{emitted}</table>
<h2>Queues</h2><table><tr><th>queue</th><th>queued</th><th>started</th><th>scheduled</th>
<th>failed</th></tr>{queues}</table></body></html>"""


def serve(
    settings: UpSettings,
    quiet_seconds: float,
    clients: RedisClients,
    port: int,
    stop: threading.Event | None = None,
    destinations: Sequence[str] = (),
) -> None:
    server = make_server(settings, quiet_seconds, clients, port, destinations)
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
