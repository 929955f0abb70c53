"""Delivery of emitted studies to a FHIR server (``SCP2FHIR_FHIR_BASE_URL``).

Emission writes the file and queues a delivery job on its own RQ queue
(``scp2fhir-deliver``), so a slow or absent server never holds up folding and quiet
checks, and a redelivery always sends the newest output. One module per noun:

* :mod:`~workers.delivery.job` -- the RQ job: lock, build, write, record; retries via RQ's
  scheduler, dead letters in the queue's FailedJobRegistry, ``retry-failed``, sweep;
* :mod:`~workers.delivery.writer` -- idempotent writes: conditional update on the Study
  Instance UID identifier or PUT to the stable id, If-Match, conflict re-reads;
* :mod:`~workers.delivery.client` -- httpx client per process: content type, TLS, gzip;
* :mod:`~workers.delivery.auth` -- none, bearer, OAuth2 client credentials, SMART
  Backend Services;
* :mod:`~workers.delivery.conformance` -- the CapabilityStatement and the fallbacks;
* :mod:`~workers.delivery.validation` -- the server's ``$validate`` before a write
  (``SCP2FHIR_FHIR_VALIDATE=1``);
* :mod:`~workers.delivery.retry` -- which failures are transient, backoff, Retry-After;
* :mod:`~workers.delivery.state` -- per-study records in Redis, retention after delivery;
* :mod:`~workers.delivery.errors` -- the exception tree.
"""

from workers.delivery.errors import (
    AuthenticationFailed,
    ConflictPersists,
    DeliveryError,
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
    Builder,
    deliver,
    enqueue_delivery,
    retry_failed,
    sweep_deliveries,
)

__all__ = [
    "DELIVER_JOB",
    "AuthenticationFailed",
    "Builder",
    "ConflictPersists",
    "DeliveryError",
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
