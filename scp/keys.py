"""Every Redis key and queue name scp2fhir uses, in one place.

Layout (``S`` = Study Instance UID, ``SE`` = Series Instance UID, ``SOP`` = SOP Instance UID)::

    scp2fhir:inbox                         STREAM   one entry per received instance:
                                                    s=S, h=header (DICOM JSON); entry id = arrival
                                                    time on the Redis clock
    scp2fhir:drain-requested               STRING   set while a drain job is queued (SET NX)
    scp2fhir:open                          ZSET     S -> arrival (ms, Redis clock) of its newest
    scp2fhir:inflight                      HASH     S -> instances pushed but not yet folded
    scp2fhir:study:S                       HASH     generation: emissions so far (a correction
                                                    folded from now on ranks one more)
    scp2fhir:study:S:instances             HASH     SOP -> instance record (JSON: "g" its rank,
                                                    "sv"/"ev" its variant digests first, then
                                                    the record, which names its series)
    scp2fhir:study:S:variants              HASH     digest -> study- or series-level attributes
                                                    (JSON), shared by the instances that carry them
    scp2fhir:study:S:rejected              HASH     SOP -> "<DCM code> <note SOP> <seen 0|1>": named
                                                    by an IOCM rejection note (maybe not arrived)
    scp2fhir:study:S:notes                 HASH     SOP of a rejection note -> its DCM code
    scp2fhir:study:S:retraction            HASH     at (ms), by, reason of `scp2fhir retract`; kept
                                                    until `scp2fhir forget` (no expiry)
    scp2fhir:study:S:signals               HASH     "mpps:<uid>" / "ian:<uid>" -> completion signal
                                                    (JSON: state, listed SOPs, the step's studies)
    scp2fhir:study:S:signal-check          STRING   set while a completion check of S is queued
    scp2fhir:series-study:SE               STRING   S: the study a series was folded into (expires
                                                    with the retention; for MPPS/IAN checks)
    scp2fhir:signal:mpps:UID               HASH     a Modality Performed Procedure Step (state,
                                                    signal JSON as in study:S:signals)
    scp2fhir:signal:ian:UID                HASH     an Instance Availability Notification
    scp2fhir:disagreements                 HASH     S -> attributes its instances disagree on at
                                                    its last emission (JSON: tags, counts)
    scp2fhir:study:S:series:SE             HASH     written before generations and variants (the
                                                    release before the study lifecycle): source,
                                                    attrs of a series; read once and deleted by
                                                    the upgrade (workers.aggregates)
    scp2fhir:aggregate-layout              STRING   "2" once a worker has upgraded every
                                                    aggregate of the earlier layout
    scp2fhir:study:S:check                 STRING   set while a quiet check for S is scheduled
    scp2fhir:study:S:lease                 STRING   held by the worker emitting S
    scp2fhir:emitted                       ZSET     S -> time (ms) of its last emission
    scp2fhir:study:S:emission              HASH     its last emission, for the status page: at,
                                                    last_arrival (ms), series, instances,
                                                    after_quiet_ms; expires with the retention
    scp2fhir:dead-letter                   LIST     inbox entries no worker could fold (JSON)
    scp2fhir:ledger                        HASH     S -> what its last emission held: instances
                                                    in all and per series (JSON); kept for good
                                                    (workers/ledger.py)
    scp2fhir:ledger:dates                  ZSET     S -> its Study Date as YYYYMMDD (0: none)
    scp2fhir:sweep-scheduled               STRING   set while the periodic sweep is scheduled
    scp2fhir:metrics:counters              HASH     name (no labels) or JSON '["<name>",{"<label>":
                                                    "<value>"}]' -> count
    scp2fhir:metrics:hist:<name>           HASH     "[<label>=<value>|...]le=<bound>" -> count,
                                                    "count", "sum_us" (same label prefix)
    scp2fhir:metrics:minute:M              HASH     the counters' fields -> counts added in minute M
                                                    (Unix time // 60); expires after 2 hours
    scp2fhir:metrics:minute:M:hist         HASH     "<name>:count", "<name>:sum_us" of minute M

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

  Reconcile and backfill against a PACS (``R`` = hash of the PACS address and date range):

    scp2fhir:backfill:R                    HASH     pacs, since, until, counters, state of a
                                                    backfill run (kept 30 days after it ends)
    scp2fhir:backfill:R:days               SET      days (YYYYMMDD) the run has finished
    scp2fhir:backfill:R:day:D              SET      S of day D the run found complete or moved
                                                    in full (dropped once D is finished)
    scp2fhir:backfill:R:lock               STRING   held by the running backfill (renewed)
    scp2fhir:reconcile:last                STRING   outcome of the last scheduled reconcile
                                                    (JSON: counts per state, error, time)
    scp2fhir:reconcile-scheduled           STRING   set while the next one is scheduled

RQ keeps its own keys under ``rq:``; scp2fhir's jobs run on the queues below.

Study- and series-level attributes are decided from the instances' variants when the
aggregate is read (:func:`workers.fold.resolve`), so the result does not depend on
arrival order.
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
LEDGER = f"{PREFIX}:ledger"
LEDGER_DATES = f"{PREFIX}:ledger:dates"
RECONCILE_LAST = f"{PREFIX}:reconcile:last"
RECONCILE_SCHEDULED = f"{PREFIX}:reconcile-scheduled"
#: The destination configured by the environment (``SCP2FHIR_FHIR_BASE_URL``).
DEFAULT_DESTINATION = "default"
DELIVER_PENDING = f"{PREFIX}:deliver-pending"  # the default destination's
DELIVER_FAILED = f"{PREFIX}:deliver-failed"  # the default destination's
DISAGREEMENTS = f"{PREFIX}:disagreements"
AGGREGATE_LAYOUT = f"{PREFIX}:aggregate-layout"

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


def metrics_minute(minute: int) -> str:
    return f"{PREFIX}:metrics:minute:{minute}"


def metrics_minute_hist(minute: int) -> str:
    return f"{PREFIX}:metrics:minute:{minute}:hist"


def study_emission(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}:emission"


def study(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}"


def study_instances(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}:instances"


def study_variants(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}:variants"


def study_rejected(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}:rejected"


def study_notes(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}:notes"


def study_retraction(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}:retraction"


def study_signals(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}:signals"


def study_signal_check(study_uid: str) -> str:
    return f"{PREFIX}:study:{study_uid}:signal-check"


def series_study(series_uid: str) -> str:
    return f"{PREFIX}:series-study:{series_uid}"


def signal(name: str) -> str:
    """A completion signal by name: ``mpps:<step UID>`` or ``ian:<notification UID>``."""
    return f"{PREFIX}:signal:{name}"


def study_aggregate_keys(study_uid: str) -> list[str]:
    """The keys that hold a study's aggregate: kept while it is open or undelivered,
    then expired together after the retention."""
    return [
        study(study_uid),
        study_instances(study_uid),
        study_variants(study_uid),
        study_rejected(study_uid),
        study_notes(study_uid),
    ]


def legacy_series(study_uid: str, series_uid: str) -> str:
    """A series' attributes as the release before the study lifecycle kept them."""
    return f"{PREFIX}:study:{study_uid}:series:{series_uid}"


#: SCAN pattern of :func:`legacy_series` keys, of every study.
LEGACY_SERIES_PATTERN = f"{PREFIX}:study:*:series:*"


def study_pattern(study_uid: str) -> str:
    """A SCAN pattern matching every ``scp2fhir:study:S:*`` key of one study (a UID has
    no glob characters)."""
    return f"{PREFIX}:study:{study_uid}:*"


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


def backfill(run: str) -> str:
    return f"{PREFIX}:backfill:{run}"


def backfill_days(run: str) -> str:
    return f"{PREFIX}:backfill:{run}:days"


def backfill_day(run: str, day: str) -> str:
    return f"{PREFIX}:backfill:{run}:day:{day}"


def backfill_lock(run: str) -> str:
    return f"{PREFIX}:backfill:{run}:lock"
