"""One association with the PACS, opened on first use and again after a fault.

:class:`Session` wraps pynetdicom's SCU side: it proposes the Study Root C-FIND and
C-MOVE contexts, applies the timeouts of :class:`~scp.pacs.settings.PacsSettings`, and
turns every way an exchange can fail into an exception of :mod:`scp.pacs.errors`.
pynetdicom reports a lost peer or an expired DIMSE timeout as an empty status; the
session tells the two apart by how long the answer took.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from scp.pacs.errors import AssociationRefused, ConnectionLost, PacsTimeout, PacsUnreachable
from scp.pacs.settings import PacsAddress, PacsSettings

logger = logging.getLogger(__name__)

FIND = StudyRootQueryRetrieveInformationModelFind
MOVE = StudyRootQueryRetrieveInformationModelMove


class Session:
    """An association with one PACS for C-FIND and C-MOVE (Study Root). Use as a context
    manager; the association opens on the first request and is released at the end."""

    def __init__(self, address: PacsAddress, settings: PacsSettings) -> None:
        self.address = address
        self.settings = settings
        self._assoc: Any = None

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close(abort=kind is not None)

    def close(self, abort: bool = False) -> None:
        """Release the association (abort it after a fault: the PACS may be mid-answer)."""
        assoc, self._assoc = self._assoc, None
        if assoc is None or not assoc.is_established:
            return
        if abort:
            assoc.abort()
        else:
            assoc.release()

    def abort(self) -> None:
        """Abort from another thread (Ctrl-C): a blocked request then ends at once."""
        assoc = self._assoc
        if assoc is not None and assoc.is_established:
            assoc.abort()

    def find(self, identifier: Dataset) -> Iterator[tuple[int, Dataset | None, Dataset]]:
        """Send one C-FIND; yield (status, identifier, status dataset) per response.
        A lost association or an expired timeout raises instead of yielding."""
        assoc = self._association()
        responses = assoc.send_c_find(identifier, FIND)
        yield from self._responses(responses, self.settings.timeout, "C-FIND")

    def move(self, identifier: Dataset, destination: str) -> Iterator[tuple[int, Dataset]]:
        """Send one C-MOVE; yield (status, status dataset) per response."""
        assoc = self._association()
        assoc.dimse_timeout = self.settings.move_timeout
        try:
            responses = assoc.send_c_move(identifier, destination, MOVE)
            for status, _, dataset in self._responses(
                responses, self.settings.move_timeout, "C-MOVE"
            ):
                yield status, dataset
        finally:
            if self._assoc is not None:
                assoc.dimse_timeout = self.settings.timeout

    def _responses(
        self, responses: Iterator[tuple[Dataset, Dataset | None]], timeout: float, what: str
    ) -> Iterator[tuple[int, Dataset | None, Dataset]]:
        last = time.monotonic()
        for status, identifier in responses:
            if "Status" not in status:
                waited = time.monotonic() - last
                self._assoc = None
                if waited >= timeout * 0.95:
                    raise PacsTimeout(
                        f"{self.address}: no {what} response within {timeout:g} s "
                        "(SCP2FHIR_PACS_TIMEOUT / SCP2FHIR_PACS_MOVE_TIMEOUT)"
                    )
                raise ConnectionLost(
                    f"{self.address}: the association ended during {what}: the PACS aborted "
                    f"it (does it allow {what} from {self.settings.calling_ae}?), closed the "
                    "connection or sent an invalid response"
                )
            last = time.monotonic()
            yield int(status.Status), identifier, status

    def _association(self) -> Any:
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        self._assoc = None
        ae = AE(ae_title=self.settings.calling_ae)
        ae.add_requested_context(FIND)
        ae.add_requested_context(MOVE)
        timeout = self.settings.timeout
        ae.connection_timeout = timeout
        ae.acse_timeout = timeout
        ae.dimse_timeout = timeout
        ae.network_timeout = max(timeout, self.settings.move_timeout) + 60
        seen: dict[str, Any] = {}

        def opened(event: evt.Event) -> None:
            seen["connected"] = True

        def received(event: evt.Event) -> None:
            seen["primitive"] = event.primitive  # type: ignore[attr-defined]

        began = time.monotonic()
        assoc = ae.associate(
            self.address.host,
            self.address.port,
            ae_title=self.address.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, opened), (evt.EVT_ACSE_RECV, received)],
        )
        if assoc.is_established:
            if not any(cx.abstract_syntax == FIND for cx in assoc.accepted_contexts):
                assoc.release()
                raise AssociationRefused(
                    f"{self.address}: the PACS does not offer Study Root C-FIND to "
                    f"{self.settings.calling_ae}"
                )
            self._assoc = assoc
            return assoc
        if not seen.get("connected"):
            raise PacsUnreachable(
                f"{self.address}: cannot connect to {self.address.host}:{self.address.port} "
                f"(refused, unreachable or no answer within {timeout:g} s)"
            )
        if assoc.is_rejected:
            primitive = seen.get("primitive")
            reason = (
                f"{primitive.result_str}, {primitive.source_str}: {primitive.reason_str}"
                if primitive is not None and hasattr(primitive, "reason_str")
                else "rejected"
            )
            raise AssociationRefused(
                f"{self.address}: association refused ({reason}); the PACS must know the "
                f"calling AE {self.settings.calling_ae} (SCP2FHIR_PACS_CALLING_AE) and answer "
                f"to {self.address.ae_title}"
            )
        if time.monotonic() - began >= timeout * 0.95:
            raise PacsTimeout(f"{self.address}: no answer to the association within {timeout:g} s")
        raise AssociationRefused(
            f"{self.address}: the PACS aborted the association request or accepted none of "
            "the Study Root C-FIND/C-MOVE contexts"
        )


def describe(status: int, dataset: Dataset | None) -> str:
    """``0xC000`` plus the Error Comment the PACS sent, if any (one line)."""
    comment = ""
    if dataset is not None:
        try:
            comment = str(dataset.get("ErrorComment", "") or "").strip().replace("\n", " ")
        except Exception:  # an undecodable comment is no reason to hide the status
            comment = ""
    return f"0x{status:04X}" + (f" ({comment[:200]})" if comment else "")


__all__ = ["FIND", "MOVE", "Session", "describe"]
