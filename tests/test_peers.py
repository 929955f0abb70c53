"""Peers that do not play by the rules, byte by byte, against the real SCP process.

What they hold and for how long: every read is bounded (the ACSE timeout until the
association is established, the DIMSE timeout per PDU after it), every PDU's announced
length is checked before anything is allocated for it (``SCP2FHIR_MAX_PDU`` for
P-DATA, 256 KiB for the rest), and connections that have not associated hold slots of
their own (``SCP2FHIR_MAX_PENDING_CONNECTIONS``), never the association slots. Each
bound is set through its environment variable, as an operator sets it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from scp import statuses
from tests.conftest import echo
from tests.faults import (
    ABORT,
    ASSOCIATE_RQ,
    P_DATA,
    RELEASE_RQ,
    RawPeer,
    associate_rq,
    big_text_dataset,
    p_data,
    pdu,
    peak_rss_kib,
    scp_process,
    send_files,
    store_pdus,
    write_part10,
)
from tests.support import make_study

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: An HTTP request and the start of a TLS ClientHello: what a misdirected client sends.
HTTP = b"GET / HTTP/1.1\r\nHost: scp\r\n"
TLS_HELLO = bytes.fromhex("16030100c8010000c40303") + bytes(32)
#: The README's bound on association PDUs (A-ASSOCIATE-RQ above all).
MAX_CONTROL_PDU = 256 * 1024


def _trickle(peer: RawPeer, data: bytes, interval: float) -> threading.Thread:
    """Send ``data`` a byte every ``interval`` seconds, until done or refused."""

    def run() -> None:
        for byte in data:
            if not peer.send(bytes([byte])):
                return
            time.sleep(interval)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# --- slots ---------------------------------------------------------------------------------


def test_honest_sender_gets_through_past_hostile_half_open_connections(
    redis_url: str, tmp_path: Path
) -> None:
    """40 connections (more than SCP2FHIR_MAX_ASSOCIATIONS=32) that never associate:
    the honest sender's instance is stored all the same."""
    study = make_study(tmp_path / "study", [("CT", 2)])
    with scp_process(redis_url, tmp_path) as (port, scp):
        stalled = []
        for index in range(20):
            peer = RawPeer.connect(port)
            if index % 2:
                peer.send(associate_rq()[:7])  # the first 7 bytes of an A-ASSOCIATE-RQ
            stalled.append(peer)  # (and the others: connected, silent)
        misdirected = []
        for index in range(20):
            peer = RawPeer.connect(port)
            peer.send(HTTP if index % 2 else TLS_HELLO)
            misdirected.append(peer)
        assert send_files(port, study.files) == [statuses.SUCCESS] * 2
        # The stalled ones are still there (the ACSE timeout is 30 s), holding only
        # pending slots; what is not DICOM at all was refused at once.
        assert all(peer.closed_within(0.2) is None for peer in stalled)
        refused = [peer.closed_within(5) for peer in misdirected]
        assert all(seconds is not None for seconds in refused), refused
        assert scp.alive()
        for peer in stalled + misdirected:
            peer.close()


def test_the_longest_waiting_pending_connection_makes_room(redis_url: str, tmp_path: Path) -> None:
    with scp_process(redis_url, tmp_path, SCP2FHIR_MAX_PENDING_CONNECTIONS="4") as (port, scp):
        peers = []
        for _ in range(10):
            peers.append(RawPeer.connect(port))
            time.sleep(0.05)  # so that the order of arrival is the order of connecting
        assert echo(port)  # itself pending for a moment: it drops one more
        dropped = [peer.closed_within(3) for peer in peers[:7]]
        assert all(seconds is not None for seconds in dropped), dropped
        assert all(peer.closed_within(0.2) is None for peer in peers[7:])
        assert "dropped after" in scp.output()
        for peer in peers:
            peer.close()


# --- time ----------------------------------------------------------------------------------


