"""MPPS and IAN as completion signals (the worker's side; the SCP stores them in
:mod:`scp.signals`).

A study may be emitted before its quiet period is over when:

* it has at least one signal, and every one is final (an MPPS step COMPLETED or
  DISCONTINUED, an IAN); a step still IN PROGRESS means more may come; a final signal
  that lists no instance does not count (it proves nothing about the study);
* every SOP Instance UID the signals list has been folded (into one of the studies the
  signal names; a rejected instance counts: it arrived);
* nothing of the study waits to be folded.

Otherwise the quiet period decides, as without signals. The emission that a signal
triggers uses the signals up; instances that arrive later wait for the quiet period
again (or for a new signal).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from scp import keys
from scp.signals import study_signals


@dataclass(frozen=True)
class Readiness:
    ready: bool
    why: str


def readiness(data: redis.Redis, study_uid: str) -> Readiness:
    """Whether ``study_uid``'s completion signals let it be emitted now, and why not."""
    # A final step that lists no instance (valid: its series may reference none) says
    # nothing about what the study holds: it cannot shorten the quiet period.
    signals = {
        name: signal
        for name, signal in study_signals(data, study_uid).items()
        if signal.sops or not signal.final
    }
    if not signals:
        return Readiness(False, "no completion signal that lists instances")
    waiting = sorted(name for name, signal in signals.items() if not signal.final)
    if waiting:
        return Readiness(False, f"procedure step in progress ({', '.join(waiting)})")
    listed = sorted({sop for signal in signals.values() for sop in signal.sops})
    studies = sorted({study_uid, *(s for signal in signals.values() for s in signal.studies)})
    pipe = data.pipeline(transaction=False)
    for sop in listed:
        for study in studies:
            pipe.hexists(keys.study_instances(study), sop)
    found = pipe.execute() if listed else []
    width = len(studies)
    missing = sum(
        1 for index in range(len(listed)) if not any(found[index * width : (index + 1) * width])
    )
    if missing:
        return Readiness(False, f"{missing} of {len(listed)} listed instances not folded yet")
    if data.hget(keys.INFLIGHT, study_uid):
        return Readiness(False, "instances wait to be folded")
    return Readiness(True, f"{len(listed)} listed instances folded ({', '.join(sorted(signals))})")
