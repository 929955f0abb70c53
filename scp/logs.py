"""Logging set-up shared by every scp2fhir process."""

from __future__ import annotations

import logging


def configure(level: str, process: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format=f"%(asctime)s %(levelname)s {process}[%(process)d] %(name)s: %(message)s",
    )
    # pynetdicom logs every PDU at INFO; its own errors still come through.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, getattr(logging, level)))
