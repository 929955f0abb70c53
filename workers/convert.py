"""``scp2fhir convert``: the pipeline's mapping, offline, over DICOM files and folders.

Each file is read the way the SCP reads a received instance (header only), so
the resources equal what the live pipeline would emit for the same instances.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from scp.header import read_header
from workers.fold import fold_all
from workers.lifecycle.origin import with_origin
from workers.mapping import FhirVersion, MappingOptions, emitted
from workers.profiles import Gaps
from workers.summary import InstanceSummary, log_warnings, summarize

logger = logging.getLogger(__name__)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


class Progress:
    """A one-line count on a terminal; nothing at all when stderr is a pipe or a file."""

    def __init__(self, stream: TextIO, every_seconds: float = 0.2) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.every = every_seconds
        self.last = 0.0

    def step(self, read: int, unreadable: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= self.every:
            self.last = now
            self.stream.write(f"\rread {read} instances, {unreadable} unreadable files")
            self.stream.flush()

    def done(self, read: int, unreadable: int) -> None:
        if self.enabled:
            self.stream.write(f"\rread {read} instances, {unreadable} unreadable files\n")
            self.stream.flush()


def convert(
    paths: Iterable[Path],
    version: FhirVersion,
    out: TextIO,
    options: MappingOptions | None = None,
    *,
    explain: bool = False,
) -> tuple[int, int]:
    """Write one ImagingStudy (or, with ``options.bundle``, one transaction Bundle) per
    study as NDJSON to ``out``. Values left out as invalid are logged by tag per file.
    With ``explain``, write instead what the profile wanted and the headers could not
    give (:func:`explanation`).

    Returns (studies written, files that could not be read)."""
    options = options or MappingOptions()
    summaries: list[InstanceSummary] = []
    unreadable = 0
    progress = Progress(sys.stderr)
    for path in iter_files(paths):
        progress.step(len(summaries), unreadable)
        try:
            summary = summarize(read_header(path).json, with_technique=options.needs_technique)
        except Exception as exc:
            unreadable += 1
            logger.warning("file=%s skipped: %s", path, type(exc).__name__)
            continue
        log_warnings(summary, logger)
        summaries.append(summary)
    progress.done(len(summaries), unreadable)
    # A study seen only through rejection notes has nothing to write.
    aggregates = {uid: a for uid, a in fold_all(summaries).items() if a.emittable}
    for study_uid in sorted(aggregates):
        gaps = Gaps()
        resource = with_origin(emitted(aggregates[study_uid], version, options, gaps=gaps))
        if explain:
            out.write(explanation(study_uid, options.profile, gaps))
        else:
            out.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n")
    return len(aggregates), unreadable


def explanation(study_uid: str, profile: str, gaps: Gaps) -> str:
    """The ``--explain`` view of one study: one line per gap, grouped by where."""
    if not len(gaps):
        return f"study {study_uid} (profile {profile}): no gaps\n"
    lines = [f"study {study_uid} (profile {profile}): {len(gaps)} gaps"]
    where = None
    for gap in gaps:
        if gap.where != where:
            where = gap.where
            lines.append(f"  {where}")
        lines.append(f"    {gap.element} [{gap.kind}] {gap.reason}")
    return "\n".join(lines) + "\n"
