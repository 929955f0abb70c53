"""Writing resources to the output folder, atomically: a reader sees the old file or the
new one, never half of either, and a crash leaves no partial file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from scp.file_access import file_mode, make_dirs


def resource_path(output_dir: Path, resource: dict[str, Any]) -> Path:
    return output_dir / str(resource["resourceType"]) / f"{resource['id']}.json"


def write_resource(output_dir: Path, resource: dict[str, Any], access: str = "private") -> Path:
    """Write ``resource`` under ``output_dir`` with the file modes of ``access``
    (``SCP2FHIR_FILE_ACCESS``, :mod:`scp.file_access`)."""
    path = resource_path(output_dir, resource)
    make_dirs(path.parent, access)
    data = json.dumps(resource, indent=2, ensure_ascii=False).encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # Set before the first byte is written: the temporary file is renamed into place, and
    # never holds data with wider permissions than the final file.
    os.fchmod(fd, file_mode(access))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
