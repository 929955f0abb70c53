"""The backfill's progress line: where it is, studies/s, instances/s and the time left.

On a terminal the line is redrawn in place; otherwise (a log, a pipe) one line is
written every :data:`LOG_SECONDS` and at the end of every day. Rates count this
process's work only (a resumed run starts its clock again), and the time left is
extrapolated from the days done so far, the day under way counted by its studies.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable
from typing import TextIO

#: Seconds between progress lines when the output is not a terminal.
LOG_SECONDS = 10.0
#: Seconds between redraws on a terminal.
TTY_SECONDS = 0.5


class Progress:
    def __init__(
        self,
        days: int,
        stream: TextIO,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.days = days
        self._stream = stream
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._clock = clock
        self._began = clock()
        self._printed = 0.0
        self._last = ""
        self._lock = threading.Lock()
        self.day_index = 0
        self.day: dt.date | None = None
        self.day_studies = 0
        self.day_finished_studies = 0
        self.studies = 0
        self.moved_studies = 0
        self.instances = 0
        self.failed = 0

    def start_day(self, index: int, day: dt.date, studies: int) -> None:
        with self._lock:
            self.day_index, self.day = index, day
            self.day_studies, self.day_finished_studies = studies, 0
        self.show()

    def study(self, moved_instances: int = 0, failed: bool = False) -> None:
        with self._lock:
            self.day_finished_studies += 1
            self.studies += 1
            self.failed += failed
            if moved_instances:
                self.moved_studies += 1
                self.instances += moved_instances
        self.show()

    def end_day(self) -> None:
        self.show(force=True)

    def line(self) -> str:
        """Pure given the counters and the clock."""
        elapsed = max(self._clock() - self._began, 1e-9)
        fraction = self.day_finished_studies / self.day_studies if self.day_studies else 1.0
        done_days = max(self.day_index - 1, 0) + (fraction if self.day else 0)
        if done_days > 0:
            eta = _duration(elapsed / done_days * max(self.days - done_days, 0))
        else:
            eta = "?"
        day = self.day.isoformat() if self.day else "-"
        return (
            f"day {self.day_index}/{self.days} {day}  studies {self.studies} "
            f"(moved {self.moved_studies}, failed {self.failed})  "
            f"{self.studies / elapsed:.1f} studies/s  {self.instances} instances "
            f"{self.instances / elapsed:.0f} instances/s  ETA {eta}"
        )

    def show(self, force: bool = False) -> None:
        now = self._clock()
        interval = TTY_SECONDS if self._tty else LOG_SECONDS
        if not force and now - self._printed < interval:
            return
        self._printed = now
        with self._lock:
            text = self.line()
        if text == self._last and not self._tty:
            return
        self._last = text
        if self._tty:
            self._stream.write("\r\x1b[K" + text)
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self.day is None:
            return  # stopped before the first day: nothing to report
        self.show(force=True)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
