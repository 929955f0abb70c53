"""Every Redis key and queue name scp2fhir uses, in one place.

Layout (``S`` = Study Instance UID, ``SE`` = Series Instance UID, ``SOP`` = SOP Instance UID)::

    scp2fhir:inbox                         STREAM   one entry per received instance:
                                                    s=S, h=header (DICOM JSON); entry id = arrival
                                                    time on the Redis clock
    scp2fhir:drain-requested               STRING   set while a drain job is queued (SET NX)
    scp2fhir:open                          ZSET     S -> arrival (ms, Redis clock) of its newest
    scp2fhir:inflight                      HASH     S -> instances pushed but not yet folded
    scp2fhir:study:S                       HASH     source, attrs: study-level attributes (JSON)
    scp2fhir:study:S:instances             HASH     SOP -> instance record (JSON, names its series)
    scp2fhir:study:S:series:SE             HASH     source, attrs: series-level attributes (JSON)
    scp2fhir:study:S:check                 STRING   set while a quiet check for S is scheduled
    scp2fhir:study:S:lease                 STRING   held by the worker emitting S
    scp2fhir:emitted                       ZSET     S -> time (ms) of its last emission
    scp2fhir:dead-letter                   LIST     inbox entries no worker could fold (JSON)
    scp2fhir:sweep-scheduled               STRING   set while the periodic sweep is scheduled
    scp2fhir:metrics:counters              HASH     "<name>|<label>=<value>" -> count
    scp2fhir:metrics:hist:<name>           HASH     "le=<bound>" -> count, "count", "sum_us"

  Delivery, per destination ``D`` (``H`` = hash of the server/token URL). The keys carry
  ``:D`` (the queue ``-D``), except for the destination named ``default`` (the one the
  environment configures), which keeps the names of single-destination versions, so an
  upgrade keeps its pending deliveries and the versions it wrote:

    scp2fhir:deliver-pending:D             ZSET     S -> emission time (ms) of output not yet
                                                    delivered to D; the aggregate is kept
                                                    while any destination has S pending
    scp2fhir:deliver-failed:D              HASH     S -> RQ job id of its dead-lettered delivery
                                                    (the job is in D's queue's
                                                    FailedJobRegistry)
    scp2fhir:study:S:delivery:D            HASH     what the bridge last wrote to D: id
                                                    (server's), version (versionId, for
                                                    If-Match), sha256 of the content, at (ms)
    scp2fhir:study:S:deliver-queued:D      STRING   set while a delivery job of S to D is
                                                    queued or scheduled (SET NX: one at a time)
    scp2fhir:study:S:deliver-lock:D        STRING   held by the worker delivering S to D
    scp2fhir:fhir:capabilities:H           STRING   what the server's CapabilityStatement
                                                    allows (JSON), cached for 10 minutes
    scp2fhir:fhir:no-gzip:H                STRING   set for an hour after the server refused a
                                                    gzip-compressed request body
    scp2fhir:fhir:token:H                  STRING   OAuth2 access token (JSON) until shortly
                                                    before it expires, shared by the workers'
                                                    job processes; protect Redis accordingly

RQ keeps its own keys under ``rq:``; scp2fhir's jobs run on the queues below.

``source``/``attrs`` pairs keep the attributes of the instance with the smallest
SOP Instance UID that carried them, so the result does not depend on arrival order.
"""

from __future__ import annotations

PREFIX = "scp2fhir"

INBOX = f"{PREFIX}:inbox"
#: Consumer group of the inbox stream that the fold jobs read with.
INBOX_GROUP = "folders"
DRAIN_REQUESTED = f"{PREFIX}:drain-requested"
OPEN_STUDIES = f"{PREFIX}:open"
INFLIGHT = f"{PREFIX}:inflight"
EMITTED = f"{PREFIX}:emitted"
DEAD_LETTER = f"{PREFIX}:dead-letter"
SWEEP_SCHEDULED = f"{PREFIX}:sweep-scheduled"
METRICS_COUNTERS = f"{PREFIX}:metrics:counters"
#: The destination configured by the environment (``SCP2FHIR_FHIR_BASE_URL``).
DEFAULT_DESTINATION = "default"
DELIVER_PENDING = f"{PREFIX}:deliver-pending"  # the default destination's
DELIVER_FAILED = f"{PREFIX}:deliver-failed"  # the default destination's

#: RQ queue for fold (drain) jobs; listed first so workers prefer folding.
FOLD_QUEUE = "scp2fhir-fold"
#: RQ queue for quiet checks, emissions and housekeeping.
EMIT_QUEUE = "scp2fhir-emit"
#: RQ queue for deliveries to the default destination (each destination has its own,
#: :func:`deliver_queue`), so a slow or absent server never holds up folding, quiet checks
#: or another destination; its FailedJobRegistry is the destination's dead-letter list.
DELIVER_QUEUE = "scp2fhir-deliver"


def _of(base: str, destination: str, separator: str = ":") -> str:
    return base if destination == DEFAULT_DESTINATION else f"{base}{separator}{destination}"


def deliver_queue(destination: str) -> str:
    return _of(DELIVER_QUEUE, destination, "-")


def deliver_pending(destination: str) -> str:
    return _of(DELIVER_PENDING, destination)


def deliver_failed(destination: str) -> str:
    return _of(DELIVER_FAILED, destination)


def metrics_histogram(name: str) -> str:
    return f"{PREFIX}:metrics:hist:{name}"


def study(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}"


def study_instances(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}:instances"


def series(study_uid: str, series_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}:series:{series_uid}"


def study_check(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}:check"


def study_lease(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}:lease"


def study_delivery(study_uid: str, destination: str = DEFAULT_DESTINATION) -> str:
    return _of(f"{PREFIX}:study:{study_uid}:delivery", destination)


def study_deliver_queued(study_uid: str, destination: str = DEFAULT_DESTINATION) -> str:
    return _of(f"{PREFIX}:study:{study_uid}:deliver-queued", destination)


def study_deliver_lock(study_uid: str, destination: str = DEFAULT_DESTINATION) -> str:
    return _of(f"{PREFIX}:study:{study_uid}:deliver-lock", destination)


def fhir_capabilities(server_hash: str) -> str:
    return f"{PREFIX}:fhir:capabilities:{server_hash}"


def fhir_no_gzip(server_hash: str) -> str:
    return f"{PREFIX}:fhir:no-gzip:{server_hash}"


def fhir_token(client_hash: str) -> str:
    return f"{PREFIX}:fhir:token:{client_hash}"
