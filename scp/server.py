"""The storage SCP process: an Application Entity that accepts every storage SOP
class pynetdicom knows, in every transfer syntax it knows, as received."""

from __future__ import annotations

import logging
import signal
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

from scp.connections import connect
from scp.handlers import handle_echo, handle_store
from scp.inbox import Inbox
from scp.settings import Settings
from scp.transport import PromptRequestHandler, ReusePortServer

logger = logging.getLogger(__name__)

#: Simultaneous associations one SCP process accepts.
MAX_ASSOCIATIONS = 32
#: Largest PDU we accept. Senders split each dataset into PDUs of at most this size;
#: pynetdicom's default (16 KiB) costs a CT slice three round trips through its
#: reactor. 1 MiB bounds what one PDU can make us hold in memory.
MAX_PDU_SIZE = 1024 * 1024


def build_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.maximum_pdu_size = MAX_PDU_SIZE
    # A modality that calls us by another AE title is misconfigured; say so early.
    ae.require_called_aet = True
    return ae


def serve(settings: Settings, stop: threading.Event | None = None) -> None:
    """Run the SCP until SIGINT/SIGTERM (or ``stop`` is set)."""
    # Spooled: large objects (whole-slide images, tomosynthesis) go to a temporary file
    # as they arrive instead of into memory; the handler maps only the header back in.
    _config.STORE_RECV_CHUNKED_DATASET = settings.spool == "file"
    clients = connect(settings.require_redis_url())
    inbox = Inbox(clients.data, clients.rq)
    handlers: list[Any] = [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [inbox]),
    ]
    ae = build_ae(settings)
    server = ae.make_server(
        (settings.bind, settings.port),
        evt_handlers=handlers,
        server_class=ReusePortServer,
        request_handler=PromptRequestHandler,
    )
    threading.Thread(target=server.serve_forever, name="scp-accept", daemon=True).start()
    logger.info("ae=%s listening on %s:%d", settings.ae_title, settings.bind, settings.port)

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
    try:
        stop.wait()
    finally:
        logger.info("ae=%s shutting down", settings.ae_title)
        server.shutdown()
        clients.close()
