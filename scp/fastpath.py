"""A C-STORE path that skips pynetdicom's per-message machinery (issue #15).

Stock pynetdicom takes every P-DATA-TF PDU of an established association through the
PDU decoder, the DUL state machine (one ``Evt10`` and one ``DT-2`` per PDU), the DIMSE
message assembler, the DIMSE queue and the association thread, where the storage
service class calls our handler and the response goes back the same way (``Evt9``,
``DT-1``). :class:`FastStore` does that for the common case in the DUL reactor's own
thread, with the PDU bytes :func:`scp.pdu_reader.read_pdu` already read:

* the command PDVs of a message are kept (as whole PDUs) until the last command
  fragment; then the command set is decoded by pynetdicom itself
  (``DIMSEMessage.message_to_primitive``). A C-STORE-RQ with a dataset, on an accepted
  context whose SOP class pynetdicom would serve with its storage service class, while
  pynetdicom has no other message in hand and nothing listens to the events it would
  skip, is taken; anything else is *replayed*: the kept PDUs go to pynetdicom exactly as
  if they had just been read (:meth:`scp.transport.PromptDUL._dispatch`).
* the dataset PDVs are kept as :class:`scp.spool.SpoolingDIMSE` keeps them for
  pynetdicom's path: in memory, rolled over beyond its ``rollover_bytes`` (with
  ``SCP2FHIR_SPOOL=file``) to a ``NamedTemporaryFile`` with the File Meta Information
  pynetdicom writes; a spool write that fails is answered 0xA700 as it does.
* the finished request goes to pynetdicom's own ``StorageServiceClass.SCP`` (the same
  handler call, status validation and response primitive), whose response
  :meth:`scp.transport.PromptDUL.send_pdu` writes to the socket at once, being in the
  reactor's thread.
* anything unusual once the dataset is arriving (an undecodable PDU, an empty PDV, a
  command fragment, any other PDU type) *hands the message over*
  (:meth:`FastStore.hand_over`): pynetdicom's DIMSE provider gets it in the state it
  would have built itself (the decoded command, the same spool file or buffer), and
  the PDU goes to pynetdicom, which does with it what it always did.

``tests/test_fastpath.py`` runs valid and hostile PDU streams through both paths and
compares what the peer gets, what Redis holds and the log lines.

``SCP2FHIR_FAST_PATH=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from io import BytesIO
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import TYPE_CHECKING, Any

from pydicom import config
from pydicom.uid import UID
from pynetdicom import _config, evt
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from scp.spool import _SPOOL_FAILED, SpoolingDIMSE, delete_spool_file, write_part10_head
from scp.store_command import encode_file_meta, parse_store_command

if TYPE_CHECKING:
    from scp.transport import PromptDUL

logger = logging.getLogger(__name__)

#: Events whose listeners would see less with the fast path: with any bound, pynetdicom
#: handles the message.
_WATCHED = (
    evt.EVT_DATA_RECV,
    evt.EVT_PDU_RECV,
    evt.EVT_DIMSE_RECV,
    evt.EVT_DIMSE_SENT,
    evt.EVT_PDU_SENT,
    evt.EVT_FSM_TRANSITION,
)
#: Command PDUs kept before a command is given up to pynetdicom (bytes).
_MAX_KEPT = 64 * 1024
_PDV_HEAD = struct.Struct(">LB")


#: Whether associations accepted from now on use it (``SCP2FHIR_FAST_PATH``, set by
#: :func:`scp.server.serve`).
ENABLED = True


def enabled() -> bool:
    """Whether the fast path is on."""
    return ENABLED


def _valid_uid(text: str) -> UID:
    """A UID :func:`scp.store_command.parse_store_command` has checked, as pydicom's
    ``UID`` would hold it, without validating it once more."""
    return UID(text, validation_mode=config.IGNORE)


#: SOP Class UIDs seen, built once (at most as many as pynetdicom knows, and a few).
_CLASS_UIDS: dict[str, UID] = {}


def _class_uid(text: str) -> UID:
    uid = _CLASS_UIDS.get(text)
    if uid is None:
        uid = _valid_uid(text)
        if len(_CLASS_UIDS) < 4096:
            _CLASS_UIDS[text] = uid
    return uid


def split_pdvs(pdu: bytes | bytearray | memoryview) -> list[tuple[int, memoryview]] | None:
    """The PDV items (context id, value) of a whole P-DATA-TF PDU, or None where
    pynetdicom's decoder (``P_DATA_TF._generate_items``) would fail or a value is empty
    (its DIMSE layer reads the first byte of each)."""
    view = memoryview(pdu)
    end = len(view)
    offset = 6
    items = []
    while offset < end:
        if offset + 5 > end:
            return None
        length, context_id = _PDV_HEAD.unpack_from(view, offset)
        if length < 2 or offset + 4 + length > end:
            return None
        items.append((context_id, view[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return items


class _Incoming:
    """A C-STORE-RQ taken by the fast path, its dataset arriving."""

    def __init__(self, primitive: Any, context: Any, command: bytes) -> None:
        self.primitive = primitive
        self.context = context
        self.command = command  # the encoded command set, for a hand-over
        self.file: Any = None
        self.buffer: BytesIO | None = None
        self.transfer_syntax = ""
        self.failed = False  # the spool write failed: the rest is dropped

    def open(self, transfer_syntax: str) -> None:
        # In memory first, rolled over to a spool file once it outgrows
        # SpoolingDIMSE.rollover_bytes, as SpoolingDIMSE does for pynetdicom's path: a
        # CT slice never touches the disk, a 200 MiB object streams to it.
        self.transfer_syntax = transfer_syntax
        self.buffer = BytesIO()

    def write(self, data: memoryview) -> None:
        if self.failed:
            return
        if self.buffer is not None:
            self.buffer.write(data)
            limit = SpoolingDIMSE.rollover_bytes
            if limit is not None and self.buffer.tell() > limit:
                self._roll_over()
            return
        self.file.write(data)

    def _roll_over(self) -> None:
        """Move what has arrived to a Part 10 file in the temporary (spool) folder, laid
        out as pynetdicom's DIMSEMessage.decode_msg writes its chunked datasets."""
        buffered, self.buffer = self.buffer, None
        assert buffered is not None
        # Named before it is written to: a write that fails leaves a file to delete.
        self.file = NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")  # noqa: SIM115
        if self.transfer_syntax.isascii():
            self.file.write(
                encode_file_meta(
                    self.primitive.AffectedSOPClassUID,
                    self.primitive.AffectedSOPInstanceUID,
                    self.transfer_syntax,
                )
            )
        else:
            write_part10_head(
                self.file,
                self.primitive.AffectedSOPClassUID,
                self.primitive.AffectedSOPInstanceUID,
                self.transfer_syntax,
            )
        self.file.write(buffered.getbuffer())

    def discard(self) -> None:
        delete_spool_file(self.file)
        self.file = None


