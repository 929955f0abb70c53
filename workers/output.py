"""Writing resources to the output folder, atomically: a reader sees the old file or the
new one, never half of either, and a crash leaves no partial file behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def resource_path(output_dir: Path, resource: dict[str, Any]) -> Path:
    return output_dir / str(resource["resourceType"]) / f"{resource['id']}.json"


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_resource(output_dir: Path, resource: dict[str, Any]) -> Path:
    path = resource_path(output_dir, resource)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(resource, indent=2, ensure_ascii=False).encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp creates 0600; readers of the folder (an EHR import job, a web server) expect
    # the permissions an ordinary file gets.
    os.fchmod(fd, 0o666 & ~_umask())
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
