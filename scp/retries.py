"""What RQ does with an internal job whose work horse died under it.

A worker killed mid-job (kill -9, OOM, a host crash) leaves its job "started"; RQ's
maintenance later finds it abandoned and, without retries, files it in the failed
registry as ``AbandonedJobError``: a false alarm for the drain, quiet check, completion
check and sweep, which are idempotent and whose work the sweep redoes anyway. With
:func:`internal_retry` RQ queues such a job again instead; a job that keeps failing
(an exception each time, a header that crashes the fold) still lands in the failed
registry after its retries, where an operator looks.
"""

from __future__ import annotations

from rq import Retry

#: Attempts after the first: an abandoned job runs again at once on a live worker.
INTERNAL_RETRIES = 2


def internal_retry() -> Retry:
    return Retry(max=INTERNAL_RETRIES)
