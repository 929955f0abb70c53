"""pynetdicom's acceptor, without its 1 ms polling.

Stock pynetdicom runs two loops per association that each sleep 1 ms whenever
there is nothing to do: the DUL thread (between checks of the socket and of
its send queue) and the association reactor (between checks for a decoded DIMSE
message). Every C-STORE waits on both, which caps one association at about
320 instances/s on our machines whatever the handler costs.

The classes here change only *how those loops wait*, not what they do:

* :class:`PromptDUL` blocks in ``select()`` on the association's socket and on a wake-up
  pipe that :meth:`PromptDUL.send_pdu` writes to while it waits, so it reacts as soon as
  the peer sends or a response is queued; what that ``select()`` saw is what
  :class:`PromptSocket` answers when pynetdicom asks whether the socket is readable. It
  still wakes at least every :data:`TIMER_TICK` seconds to run the ARTIM and idle
  timers. It reads each PDU with :func:`scp.pdu_reader.read_pdu`, bounded in time (the
  ACSE timeout from the connection until the association is established, the DIMSE
  timeout per PDU after) and in size (``SCP2FHIR_MAX_PDU`` for P-DATA, 256 KiB for the
  rest), where pynetdicom would wait in ``recv()`` for as long as the peer likes and for
  as many bytes as it announces.
* :class:`PromptAssociation` blocks on the DIMSE message queue (again at most
  :data:`TIMER_TICK`) instead of sleeping before each non-blocking check; release,
  abort and timeout handling are unchanged.
* :class:`PromptRequestHandler` installs both on each accepted association and holds
  its slot (:class:`scp.access.Slots`): pending from accept, an association's once
  admitted. It is passed to pynetdicom through its public
  ``AE.make_server(request_handler=...)``.
* :class:`AcceptorServer` serves a listening socket bound beforehand
  (:func:`scp.prefork.listen`), which several acceptor processes share
  (:mod:`scp.prefork`); it refuses peers outside the allow-list at accept, and leaves
  the TLS handshake to the connection's own thread (pynetdicom does it in the accept
  loop, where one stalled peer blocks everyone).

The loop bodies follow pynetdicom 3.0's ``DULServiceProvider.run_reactor`` and
``Association._run_reactor`` step for step; ``tests/test_transport.py`` runs
associations through them (release, abort, timeouts, many PDUs) and the whole
suite uses them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import socketserver
import ssl
import struct
import threading
import time
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import (
    AssociationServer,
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from scp.access import AccessPolicy, Slots, Ticket, record_rejection
from scp.fastpath import FastStore, enabled
from scp.pdu_reader import (
    P_DATA_TF,
    PduTimeout,
    PduTooLarge,
    PeerClosed,
    UnknownPdu,
    bounds,
    read_pdu,
)
from scp.spool import SpoolingDIMSE, delete_spool_file

logger = logging.getLogger(__name__)

#: Connections the kernel queues before an acceptor takes them.
BACKLOG = 128
#: Longest a loop blocks before re-checking timers, release and abort (seconds).
TIMER_TICK = 0.01
#: With several acceptor processes, an acceptor waits this long per association it serves
#: before it takes a new connection (at most :data:`BALANCE_MAX_WAIT`), so the less busy
#: ones get it: the kernel wakes every process polling the shared socket and the first
#: to call accept() wins, which left 3 of 4 simultaneous associations in one process.
BALANCE_WAIT = 0.005
BALANCE_MAX_WAIT = 0.05
#: A-ABORT reasons (PS3.8 9.3.8): unrecognized PDU; invalid PDU parameter value.
_UNRECOGNIZED_PDU, _INVALID_PARAMETER = 0x01, 0x06


class PromptDUL(DULServiceProvider):
    """DUL reactor that waits on its socket and send queue instead of sleeping."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc)
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._opened = time.monotonic()
        self._max_p_data = assoc.acceptor.maximum_length or 0xFFFFFFFF
        self._waiting = False  # in select(): a queued PDU must wake it (see _wake)
        self._requested = False  # an A-ASSOCIATE-RQ arrived
        self._negotiated = False  # the association was established (and may have ended)
        self._fast = FastStore(self) if enabled() else None

    def send_pdu(self, primitive: Any) -> None:
        # The fast path's response, sent from this thread: straight to the socket, as
        # DT-1 would (nothing listens to EVT_PDU_SENT or the transition: FastStore).
        fast = self._fast
        if (
            fast is not None
            and fast.responding
            and type(primitive) is P_DATA
            and self.socket is not None
            and self.to_provider_queue.empty()
        ):
            self.socket.send(_encode_p_data(primitive))
            return
        super().send_pdu(primitive)
        # Only a loop blocked in select() needs the pipe: one about to block sees the
        # queued PDU first (_wait sets _waiting before it looks at the queue).
        if self._waiting:
            self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def _wake(self) -> None:
        # A full pipe means a wake-up is pending anyway; a closed one, that the loop ended.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")

    def _wait(self) -> None:
        """Block until the socket is readable, a PDU is queued to send, or a tick passes."""
        self._waiting = True
        try:
            if not self.to_provider_queue.empty():
                return
            sock = getattr(self.socket, "socket", None)
            fds: list[Any] = [self._wake_read]
            if sock is not None and sock.fileno() >= 0:
                fds.append(sock)
            try:
                ready, _, _ = select.select(fds, [], [], TIMER_TICK)
            except (OSError, ValueError):  # the socket closed under us
                return
        finally:
            self._waiting = False
        if sock is not None and sock in ready and isinstance(self.socket, PromptSocket):
            self.socket.readable = True
        if self._wake_read in ready:
            with contextlib.suppress(BlockingIOError, OSError):
                while os.read(self._wake_read, 4096):
                    pass

    def run_reactor(self) -> None:
        self._idle_timer.start()
        try:
            while not self._kill_thread:
                if not self.assoc._dul_ready.is_set():
                    self.assoc._dul_ready.set()
                if self.artim_timer.expired:
                    self.event_queue.put("Evt18")
                try:
                    if self._process_recv_primitive():
                        pass
                    elif self._is_transport_event():
                        self._idle_timer.restart()
                except Exception as exc:
                    self._abort_on_error(exc)
                    return
                try:
                    event = self.event_queue.get(block=False)
                except queue.Empty:
                    self._wait()
                    continue
                self.state_machine.do_action(event)
        finally:
            if self._fast is not None:
                self._fast.close()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _read_pdu_data(self) -> None:
        """Read one PDU, bounded (see :func:`scp.pdu_reader.read_pdu`), and queue its event
        as pynetdicom does. A PDU that is too large or not DICOM gets an A-ABORT, and the
        connection is closed at once; one that is late or cut short, only the close."""
        transport = self.socket
        sock = transport.socket if transport is not None else None
        if transport is None or sock is None:
            self.event_queue.put("Evt17")
            return
        peer = self.assoc.requestor.address
        if not self._negotiated and self.assoc.is_established:
            self._negotiated = True  # (for good: the phase after release is not the first)
        deadline, limits = bounds(
            self._negotiated,
            self._opened,
            self.assoc.acse_timeout,
            self.assoc.dimse_timeout,
            self._max_p_data,
        )
        try:
            data = read_pdu(sock, deadline, limits)
        except PduTooLarge as exc:
            self._record("pdu-too-large", f"aborted: {exc}")
            self._refuse(sock, _INVALID_PARAMETER)
            return
        except UnknownPdu as exc:
            self._record("protocol-error", f"aborted: not DICOM ({exc})")
            self._refuse(sock, _UNRECOGNIZED_PDU)
            return
        except PduTimeout:
            if self._negotiated:
                logger.warning("peer=%s closed: a PDU still incomplete at the DIMSE timeout", peer)
            else:
                self._record("acse-timeout", "closed: a PDU still incomplete at the ACSE timeout")
            self._close()
            return
        except PeerClosed:
            self._close()
            return
        fast = self._fast
        if fast is not None:
            if data[0] != P_DATA_TF:
                fast.flush()
            elif self._negotiated and fast.take(data):
                return
        self._dispatch(data)

    def _dispatch(self, data: bytearray) -> None:
        """Decode one PDU read and queue its event, as pynetdicom does."""
        peer = self.assoc.requestor.address
        try:
            pdu, event = self._decode_pdu(data)
        except Exception as exc:  # pynetdicom's decoders raise many kinds
            logger.warning("peer=%s sent an undecodable PDU (%s)", peer, type(exc).__name__)
            self.event_queue.put("Evt19")
            return
        if isinstance(pdu, A_ASSOCIATE_RQ):
            self._requested = True
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def _record(self, reason: str, detail: str) -> None:
        """Log and count a refusal once: :class:`scp.associations.AssociationLog` skips a
        connection whose refusal was recorded here."""
        assoc = self.assoc
        assoc.refusal_recorded = True  # type: ignore[attr-defined]
        record_rejection(reason, peer=str(assoc.requestor.address), assoc=assoc.name, detail=detail)

    def _refuse(self, sock: socket.socket, reason: int) -> None:
        """Send an A-ABORT (service provider) straight to the socket, then close."""
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = reason
        with contextlib.suppress(OSError):
            sock.settimeout(1.0)
            sock.sendall(abort.encode())
        self._close()

    def _close(self) -> None:
        """Close the connection (the state machine gets Evt17). Before an A-ASSOCIATE-RQ
        the association thread is waiting for one, up to the ACSE timeout: it is told
        there will be none."""
        if self.socket is not None:
            self.socket.close()
        if not self._requested:
            self.to_user_queue.put(cast(Any, None))

    def _abort_on_error(self, exc: Exception) -> None:
        # As pynetdicom does: bypass the state machine, send an A-ABORT and stop both loops.
        logger.error("exception in the DUL reactor, aborting the association: %s", exc)
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        if self.socket is not None:
            self.socket.send(abort.encode())
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._kill_thread = True


