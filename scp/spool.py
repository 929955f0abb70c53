"""The spool: where an SCP process keeps datasets on disk while they arrive.

With ``SCP2FHIR_SPOOL=file`` (the default) an incoming C-STORE dataset is kept in
memory up to :data:`ROLLOVER_BYTES` and rolls over to a temporary file (in
:data:`tempfile.tempdir`, written as pynetdicom writes its own chunked datasets) once it
grows beyond: a CT slice never touches the disk (a file per instance cost 0.7 ms of CPU),
a 200 MiB object still streams to disk. The handler then gets the file's path, reads the
header and pynetdicom deletes the file. Memory per association is bounded by
:data:`ROLLOVER_BYTES` plus one PDU. With ``memory`` there is no rollover.

* :class:`SpoolFolder`: one folder per SCP process under ``SCP2FHIR_SPOOL_DIR``,
  ``scp-<pid>-<random>``, locked (``flock``) for as long as the process runs. At start
  a process removes every sibling folder whose lock is free: the leftovers of a
  process that was killed (``kill -9``, a crash, a power cut) with datasets half
  received. Folders of processes still running are left alone, so several SCP
  processes may share the parent.
* :class:`SpoolingDIMSE`: does the rollover; and when a spool file cannot be written
  (disk full, quota, file size limit), pynetdicom's reactor fails and the association
  is aborted: the sender gets no status for the instance and loses its other transfers
  too. Here the file is deleted, the rest of that dataset is read and dropped, and the
  C-STORE is answered 0xA700 (out of resources; :func:`spool_failed`), so the sender
  retries it later and the association carries on.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu_primitives import P_DATA

from scp.store_response import success_pdata

logger = logging.getLogger(__name__)

_LOCK_SUFFIX = ".lock"
#: With ``SCP2FHIR_SPOOL=file``: a dataset larger than this goes to a spool file, a
#: smaller one stays in memory. 4 MiB holds any CT/MR/CR slice and most single-frame
#: objects; the memory it costs is this per association receiving at once.
ROLLOVER_BYTES = 4 * 1024 * 1024
#: Marks a C-STORE request whose dataset could not be spooled.
_SPOOL_FAILED = "_scp2fhir_spool_failed"


class SpoolFolder:
    """This process's spool folder under ``parent``; see the module docstring."""

    def __init__(self, path: Path, lock: int) -> None:
        self.path = path
        self._lock = lock
        self._previous_tempdir: str | None = None

    @classmethod
    def claim(cls, parent: Path) -> SpoolFolder:
        """Clear out what dead processes left in ``parent`` and make a folder of our own."""
        parent.mkdir(parents=True, exist_ok=True)
        removed = remove_leftovers(parent)
        if removed:
            logger.warning(
                "spool=%s removed %d folders left by SCP processes that are gone", parent, removed
            )
        name = f"scp-{os.getpid()}-{secrets.token_hex(4)}"
        # The lock first, then the folder: a folder whose lock is free is never one
        # being set up.
        lock = os.open(parent / (name + _LOCK_SUFFIX), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = parent / name
        path.mkdir(mode=0o700)
        return cls(path, lock)

    def use(self) -> None:
        """Make it where this process's temporary files go (pynetdicom's spool files
        among them: it names no folder of its own)."""
        self._previous_tempdir = tempfile.tempdir
        tempfile.tempdir = str(self.path)

    def close(self) -> None:
        """Remove the spool files and the folder, and give up the lock (at shutdown).
        Only files are removed: a folder someone else made in it (a test running the SCP
        in its own process) is left, and the folder with it."""
        if tempfile.tempdir == str(self.path):
            tempfile.tempdir = self._previous_tempdir
        if _empty(self.path):
            with contextlib.suppress(OSError):
                os.unlink(str(self.path) + _LOCK_SUFFIX)
        os.close(self._lock)


def remove_leftovers(parent: Path) -> int:
    """Remove the spool folders in ``parent`` whose process is gone; how many."""
    removed = 0
    for lock_path in parent.glob("scp-*" + _LOCK_SUFFIX):
        folder = lock_path.with_name(lock_path.name[: -len(_LOCK_SUFFIX)])
        try:
            lock = os.open(lock_path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its process is running
            os.close(lock)
            continue
        try:
            if _empty(folder):
                with contextlib.suppress(OSError):
                    lock_path.unlink()
                removed += 1
        finally:
            os.close(lock)
    return removed


def _empty(folder: Path) -> bool:
    """Remove the files in ``folder``, then the folder; whether it is gone. Only files:
    anything else in it is not ours (see :meth:`SpoolFolder.close`)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            if entry.is_file() and not entry.is_symlink():
                with contextlib.suppress(OSError):
                    entry.unlink()
    with contextlib.suppress(FileNotFoundError):
        try:
            folder.rmdir()
        except OSError:
            return False
    return True


def spool_failed(request: Any) -> bool:
    """Whether the dataset of this C-STORE request could not be spooled."""
    return bool(getattr(request, _SPOOL_FAILED, False))


class SpoolingDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, surviving a spool file that cannot be written."""

    #: While not None: the message whose spool failed, the rest of its dataset dropped.
    _unspooled: Any = None
    #: A dataset beyond this many bytes rolls over to a spool file; None: never (set by
    #: the server from ``SCP2FHIR_SPOOL``, like pynetdicom's own ``_config``).
    rollover_bytes: int | None = ROLLOVER_BYTES

    def send_msg(self, primitive: Any, context_id: int) -> None:
        # The C-STORE-RSP Success, pre-encoded (scp.store_response), unless something
        # listens for EVT_DIMSE_SENT (pynetdicom's logging at INFO): it wants the message.
        if not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            pdata = success_pdata(primitive, context_id, self.maximum_pdu_size)
            if pdata is not None:
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)

    def receive_primitive(self, primitive: P_DATA) -> None:
        if self._unspooled is not None:
            if _ends_dataset(primitive):
                self._deliver_unspooled()
            return
        try:
            super().receive_primitive(primitive)
            self._roll_over()
        except OSError as exc:
            message = self.message
            if message is None or getattr(message, "command_set", None) is None:
                raise
            logger.error(
                "assoc=%s sop=%s spool write failed (%s): refusing it with 0xA700",
                self.assoc.name,
                getattr(message.command_set, "AffectedSOPInstanceUID", ""),
                os.strerror(exc.errno) if exc.errno else type(exc).__name__,
            )
            _discard_file(message)
            message.data_set = BytesIO()  # what had arrived before the rollover
            self._unspooled = message
            if _ends_dataset(primitive):
                self._deliver_unspooled()

    def _roll_over(self) -> None:
        """Move the dataset arriving to a spool file once it outgrows
        :attr:`rollover_bytes`; pynetdicom then writes the rest of it there."""
        message = self.message
        limit = self.rollover_bytes
        if (
            limit is None
            or message is None
            or message._data_set_file is not None
            or not isinstance(message, C_STORE_RQ)
        ):
            return
        buffered = message.data_set
        if buffered is None or buffered.tell() <= limit:
            return
        command = message.command_set
        # Closed and deleted by pynetdicom once served, or by _discard_file.
        spooled: Any = tempfile.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")  # noqa: SIM115
        # Named before it is written to: a write that fails leaves a file to delete.
        message._data_set_file = spooled
        message._data_set_path = Path(spooled.name)
        # The Part 10 layout pynetdicom writes with STORE_RECV_CHUNKED_DATASET, so the
        # handler reads either the same way.
        write_part10_head(
            spooled,
            command.AffectedSOPClassUID,
            command.AffectedSOPInstanceUID,
            self.assoc._accepted_cx[int(message.context_id or 0)].transfer_syntax[0],
        )
        spooled.write(buffered.getbuffer())
        spooled.flush()
        message.data_set = BytesIO()

    def _deliver_unspooled(self) -> None:
        """Queue the C-STORE request, without a dataset and marked, for the handler."""
        message, self._unspooled = self._unspooled, None
        self.message = None
        message.data_set = BytesIO()
        message._data_set_file = None
        message._data_set_path = None
        request = message.message_to_primitive()
        setattr(request, _SPOOL_FAILED, True)
        self.msg_queue.put((message.context_id, request))


def _ends_dataset(primitive: P_DATA) -> bool:
    """Whether ``primitive`` carries the last fragment of a dataset (PS3.8 E.2)."""
    return any(
        data and data[0] & 0x01 == 0 and data[0] & 0x02
        for _, data in primitive.presentation_data_value_list
    )


def _discard_file(message: Any) -> None:
    delete_spool_file(getattr(message, "_data_set_file", None))
    message._data_set_file = None


def write_part10_head(spooled: Any, sop_class: str, sop_instance: str, syntax: str) -> None:
    """Write the preamble, ``DICM`` and the File Meta Information that pynetdicom puts at
    the head of its chunked datasets (``DIMSEMessage.decode_msg``), so the handler reads
    every spool file the same way, whichever path wrote it."""
    spooled.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(
        spooled,
        create_file_meta(
            sop_class_uid=UID(sop_class),
            sop_instance_uid=UID(sop_instance),
            transfer_syntax=UID(syntax),
        ),
    )


def delete_spool_file(spooled: Any) -> None:
    """Close and delete one of pynetdicom's spool files (a NamedTemporaryFile), if any."""
    if spooled is None:
        return
    with contextlib.suppress(OSError):
        spooled.close()
    with contextlib.suppress(OSError):
        os.unlink(spooled.name)
