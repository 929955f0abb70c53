"""``scp2fhir convert``: the pipeline's mapping, offline, over DICOM files and folders.

Each file is read the way the SCP reads a received instance (header only), so
the resources equal what the live pipeline would emit for the same instances.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from scp.header import extract_header, read_dataset
from workers.fold import fold_all
from workers.mapping import FhirVersion, imaging_study
from workers.summary import InstanceSummary, summarize

logger = logging.getLogger(__name__)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def convert(paths: Iterable[Path], version: FhirVersion, out: TextIO) -> tuple[int, int]:
    """Write one ImagingStudy per study as NDJSON to ``out``.

    Returns (studies written, files that could not be read)."""
    summaries: list[InstanceSummary] = []
    unreadable = 0
    for path in iter_files(paths):
        try:
            summaries.append(summarize(extract_header(read_dataset(path)).json))
        except Exception as exc:
            unreadable += 1
            logger.warning("file=%s skipped: %s", path, type(exc).__name__)
    aggregates = fold_all(summaries)
    for study_uid in sorted(aggregates):
        resource = imaging_study(aggregates[study_uid], version)
        out.write(json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n")
    return len(aggregates), unreadable
