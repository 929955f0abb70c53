"""Metrics that every scp2fhir process records and one HTTP endpoint serves.

SCPs and workers run as many processes on many hosts, so their counters live in
Redis, where :mod:`scp.web` reads them on each Prometheus scrape. Recording must
not cost the C-STORE path a round trip: a :class:`Recorder` adds up in memory and
a background thread flushes the sums every :data:`FLUSH_SECONDS` in one pipeline.
A process that dies loses at most that last second of counts.

Each flush also adds its sums to the hashes of the current minute, which expire after
:data:`MINUTE_TTL_SECONDS`: the status page draws the last hour from them (minutes by
the clock of the process that counted).

Redis layout (see also :mod:`scp.keys`)::

    scp2fhir:metrics:counters          HASH  field -> count (field: :func:`encode_field`)
    scp2fhir:metrics:hist:<name>       HASH  "[<label>=<value>|...]le=<bound>" -> count,
                                             and "count", "sum_us" (same label prefix;
                                             histogram labels are names scp2fhir checked,
                                             such as a destination's)
    scp2fhir:metrics:minute:M          HASH  field -> count added in minute M
    scp2fhir:metrics:minute:M:hist     HASH  "<name>:count", "<name>:sum_us" of minute M

Label values are data (a calling AE title is whatever the peer sent): a field is the
JSON array ``[name, {label: value}]``, so no value can break it, and
:func:`decode_field` refuses any field it cannot read rather than fail a scrape.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence

import redis

from scp import keys

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
#: Per-minute sums are kept this long (the status page shows the last hour).
MINUTE_TTL_SECONDS = 2 * 3600

#: Histogram bucket upper bounds (seconds), per histogram.
BUCKETS: dict[str, Sequence[float]] = {
    # C-STORE received -> header durable in Redis (the SCP's own work per instance)
    "receive_to_redis_seconds": (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
    # last instance of a study -> its ImagingStudy written (includes the quiet period)
    "last_instance_to_emitted_seconds": (1, 5, 10, 30, 60, 61, 62, 65, 70, 90, 120, 300, 900),
    # the same minus the quiet period: how late the bridge was, whatever the quiet period
    "emitted_after_quiet_seconds": (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
    # ImagingStudy written -> accepted by the FHIR server
    "emitted_to_delivered_seconds": (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
}

#: Help text of each histogram.
HISTOGRAMS: dict[str, str] = {
    "receive_to_redis_seconds": "C-STORE received to header durable in Redis.",
    "last_instance_to_emitted_seconds": "Last instance of a study to its ImagingStudy written "
    "(includes the quiet period).",
    "emitted_after_quiet_seconds": "Last instance to ImagingStudy written, minus the quiet period.",
    "emitted_to_delivered_seconds": "ImagingStudy written to accepted by the FHIR server.",
}

#: Counter names, their help text and label names.
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "associations_total": ("Associations accepted, by calling AE title.", ("calling_ae",)),
    "association_rejections_total": (
        "Associations and connections refused, by reason.",
        ("reason",),
    ),
    "instances_received_total": ("C-STORE requests answered, by DIMSE status.", ("status",)),
    "instances_folded_total": ("Instances folded into study aggregates.", ()),
    "emissions_total": ("ImagingStudy resources written.", ()),
    "attribute_disagreements_total": (
        "Emissions whose instances disagreed on an attribute, by DICOM keyword.",
        ("keyword",),
    ),
    "rejection_notes_total": ("IOCM rejection notes folded, by DCM code.", ("code",)),
    "completion_signals_total": (
        "MPPS/IAN completion signals received, by kind and outcome.",
        ("kind", "status"),
    ),
    "signalled_emissions_total": (
        "Studies emitted on a completion signal, before the quiet period.",
        (),
    ),
    "delivery_attempts_total": (
        "Requests sent to FHIR servers, by destination and outcome.",
        ("destination", "outcome"),
    ),
    "delivery_failures_total": (
        "Deliveries given up (dead-lettered), by destination.",
        ("destination",),
    ),
    "redis_restarts_total": ("Restarts of scp2fhir up's private Redis after it died.", ()),
    "delivery_validation_warnings_total": (
        "Warnings of the server's $validate (a destination's validate), summed over "
        "deliveries, by destination.",
        ("destination",),
    ),
}

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def encode_field(name: str, labels: dict[str, str]) -> str:
    """The Redis hash field of one counter and label set."""
    if not labels:
        return name
    return json.dumps([name, labels], sort_keys=True, separators=(",", ":"))


def decode_field(field: str) -> tuple[str, dict[str, str]] | None:
    """``(name, labels)`` of a stored field, or None if it is not one this module writes.

    Also reads the fields of scp2fhir 0.1 (``name|label=value|...``), as far as they
    can be read unambiguously, so counts survive an upgrade.
    """
    name: object
    labels: object
    if field.startswith("["):
        try:
            name, labels = json.loads(field)
        except (ValueError, TypeError):
            return None
    else:
        name, *pairs = field.split("|")
        if not all("=" in pair for pair in pairs):
            return None
        labels = dict(pair.split("=", 1) for pair in pairs)
    if not isinstance(name, str) or not _NAME.match(name) or not isinstance(labels, dict):
        return None
    for key, value in labels.items():
        if not isinstance(key, str) or not _NAME.match(key) or key.startswith("__"):
            return None
        if not isinstance(value, str):
            return None
    return name, labels


@functools.lru_cache(maxsize=4096)
def _cached_field(name: str, labels: tuple[tuple[str, str], ...]) -> str:
    return encode_field(name, dict(labels))


@functools.lru_cache(maxsize=4096)
def _histogram_fields(
    name: str, prefix: str
) -> tuple[tuple[tuple[float, str], ...], str, str, str]:
    """The hash fields one observation of histogram ``name`` adds to, for one label set:
    (each bucket's bound and field, the +Inf field, the count field, the sum field)."""
    buckets = tuple((bound, f"{prefix}le={bound:g}") for bound in BUCKETS[name])
    return buckets, f"{prefix}le=+Inf", f"{prefix}count", f"{prefix}sum_us"


def minute_of(unix_seconds: float) -> int:
    return int(unix_seconds // 60)


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
        # Called for every instance received: the field is encoded once per label set.
        field = _cached_field(name, tuple(sorted(labels.items())))
        with self._lock:
            self._counts[field] += amount

    def observe(self, name: str, seconds: float, **labels: str) -> None:
        prefix = "".join(f"{k}={v}|" for k, v in sorted(labels.items())) if labels else ""
        buckets, infinite, count, total = _histogram_fields(name, prefix)
        with self._lock:
            hist = self._hist.setdefault(name, Counter())
            for bound, field in buckets:
                if seconds <= bound:
                    hist[field] += 1
            hist[infinite] += 1
            hist[count] += 1
            # Sums are kept in microseconds so Redis can add them as integers.
            hist[total] += int(seconds * 1_000_000)

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
        minute = minute_of(time.time())
        per_minute, per_minute_hist = keys.metrics_minute(minute), keys.metrics_minute_hist(minute)
        try:
            pipe = self._redis.pipeline(transaction=False)
            for field, amount in counts.items():
                pipe.hincrby(keys.METRICS_COUNTERS, field, amount)
                pipe.hincrby(per_minute, field, amount)
            for name, hist in hists.items():
                for field, amount in hist.items():
                    pipe.hincrby(keys.metrics_histogram(name), field, amount)
                # The minute's sums over every label set (the status page's charts).
                for total in ("count", "sum_us"):
                    amount = sum(v for f, v in hist.items() if f.rsplit("|", 1)[-1] == total)
                    pipe.hincrby(per_minute_hist, f"{name}:{total}", amount)
            if counts:
                pipe.expire(per_minute, MINUTE_TTL_SECONDS)
            if hists:
                pipe.expire(per_minute_hist, MINUTE_TTL_SECONDS)
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