class PromptSocket(AssociationSocket):
    """pynetdicom's socket wrapper, told by :meth:`PromptDUL._wait` when its socket is
    readable: pynetdicom asks ``ready`` (a ``select()`` of its own) on every loop turn,
    two or three times per PDU, each a system call and a hand-over of the GIL."""

    #: select() in PromptDUL._wait found the socket readable; not yet read.
    readable = False

    @property
    def ready(self) -> bool:
        if self.socket is None or self._is_connected is False:
            return False
        if self.readable:
            self.readable = False
            return True
        # Closing (Sta13) pynetdicom reads what is left before it closes: ask the socket.
        if self.assoc.dul.state_machine.current_state == "Sta13":
            return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]
        # TLS may hold decrypted bytes that select() does not see.
        return isinstance(self.socket, ssl.SSLSocket) and bool(self.socket.pending())


class PromptAssociation(Association):
    """Acceptor association whose reactor blocks on the DIMSE queue instead of sleeping."""

    #: Its connection's slot (set by PromptRequestHandler).
    ticket: Ticket | None = None

    def _run_reactor(self) -> None:
        try:
            self._react()
        finally:
            self._discard_spooled()

    def _discard_spooled(self) -> None:
        """Delete spool files of datasets this association will never hand over.

        pynetdicom deletes a spooled dataset after its C-STORE was served; one still
        arriving (or queued) when the association is aborted or dropped stays on disk,
        at full size, for good.
        """
        files = []
        message = getattr(self.dimse, "message", None)
        if message is not None:
            files.append(getattr(message, "_data_set_file", None))
        while True:
            try:
                _, primitive = self.dimse.msg_queue.get_nowait()
            except queue.Empty:
                break
            files.append(getattr(primitive, "_dataset_file", None))
        for spooled in files:
            delete_spool_file(spooled)

    def _react(self) -> None:
        self._is_paused = False
        while not self._kill:
            # Pausing lets the send_*() methods take messages off the queue themselves.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            try:
                context_id, msg = self.dimse.msg_queue.get(timeout=TIMER_TICK)
            except queue.Empty:
                context_id, msg = None, None
            if msg:
                try:
                    self._serve_request(msg, cast(int, context_id))
                finally:
                    # The network timeout is for a peer that is idle, not for one waiting
                    # for our answer: a handler that waited long for Redis (a stalled
                    # fsync) must not have its answer cut off by the check below.
                    self.dul._idle_timer.restart()
                    # The fast path waits for the messages pynetdicom was given.
                    self.dimse.msg_queue.task_done()

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                logger.error("assoc=%s network timeout reached", self.name)
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class PromptRequestHandler(RequestHandler):
    """Accepts each association as a :class:`PromptAssociation` with a :class:`PromptDUL`."""

    server: AcceptorServer

    def handle(self) -> None:
        sock = self.request
        self.ticket = self.server.slots.open(sock, _address(self.client_address))
        # The TLS handshake runs here, in this connection's own thread and bounded by
        # the ACSE timeout, not in the accept loop (see AcceptorServer.get_request).
        if isinstance(sock, ssl.SSLSocket):
            try:
                sock.settimeout(self.server.ae.acse_timeout)
                sock.do_handshake()
                sock.settimeout(None)
            except OSError as exc:  # ssl.SSLError and timeouts are OSErrors
                record_rejection(
                    "tls-handshake", peer=str(self.client_address[0]), detail=type(exc).__name__
                )
                self.server.slots.close(self.ticket)
                return
        super().handle()

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        # pynetdicom builds the Association itself; we keep everything it set up and
        # swap in the two loops. The stock DUL was never started.
        assoc.__class__ = PromptAssociation
        cast(PromptAssociation, assoc).ticket = self.ticket
        self.ticket.threads.append(assoc)
        assoc.dimse.__class__ = SpoolingDIMSE
        stock = assoc.dul
        prompt = PromptDUL(assoc)
        prompt.socket = stock.socket
        if prompt.socket is not None:
            prompt.socket.__class__ = PromptSocket
        # The socket announced the new connection (Evt5) on the stock DUL's queue.
        while not stock.event_queue.empty():
            prompt.event_queue.put(stock.event_queue.get())
        assoc.dul = prompt
        # The timeout setters push their values into the DUL's timers: set them again
        # so the new DUL gets the AE's ACSE and network timeouts, not its defaults.
        assoc.acse_timeout = assoc.acse_timeout
        assoc.network_timeout = assoc.network_timeout
        return assoc


