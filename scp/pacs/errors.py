"""What can go wrong talking to a PACS, as one exception tree.

::

    PacsError                  any fault of the exchange; str() is one line for the operator
    ├── PacsUnreachable        no TCP connection (refused, no route, connect timeout)
    ├── AssociationRefused     the PACS rejected or aborted the association request, or
    │                          accepted none of the presentation contexts asked for
    ├── PacsTimeout            connected, but an answer did not come within its timeout
    ├── ConnectionLost         the association ended mid-request (the PACS aborted it,
    │                          closed the connection, or sent what pynetdicom rejects)
    ├── BadAnswer              an answer that cannot be used: undecodable, a record without a
    │                          valid UID or with a count that is not a number, a protocol error
    ├── QueryFailed            C-FIND ended with a failure status (0xA700, 0xC000, ...)
    └── MoveFailed             C-MOVE ended with a failure status (0xA701, 0xA702, 0xA801,
                               0xC000, ...) or a warning with failed sub-operations (0xB000);
                               carries the sub-operation counts

:class:`PacsUnreachable`, :class:`AssociationRefused`, :class:`PacsTimeout` and
:class:`ConnectionLost` are *connection* faults (:attr:`PacsError.fatal`): a backfill
stops at the first, since the next study would meet the same PACS. The others concern
one query or one study.
"""

from __future__ import annotations


class PacsError(Exception):
    """A fault talking to the PACS. ``str()`` is one line naming what happened."""

    #: Whether the PACS as a whole is unusable (stop), rather than one request failed.
    fatal = False


class PacsUnreachable(PacsError):
    fatal = True


class AssociationRefused(PacsError):
    fatal = True


class PacsTimeout(PacsError):
    fatal = True


class ConnectionLost(PacsError):
    fatal = True


class BadAnswer(PacsError):
    pass


class QueryFailed(PacsError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class MoveFailed(PacsError):
    def __init__(
        self, message: str, status: int, completed: int, failed: int, warning: int
    ) -> None:
        super().__init__(message)
        self.status = status
        self.completed = completed
        self.failed = failed
        self.warning = warning
