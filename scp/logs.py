"""Logging set-up shared by every scp2fhir process.

Log lines name things by identifier first (``assoc=``, ``study=``, ``sop=``) and never
carry patient data. Two options: ``json`` writes one JSON object per line for log
shippers; ``hash_uids`` replaces every DICOM UID in a message by a short, stable hash,
for sites that treat UIDs themselves as identifying.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re

#: A DICOM UID: at least four dot-separated numeric components (keeps versions and IPs out).
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")


def hash_uid(uid: str) -> str:
    return "uid:" + hashlib.sha256(uid.encode()).hexdigest()[:12]


class HashUids(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hashed = _UID.sub(lambda m: hash_uid(m.group(0)), message)
        if hashed != message:
            record.msg, record.args = hashed, None
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process_name = process

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "process": self.process_name,
            "pid": record.process,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, process: str, fmt: str = "text", hash_uids: bool = False) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        handler.setFormatter(
            logging.Formatter(
                f"%(asctime)s %(levelname)s {process}[%(process)d] %(name)s: %(message)s"
            )
        )
    if hash_uids:
        handler.addFilter(HashUids())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level))
    # pynetdicom logs every PDU at INFO; its own errors still come through.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, getattr(logging, level)))
