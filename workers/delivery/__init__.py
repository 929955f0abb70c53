"""Delivery of emitted studies to destinations: FHIR servers and folders.

Emission writes the file and queues a delivery job per destination on the destination's
own RQ queue (``scp2fhir-deliver`` for the default one, ``scp2fhir-deliver-<name>``),
so a slow or absent server never holds up folding, quiet checks or another destination,
and a redelivery always sends the newest output. One module per noun:

* :mod:`~workers.delivery.settings` -- the destinations: typed settings, parsed once;
* :mod:`~workers.delivery.job` -- the RQ job: lock, build, write, record; retries via RQ's
  scheduler, dead letters in the queue's FailedJobRegistry, ``retry-failed``, sweep;
* :mod:`~workers.delivery.output` -- what a destination gets: left out, pseudonymized,
  mapped with its version and profile;
* :mod:`~workers.delivery.pseudonymize` -- the pseudonymization rules and recipes;
* :mod:`~workers.delivery.writer` -- idempotent writes: conditional update on the Study
  Instance UID identifier or PUT to the stable id, If-Match, conflict re-reads;
* :mod:`~workers.delivery.client` -- httpx client per process: content type, TLS, gzip;
* :mod:`~workers.delivery.auth` -- none, bearer, OAuth2 client credentials, SMART
  Backend Services;
* :mod:`~workers.delivery.conformance` -- the CapabilityStatement and the fallbacks;
* :mod:`~workers.delivery.validation` -- the server's ``$validate`` before a write
  (``SCP2FHIR_FHIR_VALIDATE=1``);
* :mod:`~workers.delivery.retry` -- which failures are transient, backoff, Retry-After;
* :mod:`~workers.delivery.state` -- per-study and destination records in Redis, retention
  once every destination has the study;
* :mod:`~workers.delivery.errors` -- the exception tree.
"""

from workers.delivery.errors import (
    AuthenticationFailed,
    ConflictPersists,
    DeliveryError,
    ForeignResource,
    GaveUp,
    Invalid,
    NothingToDeliver,
    PermanentDeliveryError,
    Rejected,
    ServerUnavailable,
    TokenUnavailable,
    TransientDeliveryError,
    Unsupported,
)
from workers.delivery.job import (
    DELIVER_JOB,
    deliver,
    enqueue_delivery,
    retry_failed,
    sweep_deliveries,
)

__all__ = [
    "DELIVER_JOB",
    "AuthenticationFailed",
    "ConflictPersists",
    "DeliveryError",
    "ForeignResource",
    "GaveUp",
    "Invalid",
    "NothingToDeliver",
    "PermanentDeliveryError",
    "Rejected",
    "ServerUnavailable",
    "TokenUnavailable",
    "TransientDeliveryError",
    "Unsupported",
    "deliver",
    "enqueue_delivery",
    "retry_failed",
    "sweep_deliveries",
]