def test_every_read_before_association_ends_at_the_acse_timeout(
    redis_url: str, tmp_path: Path
) -> None:
    with scp_process(redis_url, tmp_path, SCP2FHIR_ACSE_TIMEOUT="2") as (port, _):
        began = time.monotonic()
        silent = RawPeer.connect(port)
        partial = RawPeer.connect(port)
        partial.send(associate_rq()[:7])
        trickler = RawPeer.connect(port)
        _trickle(trickler, associate_rq(), 0.25)  # 180 bytes: 45 s if let be
        for peer in (silent, partial, trickler):
            closed = peer.closed_within(10)
            assert closed is not None, "still open 10 s after connecting"
            waited = time.monotonic() - began
            assert 1.5 <= waited <= 8, waited
            peer.close()


def test_a_pdu_must_arrive_whole_within_the_dimse_timeout(redis_url: str, tmp_path: Path) -> None:
    """After association, a PDU begun must be complete within SCP2FHIR_DIMSE_TIMEOUT,
    however the peer spreads its bytes; the network timeout (idle) is far longer."""
    env = {"SCP2FHIR_DIMSE_TIMEOUT": "2", "SCP2FHIR_NETWORK_TIMEOUT": "60"}
    with scp_process(redis_url, tmp_path, **env) as (port, _):
        for trickle in (False, True):
            peer = RawPeer.connect(port)
            peer.associate()
            echo_rq = p_data(1, b"\0" * 80, command=True, last=True)
            began = time.monotonic()
            if trickle:
                _trickle(peer, echo_rq, 0.25)
            else:
                peer.send(echo_rq[:9])
            closed = peer.closed_within(10)
            assert closed is not None, f"trickle={trickle}: still open after 10 s"
            assert 1.5 <= time.monotonic() - began <= 8
            peer.close()


# --- size ----------------------------------------------------------------------------------


def test_max_pdu_is_announced_and_every_larger_pdu_refused(redis_url: str, tmp_path: Path) -> None:
    with scp_process(redis_url, tmp_path, SCP2FHIR_MAX_PDU="4096") as (port, _):
        # Announced in the A-ASSOCIATE-AC, and PDUs of exactly that size are taken.
        peer = RawPeer.connect(port)
        assert peer.associate([(CT, EXPLICIT_LE)]) == 4096
        sop = generate_uid()
        dataset = big_text_dataset(generate_uid(), generate_uid(), sop, 20_000)
        pdus = store_pdus(1, CT, sop, dataset, 4096)
        assert max(len(encoded) for encoded in pdus) == 6 + 4096
        for encoded in pdus:
            assert peer.send(encoded)
        assert peer.read_status() == statuses.SUCCESS
        # One byte more: an A-ABORT, and the connection is closed.
        assert peer.send(pdu(P_DATA, b"", length=4097))
        answer = peer.read_pdu()
        assert answer is not None and answer[0] == ABORT, answer
        assert peer.closed_within(5) is not None
        peer.close()


