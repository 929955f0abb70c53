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

#: RQ queue for fold (drain) jobs; listed first so workers prefer folding.
FOLD_QUEUE = "scp2fhir-fold"
#: RQ queue for quiet checks, emissions and housekeeping.
EMIT_QUEUE = "scp2fhir-emit"


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
