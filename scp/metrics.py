"""Metrics that every scp2fhir process records and one HTTP endpoint serves.

SCPs and workers run as many processes on many hosts, so their counters live in
Redis, where :mod:`scp.web` reads them on each Prometheus scrape. Recording must
not cost the C-STORE path a round trip: a :class:`Recorder` adds up in memory and
a background thread flushes the sums every :data:`FLUSH_SECONDS` in one pipeline.
A process that dies loses at most that last second of counts.

Redis layout (see also :mod:`scp.keys`)::

    scp2fhir:metrics:counters          HASH  "<name>|<label>=<value>" -> count
    scp2fhir:metrics:hist:<name>       HASH  "le=<bound>" -> count, "sum", "count"
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import Counter
from collections.abc import Sequence

import redis

from scp import keys

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0

#: Histogram bucket upper bounds (seconds), per histogram.
BUCKETS: dict[str, Sequence[float]] = {
    # C-STORE received -> header durable in Redis (the SCP's own work per instance)
    "receive_to_redis_seconds": (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
    # last instance of a study -> its ImagingStudy written (includes the quiet period)
    "last_instance_to_emitted_seconds": (1, 5, 10, 30, 60, 61, 62, 65, 70, 90, 120, 300, 900),
    # ImagingStudy written -> accepted by the FHIR server
    "emitted_to_delivered_seconds": (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
}

#: Counter names and their help text (labels are free-form ``key=value``).
COUNTERS: dict[str, str] = {
    "associations_total": "Associations accepted, by calling AE title.",
    "association_rejections_total": "Associations refused (limits, AE titles, peers).",
    "instances_received_total": "C-STORE requests answered, by DIMSE status.",
    "instances_folded_total": "Instances folded into study aggregates.",
    "emissions_total": "ImagingStudy resources written.",
    "delivery_attempts_total": "Requests sent to the FHIR server, by outcome.",
    "delivery_failures_total": "Deliveries given up (dead-lettered).",
    "delivery_validation_warnings_total": "Warnings of the server's $validate "
    "(SCP2FHIR_FHIR_VALIDATE=1), summed over deliveries.",
}


class Recorder:
    """In-memory sums of one process, flushed to Redis in the background."""

    def __init__(self, connection: redis.Redis | None) -> None:
        self._redis = connection
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._hist: dict[str, Counter[str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def count(self, name: str, amount: int = 1, **labels: str) -> None:
        field = name + "".join(f"|{k}={v}" for k, v in sorted(labels.items()))
        with self._lock:
            self._counts[field] += amount

    def observe(self, name: str, seconds: float) -> None:
        bounds = BUCKETS[name]
        with self._lock:
            hist = self._hist.setdefault(name, Counter())
            for bound in bounds:
                if seconds <= bound:
                    hist[f"le={bound:g}"] += 1
            hist["le=+Inf"] += 1
            hist["count"] += 1
            # Sums are kept in microseconds so Redis can add them as integers.
            hist["sum_us"] += int(seconds * 1_000_000)

    def start(self) -> Recorder:
        if self._redis is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="metrics-flush", daemon=True)
            self._thread.start()
            atexit.register(self.flush)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
            hists, self._hist = self._hist, {}
        if self._redis is None or not (counts or hists):
            return
        try:
            pipe = self._redis.pipeline(transaction=False)
            for field, amount in counts.items():
                pipe.hincrby(keys.METRICS_COUNTERS, field, amount)
            for name, hist in hists.items():
                for field, amount in hist.items():
                    pipe.hincrby(keys.metrics_histogram(name), field, amount)
            pipe.execute()
        except redis.RedisError as exc:
            # Metrics must never take the pipeline down; keep the sums for the next try.
            logger.warning("metrics not flushed (kept for the next flush): %s", type(exc).__name__)
            with self._lock:
                self._counts.update(counts)
                for name, hist in hists.items():
                    self._hist.setdefault(name, Counter()).update(hist)


#: The process's recorder; a no-op until :func:`install` is called from ``main()``.
_recorder = Recorder(None)


def install(recorder: Recorder) -> None:
    global _recorder
    _recorder = recorder


def recorder() -> Recorder:
    return _recorder