def test_association_pdus_are_bounded_before_anything_is_allocated(
    redis_url: str, tmp_path: Path
) -> None:
    """Four connections announce an A-ASSOCIATE-RQ of 0xFFFFFFFF bytes and send 64 MiB
    of it: each gets an A-ABORT at once and the SCP's memory does not grow."""
    with scp_process(redis_url, tmp_path) as (port, scp):
        before = peak_rss_kib(scp.pid)
        peers = [RawPeer.connect(port) for _ in range(4)]
        chunk = bytes(1024 * 1024)

        def attack(peer: RawPeer) -> None:
            if peer.send(pdu(ASSOCIATE_RQ, b"", length=0xFFFFFFFF)):
                for _ in range(64):
                    if not peer.send(chunk):
                        return

        threads = [threading.Thread(target=attack, args=(peer,)) for peer in peers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for peer in peers:
            assert peer.closed_within(5) is not None
        grown = peak_rss_kib(scp.pid) - before
        assert grown < 32 * 1024, f"the SCP grew by {grown // 1024} MiB"
        # An A-ASSOCIATE-RQ a byte over the limit, or a P-DATA before any association
        # (however small SCP2FHIR_MAX_PDU is not): an A-ABORT, before anything is read.
        for pdu_type in (ASSOCIATE_RQ, P_DATA):
            peer = RawPeer.connect(port)
            peer.send(pdu(pdu_type, b"", length=MAX_CONTROL_PDU + 1))
            answer = peer.read_pdu()
            assert answer is not None and answer[0] == ABORT, answer
            peer.close()
        # A real request for 120 presentation contexts (about 10 KiB) is well within it.
        contexts = [(CT, EXPLICIT_LE)] * 120
        big = RawPeer.connect(port)
        big.send(associate_rq(contexts=contexts))
        answer = big.read_pdu()
        assert answer is not None and answer[0] == 0x02, answer
        big.close()
        assert echo(port)


def test_an_honest_sender_keeps_storing_through_all_this(redis_url: str, tmp_path: Path) -> None:
    """The bounds cost an honest sender nothing: a study over one association, PDUs
    at the SCP's maximum, with hostile connections coming and going."""
    sop = generate_uid()
    body = big_text_dataset(generate_uid(), generate_uid(), sop, 3 * 1024 * 1024)
    path = write_part10(tmp_path / "large.dcm", body, CT, sop)
    with scp_process(redis_url, tmp_path) as (port, _):
        noise = [RawPeer.connect(port) for _ in range(10)]
        for peer in noise:
            peer.send(pdu(ASSOCIATE_RQ, b"", length=0xFFFFFFFF))
        assert send_files(port, [path]) == [statuses.SUCCESS]
        for peer in noise:
            peer.close()


# --- the reader itself (what a faster receive path must call too) --------------------------


def test_read_pdu_bounds_time_and_size() -> None:
    import socket

    from scp.pdu_reader import (
        PduLimits,
        PduTimeout,
        PduTooLarge,
        PeerClosed,
        UnknownPdu,
        bounds,
        read_pdu,
    )

    limits = PduLimits(p_data=4096)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(pdu(P_DATA, bytes(4096)) + pdu(RELEASE_RQ, bytes(4)))
        assert len(read_pdu(ours, time.monotonic() + 5, limits)) == 6 + 4096
        assert read_pdu(ours, None, limits)[0] == RELEASE_RQ
        # Too large: refused on the header alone, the body is not waited for.
        theirs.sendall(pdu(P_DATA, b"", length=4097))
        with pytest.raises(PduTooLarge):
            read_pdu(ours, time.monotonic() + 5, limits)
        theirs.sendall(b"GET / ")
        with pytest.raises(UnknownPdu):
            read_pdu(ours, time.monotonic() + 5, limits)
        # A byte at a time, faster than any per-read timeout: cut at the deadline.
        began = time.monotonic()
        _trickle(RawPeer(theirs), pdu(RELEASE_RQ, bytes(4)) * 10, 0.1)
        with pytest.raises(PduTimeout):
            while True:
                read_pdu(ours, began + 1, limits)
        assert 0.9 <= time.monotonic() - began <= 1.5
    other, gone = socket.socketpair()
    with other:
        gone.sendall(pdu(P_DATA, bytes(10))[:8])
        gone.close()
        with pytest.raises(PeerClosed):
            read_pdu(other, time.monotonic() + 5, limits)
    # Before association: the ACSE timeout from the opening, nothing over 256 KiB.
    deadline, before = bounds(False, 100.0, 30.0, 60.0, 1 << 20)
    assert deadline == 130.0 and before.limit(P_DATA) == MAX_CONTROL_PDU
    deadline, after = bounds(True, 100.0, 30.0, 60.0, 1 << 20)
    assert deadline is not None and deadline > time.monotonic() + 59
    assert after.limit(P_DATA) == 1 << 20 and after.limit(ASSOCIATE_RQ) == MAX_CONTROL_PDU