class FastStore:
    """The fast path of one association's DUL reactor; see the module docstring."""

    def __init__(self, dul: PromptDUL) -> None:
        self.dul = dul
        self._kept: list[bytearray] = []
        self._kept_bytes = 0
        self._incoming: _Incoming | None = None
        #: While a response is sent from the reactor's thread (PromptDUL.send_pdu).
        self.responding = False

    def take(self, pdu: bytearray) -> bool:
        """Whether the fast path took this P-DATA-TF PDU (else pynetdicom gets it)."""
        if self._incoming is not None:
            if not self._established():
                # Aborted meanwhile (the idle timer, an A-ABORT sent): pynetdicom ignores
                # P-DATA from here on (AA-6), so the dataset arriving is never served.
                self.close()
                return False
            return self._continue(pdu)
        if not self._kept and not self._ready():
            return False
        items = split_pdvs(pdu)
        if not items:
            return self._give_up(pdu)
        last_command = None
        for index, (_, value) in enumerate(items):
            control = value[0]
            if not control & 0x01:
                return self._give_up(pdu)  # a dataset before its command: pynetdicom's
            if control & 0x02:
                last_command = index
                break
        self._kept.append(pdu)
        self._kept_bytes += len(pdu)
        if last_command is None:
            if self._kept_bytes > _MAX_KEPT:
                self._replay()
            return True
        rest = items[last_command + 1 :]
        if any(value[0] & 0x01 for _, value in rest):
            self._replay()
            return True
        incoming = self._command(items[last_command][0])
        if incoming is None:
            self._replay()
            return True
        self._kept.clear()
        self._kept_bytes = 0
        self._incoming = incoming
        try:
            incoming.open(incoming.context.transfer_syntax[0])
        except OSError as exc:
            self._spool_failed(exc)
        self._data(rest)
        return True

    def close(self) -> None:
        """The association ended: a dataset still arriving will not be served."""
        if self._incoming is not None:
            self._incoming.discard()
            self._incoming = None
        self._kept.clear()

    # -- the command -----------------------------------------------------------------

    def _ready(self) -> bool:
        """Whether a new message may take the fast path: pynetdicom holds none."""
        dul = self.dul
        assoc = dul.assoc
        dimse = assoc.dimse
        return (
            self._established()
            and not assoc._sent_release
            and dimse.message is None
            and getattr(dimse, "_unspooled", None) is None  # scp.spool.SpoolingDIMSE
            and dul.event_queue.empty()
            and dimse.msg_queue.unfinished_tasks == 0
            and not any(assoc.get_handlers(event) for event in _WATCHED)
        )

    def _established(self) -> bool:
        return bool(
            self.dul.assoc.is_established and self.dul.state_machine.current_state == "Sta6"
        )

    def _command(self, context_id: int) -> _Incoming | None:
        """The C-STORE-RQ the kept command fragments make, if the fast path serves it.
        Nothing here logs or changes anything: what it declines, pynetdicom gets whole."""
        encoded = bytearray()
        for pdu in self._kept:
            for _, value in split_pdvs(pdu) or ():
                if value[0] & 0x01:
                    encoded += value[1:]
        assoc = self.dul.assoc
        context = assoc._accepted_cx.get(context_id)
        if context is None:
            return None
        command = parse_store_command(bytes(encoded))
        if command is None:
            return None
        sop_class = _class_uid(command.sop_class_uid)
        # As Association._serve_request picks the service class.
        class_uid = sop_class
        with contextlib.suppress(KeyError):
            class_uid = assoc.acceptor.accepted_common_extended[class_uid][0]
        if _config.UNRESTRICTED_STORAGE_SERVICE:
            class_uid = UID("1.2.840.10008.5.1.4.1.1.1")
        if uid_to_service_class(class_uid) is not StorageServiceClass:
            return None
        # The request primitive as DIMSEMessage.message_to_primitive sets it. Its UID
        # setters build and validate each UID twice (about a tenth of this path's CPU);
        # parse_store_command took only UIDs they accept, so the values are set as
        # they would set them.
        primitive = C_STORE()
        primitive._affected_sop_class_uid = sop_class
        primitive.MessageID = command.message_id
        if command.priority is not None:
            primitive.Priority = command.priority
        primitive._affected_sop_instance_uid = _valid_uid(command.sop_instance_uid)
        return _Incoming(primitive, context, bytes(encoded))

    def _give_up(self, pdu: bytearray) -> bool:
        if not self._kept:
            return False
        self._kept.append(pdu)
        self._replay()
        return True

    def _replay(self) -> None:
        """Hand the kept PDUs to pynetdicom, as read."""
        kept, self._kept = self._kept, []
        self._kept_bytes = 0
        for pdu in kept:
            self.dul._dispatch(pdu)

    # -- the dataset -----------------------------------------------------------------

    def _continue(self, pdu: bytearray) -> bool:
        items = split_pdvs(pdu)
        if items is None or any(value[0] & 0x01 for _, value in items):
            # Undecodable, an empty PDV, a command inside the dataset: whatever
            # pynetdicom makes of it, it does from the state it would be in.
            self.hand_over()
            return False
        self._data(items)
        return True

    def flush(self) -> None:
        """Before a PDU pynetdicom gets (another type than P-DATA-TF): give it what the
        fast path holds, so that it is in the state it would be in."""
        if self._incoming is not None:
            self.hand_over()
        elif self._kept:
            self._replay()

    def hand_over(self) -> None:
        """Give pynetdicom the message whose dataset is arriving, as its DIMSE provider
        would hold it at this point (``DIMSEMessage.decode_msg``): the command decoded,
        the dataset so far in the same spool file or buffer, or, if that failed,
        dropping the rest (:class:`scp.spool.SpoolingDIMSE`)."""
        incoming, self._incoming = self._incoming, None
        assert incoming is not None
        message: Any = DIMSEMessage()
        message.encoded_command_set = BytesIO(incoming.command)
        # At its end, as pynetdicom leaves it: a command fragment after this appends.
        message.encoded_command_set.seek(0, 2)
        message.command_set = decode(BytesIO(incoming.command), True, True)
        message.context_id = incoming.context.context_id
        message.__class__ = C_STORE_RQ
        dimse: Any = self.dul.assoc.dimse
        if incoming.failed:
            dimse._unspooled = message
            dimse.message = message  # as SpoolingDIMSE leaves it
            return
        if incoming.buffer is not None:
            message.data_set = incoming.buffer
        else:
            message._data_set_file = incoming.file
            message._data_set_path = Path(incoming.file.name)
        dimse.message = message

    def _data(self, items: list[tuple[int, memoryview]]) -> None:
        incoming = self._incoming
        assert incoming is not None
        for _, value in items:
            try:
                incoming.write(value[1:])
                if value[0] & 0x02 and incoming.file is not None and not incoming.failed:
                    # Now, not at close() in _serve: a full disk is answered 0xA700.
                    incoming.file.flush()
            except OSError as exc:
                self._spool_failed(exc)
            if value[0] & 0x02:
                # pynetdicom ignores PDVs after the last fragment in the same PDU, too.
                self._serve()
                return

    def _spool_failed(self, exc: OSError) -> None:
        incoming = self._incoming
        assert incoming is not None
        logger.error(
            "assoc=%s sop=%s spool write failed (%s): refusing it with 0xA700",
            self.dul.assoc.name,
            incoming.primitive.AffectedSOPInstanceUID or "",
            os.strerror(exc.errno) if exc.errno else type(exc).__name__,
        )
        incoming.discard()
        incoming.failed = True

    def _serve(self) -> None:
        incoming, self._incoming = self._incoming, None
        assert incoming is not None
        primitive = incoming.primitive
        if incoming.failed:
            primitive.DataSet = BytesIO()
            setattr(primitive, _SPOOL_FAILED, True)
        elif incoming.buffer is not None:
            primitive.DataSet = incoming.buffer
        else:
            incoming.file.close()
            primitive.DataSet = BytesIO()
            primitive._dataset_file = incoming.file
            primitive._dataset_path = Path(incoming.file.name)
        primitive._context_id = incoming.context.context_id
        assoc = self.dul.assoc
        self.responding = True
        # The association thread checks the idle timer; on pynetdicom's path it runs the
        # handler itself and so never aborts during it. Here it would, while the
        # handler waits for Redis, and the stored instance would lose its Success.
        idle = self.dul._idle_timer
        timeout, idle.timeout = idle.timeout, None
        try:
            assoc.dimse.cancel_req = {}
            StorageServiceClass(assoc).SCP(primitive, incoming.context)
        except Exception as exc:
            logger.exception("assoc=%s the storage service failed", assoc.name)
            self.dul._abort_on_error(exc)
        finally:
            # Restarted before its timeout is back: the association thread never sees
            # the old start with the timeout restored.
            idle.restart()
            idle.timeout = timeout
            self.responding = False
            if not incoming.failed and incoming.file is not None:
                delete_spool_file(incoming.file)  # (SCP deletes it, but not if it raised)
