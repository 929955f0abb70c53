"""C-STORE status codes scp2fhir answers with (PS3.4 Annex B.2.3, PS3.7 Annex C).

Every failure path in the SCP maps to one of these, with a short Error Comment
(0000,0902) so the sender's log says what went wrong without the operator
having to read ours.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

SUCCESS = 0x0000
#: Warning "Elements Discarded": stored, but some elements could not be decoded.
ELEMENTS_DISCARDED = 0xB006
#: Refused: Out of Resources. The header could not be stored (Redis unreachable
#: or refusing writes); the sender should retry later.
OUT_OF_RESOURCES = 0xA700
#: Error: Data Set does not match SOP Class (the dataset's SOP Class UID differs
#: from the one the C-STORE request announced).
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: Error: Cannot understand: the dataset could not be decoded at all.
CANNOT_DECODE = 0xC210
#: Error: Cannot understand: a UID that identifies the instance is missing or invalid.
MISSING_OR_INVALID_UID = 0xC220
#: Error: Cannot understand: the dataset's SOP Instance UID differs from the request's.
SOP_INSTANCE_UID_MISMATCH = 0xC221
#: Error: Cannot understand: the header cannot be read within the size limits (a deflated
#: dataset inflating beyond SCP2FHIR_MAX_INFLATED_BYTES before its pixel data). Not
#: 0xA7xx: a resend would fail the same way. (pynetdicom uses 0xC211 for a handler that
#: raised.)
HEADER_TOO_LARGE = 0xC230
#: Error: Cannot understand: an unexpected internal error (logged with a traceback).
INTERNAL_ERROR = 0xC2FF


def status(code: int, comment: str | None = None) -> Dataset:
    """A status dataset; the comment is cut to the 64 characters Error Comment (LO) allows."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds
