"""Atomic output files."""

from __future__ import annotations

import stat
from pathlib import Path

from workers.output import write_resource


def test_write_is_atomic_and_readable(tmp_path: Path) -> None:
    resource = {"resourceType": "ImagingStudy", "id": "1.2.3", "status": "available"}
    path = write_resource(tmp_path, resource)
    assert path == tmp_path / "ImagingStudy" / "1.2.3.json"
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600, oct(mode)  # SCP2FHIR_FILE_ACCESS=private, the default
    write_resource(tmp_path, resource | {"status": "cancelled"})
    assert '"cancelled"' in path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["1.2.3.json"], "no temporary file left"
