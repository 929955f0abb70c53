"""The storage SCP process: an Application Entity that accepts every storage SOP
class pynetdicom knows, in every transfer syntax it knows, as received."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from typing import Any

from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    _config,
    evt,
)
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scp import fastpath, metrics
from scp.access import AccessPolicy, Slots, handle_requested, parse_networks
from scp.associations import AssociationLog
from scp.connections import connect
from scp.drain import StopRequest, drain
from scp.handlers import handle_echo, handle_store
from scp.inbox import Inbox
from scp.mpps import IAN_SOP_CLASS, MPPS_SOP_CLASS, CompletionSignals
from scp.prefork import listen
from scp.settings import ScpSettings
from scp.shared_settings import SharedSettings
from scp.signals import SignalStore
from scp.spool import ROLLOVER_BYTES, SpoolFolder, SpoolingDIMSE
from scp.transport import AcceptorServer, PromptRequestHandler

logger = logging.getLogger(__name__)


def build_ae(settings: ScpSettings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    # Completion signals (README "Study lifecycle"): MPPS from modalities, IAN from PACS.
    for sop_class in (MPPS_SOP_CLASS, IAN_SOP_CLASS):
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    # pynetdicom counts every acceptor thread against this, associated or not;
    # scp.access.Slots is the limit (pending connections and associations apart).
    ae.maximum_associations = 1_000_000
    # Senders split each dataset into PDUs of at most this size; pynetdicom's default
    # (16 KiB) costs a CT slice three trips through its reactor. The limit also bounds
    # what one PDU can make us hold in memory.
    ae.maximum_pdu_size = settings.max_pdu
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    # A modality that calls us by another AE title is misconfigured; say so early.
    ae.require_called_aet = True
    ae.require_calling_aet = list(settings.allowed_calling_aets)
    return ae


def tls_context(settings: ScpSettings) -> ssl.SSLContext | None:
    """DICOM TLS (PS3.15 B.1): TLS 1.2 or newer; client certificates when a CA is set."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_ca is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=settings.tls_ca)
    return context


def serve(
    settings: ScpSettings,
    shared: SharedSettings,
    stop: threading.Event | None = None,
    listener: socket.socket | None = None,
) -> None:
    """Run the SCP until SIGINT, SIGTERM or SIGHUP (or ``stop`` is set), on ``listener``
    (a socket bound by :func:`scp.prefork.listen`, perhaps shared with other
    acceptor processes) or else on a socket of its own. Stopped by a signal (no ``stop``
    given), it lets associations in progress end first (:mod:`scp.drain`); a caller that
    sets ``stop`` has them aborted at once."""
    # pynetdicom's standard handlers format every PDU and DIMSE message for its logger,
    # a good share of the CPU per instance; bind them only when that logger shows them.
    verbose = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    _config.LOG_HANDLER_LEVEL = "standard" if verbose else "none"
    own_listener = listener is None
    if listener is None:
        listener = listen(settings.bind, settings.port)
    # Spooled: large objects (whole-slide images, tomosynthesis) roll over to a temporary
    # file as they arrive instead of growing in memory (scp.spool.SpoolingDIMSE); the
    # handler maps only the header back in. pynetdicom's own chunked mode would write a
    # file for every instance, however small.
    _config.STORE_RECV_CHUNKED_DATASET = False
    SpoolingDIMSE.rollover_bytes = ROLLOVER_BYTES if settings.spool == "file" else None
    fastpath.ENABLED = settings.fast_path
    spool = SpoolFolder.claim(settings.spool_parent())
    spool.use()
    clients = connect(shared.require_redis_url())
    inbox = Inbox(clients.data, clients.rq)
    policy = AccessPolicy(parse_networks(",".join(settings.allowed_peers)))
    slots = Slots(
        settings.max_associations,
        settings.max_pending_connections,
        settings.max_associations_per_ae,
    )
    recorder = metrics.Recorder(clients.data).start()
    metrics.install(recorder)
    associations = AssociationLog()
    handlers: list[Any] = [
        *associations.handlers(),  # first: it names the association the others log
        (evt.EVT_REQUESTED, handle_requested, [slots]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [inbox, associations, settings.read_limits(spool.path)]),
    ]
    signals = CompletionSignals(
        SignalStore(clients.data, clients.rq, shared.retention_seconds * 1000)
    )
    handlers += [
        (evt.EVT_N_CREATE, signals.handle_n_create),
        (evt.EVT_N_SET, signals.handle_n_set),
    ]
    ae = build_ae(settings)
    server = ae.make_server(
        (settings.bind, settings.port),
        evt_handlers=handlers,
        ssl_context=tls_context(settings),
        server_class=AcceptorServer,
        listener=listener,
        shared=not own_listener and settings.scp_processes > 1,
        request_handler=PromptRequestHandler,
        policy=policy,
        slots=slots,
    )
    threading.Thread(target=server.serve_forever, name="scp-accept", daemon=True).start()
    logger.info(
        "ae=%s listening on %s:%d%s",
        settings.ae_title,
        settings.bind,
        settings.port,
        " (DICOM TLS)" if settings.tls_cert else "",
    )

    drain_seconds = settings.drain_seconds if stop is None else 0.0
    request = StopRequest(stop).install()
    try:
        request.wait()
    finally:
        logger.info("ae=%s shutting down", settings.ae_title)
        drain(server, settings.ae_title, request, drain_seconds)
        if own_listener:
            listener.close()
        recorder.stop()
        clients.close()
        spool.close()
