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
from workers.mapping import FhirVersion, MappingOptions, emitted
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
) -> tuple[int, int]:
    """Write one ImagingStudy (or, with ``options.bundle``, one transaction Bundle) per
    study as NDJSON to ``out``. Values left out as invalid are logged by tag per file.

    Returns (studies written, files that could not be read)."""
    summaries: list[InstanceSummary] = []
    unreadable = 0
    progress = Progress(sys.stderr)
    for path in iter_files(paths):
        progress.step(len(summaries), unreadable)
        try:
            summary = summarize(read_header(path).json)
        except Exception as exc:
            unreadable += 1
            logger.warning("file=%s skipped: %s", path, type(exc).__name__)
            continue
        log_warnings(summary, logger)
        summaries.append(summary)
    progress.done(len(summaries), unreadable)
    aggregates = fold_all(summaries)
    for study_uid in sorted(aggregates):
        resource = emitted(aggregates[study_uid], version, options)
        out.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n")
    return len(aggregates), unreadable
