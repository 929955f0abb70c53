"""``scp2fhir convert``: the pipeline's mapping, offline, over DICOM files and folders.

Each file is read the way the SCP reads a received instance (header only), so
the resources equal what the live pipeline would emit for the same instances.
A file without a Part 10 header (no preamble, no file meta: what some archives and
older tools write) is read as a bare dataset too, but only when the dataset identifies
itself (valid SOP Class, SOP Instance, Study and Series Instance UIDs): anything else
that merely happens to parse is not taken for DICOM.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from scp.header import Header, extract_header, read_header
from workers.dicomjson import valid_uid
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


#: What a dataset without a Part 10 header must carry to be taken as an instance.
_IDENTITY = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class NotDicom(InvalidDicomError):
    """A file that is not DICOM: neither Part 10 nor a dataset that identifies itself."""


def read_file(path: str | Path) -> Header:
    """The header of a DICOM file: Part 10 as the SCP reads it; else the bare dataset
    (pydicom's ``force``, which also finds the transfer syntax) if it identifies itself."""
    try:
        return read_header(path)
    except InvalidDicomError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a forced read warns about what it guesses
            ds = dcmread(path, force=True, stop_before_pixels=True)
            identity = [ds.get(keyword) for keyword in _IDENTITY]
            header = extract_header(ds)
    except Exception as exc:  # whatever a forced read of a non-DICOM file raises
        raise NotDicom(f"not DICOM ({type(exc).__name__})") from exc
    if not all(isinstance(uid, str) and valid_uid(uid) for uid in identity):
        raise NotDicom("no Part 10 header and no SOP/study/series identity")
    logger.info("file=%s has no Part 10 header: read as a bare dataset", path)
    return header


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
            summary = summarize(
                read_file(path).json,
                with_technique=options.needs_technique,
                site_zone=options.site_zone,
            )
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
