"""The worker process's settings for Python's cyclic garbage collector.

CPython's defaults (a young-generation collection every 700 net container allocations)
suit programs that keep few objects. A worker's jobs build large acyclic trees: the
aggregate of a study (a dict per instance record) and its ImagingStudy (a dict per
instance, more with a profile's extensions). Reference counting frees those trees; the
cyclic collector cannot free any of it but walks it again and again while it is being
built, and a full collection walks everything the process holds. For a 5000-instance
study with the MII profile that was about a third of the build's CPU time (1.6 full
collections per build; ``python -m tests.bench --only worker``). Collecting less often
keeps the collector for what it is for (the rare reference cycle) and leaves memory as
it is: objects without cycles are freed by reference counting either way.
"""

from __future__ import annotations

import gc

#: (young, middle, old) generation thresholds of :func:`gc.set_threshold` for a worker
WORKER_THRESHOLDS = (50_000, 20, 10)


def tune() -> tuple[int, int, int]:
    """Set the worker's collector thresholds; returns the previous ones (for a caller
    that runs a worker inline, such as the benchmark, to restore them)."""
    previous = gc.get_threshold()
    gc.set_threshold(*WORKER_THRESHOLDS)
    return previous