class _SharedListener(AssociationServer):
    """pynetdicom's server on a socket that is already bound.

    Through socketserver's documented hooks: ``server_bind`` swaps the socket
    ``TCPServer`` made for the given one, ``server_activate`` listens on it, and
    ``server_close`` only closes this process's descriptor: pynetdicom's
    ``shutdown(SHUT_RDWR)`` on a listening socket would stop accept() in every process
    that shares it.
    """

    listener: socket.socket

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.close()
        self.socket = self.listener
        self.server_address = self.listener.getsockname()

    def server_activate(self) -> None:
        # The port is bound, not yet listening (scp.prefork.listen): it listens once an
        # acceptor is ready to take connections, which is what `up` waits for before it
        # says ready. A second acceptor's listen() on the same socket changes nothing.
        assert self.socket is not None
        self.socket.listen(BACKLOG)

    def server_close(self) -> None:
        assert self.socket is not None
        self.socket.close()


class AcceptorServer(ThreadedAssociationServer, _SharedListener):
    """Association server on a listening socket shared by several SCP processes.

    Made with ``AE.make_server`` (not ``AE.start_server``), so the AE does not list it
    among its servers; :meth:`shutdown` does not expect it there. With a ``policy``,
    connections from peers it does not allow are closed at accept.
    """

    def __init__(
        self,
        *args: Any,
        listener: socket.socket,
        shared: bool = False,
        policy: AccessPolicy | None = None,
        slots: Slots | None = None,
        **kwargs: Any,
    ) -> None:
        self.listener = listener
        self.shared = shared
        self._serving = 0  # connections this process holds (see BALANCE_WAIT)
        self._serving_lock = threading.Lock()
        self.policy = policy or AccessPolicy()
        self.slots = slots or Slots(max_associations=10, max_pending=10)
        super().__init__(*args, **kwargs)
        # pynetdicom deep-copies these for every association it accepts (its
        # RequestHandler._create_association): with every storage class in every
        # transfer syntax that alone cost ~85 ms of CPU per association.
        self.contexts = SupportedContexts(self.contexts)

    def get_request(self) -> tuple[socket.socket, Any]:
        # pynetdicom completes the TLS handshake right here, in the one thread that
        # accepts every connection: a peer that connects and stalls would block all
        # others. Wrap without the handshake; PromptRequestHandler.handle does it.
        # The listener is non-blocking: when another acceptor process took the
        # connection first, accept() raises BlockingIOError, which serve_forever skips.
        assert self.socket is not None
        if self.shared and self._serving:
            time.sleep(min(self._serving * BALANCE_WAIT, BALANCE_MAX_WAIT))
        client, address = self.socket.accept()
        client.setblocking(True)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._serving_lock:
            self._serving += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._served()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._served()

    def _served(self) -> None:
        with self._serving_lock:
            self._serving -= 1

    def verify_request(self, request: Any, client_address: Any) -> bool:
        address = _address(client_address)
        if self.policy.peer_allowed(address):
            return True
        record_rejection("peer", peer=address)
        return False

    def shutdown(self) -> None:
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class SupportedContexts(list[PresentationContext]):
    """The server's supported presentation contexts, copied cheaply per association.

    ``copy.deepcopy`` of pynetdicom's ``PresentationContext`` rebuilds (and so
    re-validates) every UID; 173 contexts of 45 transfer syntaxes each took ~85 ms.
    Here each context is copied with its own list of transfer syntaxes, which is all a
    deep copy gives an association: its other attributes (ints, bools, None and UIDs,
    a ``str`` subclass) are immutable, so sharing them is sharing nothing.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for context in self:
            twin = PresentationContext.__new__(PresentationContext)
            twin.__dict__.update(context.__dict__)
            twin._transfer_syntax = list(context._transfer_syntax)
            copies.append(twin)
        return copies


def _encode_p_data(primitive: P_DATA) -> bytes:
    """The P-DATA-TF PDU of ``primitive``, as pynetdicom's ``P_DATA_TF.encode``."""
    items = b"".join(
        _PDV_HEAD.pack(len(value) + 1, context_id) + value
        for context_id, value in primitive.presentation_data_value_list
    )
    return _PDU_HEAD.pack(P_DATA_TF, 0, len(items)) + items


_PDV_HEAD = struct.Struct(">LB")
_PDU_HEAD = struct.Struct(">BBL")


def _address(client_address: Any) -> str:
    return client_address[0] if isinstance(client_address, tuple) else str(client_address)
