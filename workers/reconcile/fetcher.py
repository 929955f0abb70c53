"""Bounded concurrent C-MOVEs: up to ``SCP2FHIR_PACS_MOVES`` studies at once, each mover
thread on an association of its own (kept from one study to the next).

A study's failure (a failure status, failed sub-operations) is reported and the others
go on; a connection fault (:attr:`scp.pacs.errors.PacsError.fatal`: the PACS is down,
refuses, stopped answering) stops the movers after the moves already under way and is
raised, since every further study would meet it too. Ctrl-C aborts the moves under way.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from scp.pacs import MoveResult, PacsAddress, PacsError, PacsSettings, Session, move_study
from workers.reconcile.verdict import Verdict

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fetched:
    """The outcome of fetching one study: a result or an error."""

    verdict: Verdict
    result: MoveResult | None = None
    error: PacsError | None = None


class Fetcher:
    def __init__(self, address: PacsAddress, settings: PacsSettings) -> None:
        self._sessions = [Session(address, settings) for _ in range(settings.moves)]
        self._stop = threading.Event()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for session in self._sessions:
            session.close(abort=kind is not None)

    def fetch(self, verdicts: Sequence[Verdict], on_result: Callable[[Fetched], None]) -> None:
        """Move every study of ``verdicts``; ``on_result`` is called once per study moved
        or failed (from the mover threads, one call at a time)."""
        todo: queue.SimpleQueue[Verdict] = queue.SimpleQueue()
        for item in verdicts:
            todo.put(item)
        report = threading.Lock()
        fatal: list[PacsError] = []

        def mover(session: Session) -> None:
            while not self._stop.is_set():
                try:
                    item = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    outcome = Fetched(
                        item, result=move_study(session, item.study_uid, item.series_to_move)
                    )
                except PacsError as exc:
                    outcome = Fetched(item, error=exc)
                    if exc.fatal:
                        fatal.append(exc)
                        self._stop.set()
                if self._stop.is_set() and outcome.error is not None:
                    return  # a casualty of the fault raised below or of Ctrl-C, not a result
                with report:
                    on_result(outcome)

        threads = [
            threading.Thread(target=mover, args=(session,), name=f"mover-{i}", daemon=True)
            for i, session in enumerate(self._sessions[: max(1, min(len(verdicts), 64))])
        ]
        for thread in threads:
            thread.start()
        try:
            while any(thread.is_alive() for thread in threads):
                for thread in threads:
                    thread.join(0.2)
        except BaseException:  # Ctrl-C: abort the moves under way, then let it through
            self._stop.set()
            for session in self._sessions:
                session.abort()
            for thread in threads:
                thread.join(5)
            raise
        if fatal:
            raise fatal[0]
