"""scp2fhir as a DICOM client of a PACS: ask what it holds (C-FIND), have it send what
scp2fhir lacks (C-MOVE). Used by ``scp2fhir reconcile`` and ``scp2fhir backfill``
(:mod:`workers.reconcile`).

* :mod:`scp.pacs.settings` -- :class:`PacsAddress` (``AET@host:port``), :class:`PacsSettings`
* :mod:`scp.pacs.association` -- :class:`Session`, one association, its timeouts
* :mod:`scp.pacs.query` -- :func:`studies_on` a day, :func:`series_of` a study
* :mod:`scp.pacs.move` -- :func:`move_study` to scp2fhir's own SCP
* :mod:`scp.pacs.errors` -- the exception tree (:class:`PacsError` and its kinds)
"""

from scp.pacs.association import Session
from scp.pacs.errors import (
    AssociationRefused,
    BadAnswer,
    ConnectionLost,
    MoveFailed,
    PacsError,
    PacsTimeout,
    PacsUnreachable,
    QueryFailed,
)
from scp.pacs.move import MoveResult, move_study
from scp.pacs.query import PacsSeries, PacsStudy, series_of, studies_on
from scp.pacs.settings import PacsAddress, PacsSettings

__all__ = [
    "AssociationRefused",
    "BadAnswer",
    "ConnectionLost",
    "MoveFailed",
    "MoveResult",
    "PacsAddress",
    "PacsError",
    "PacsSeries",
    "PacsSettings",
    "PacsStudy",
    "PacsTimeout",
    "PacsUnreachable",
    "QueryFailed",
    "Session",
    "move_study",
    "series_of",
    "studies_on",
]
