"""Attacks on a real SCP process, with figures: ``python -m tests.attacks NAME [--code DIR]``.

Each attack starts a private Redis and ``scp2fhir scp`` (from ``--code``, default this
tree, so a checkout of an older commit can be measured the same way), runs, and prints
what it measured: whether an honest sender still gets through, how long the SCP holds
a hostile connection, its resident memory (``VmHWM`` peak, ``VmRSS`` now), Redis bytes
per stored instance, statuses. The README's Security section quotes these figures; the
tests (``tests/test_peers.py``, ``tests/test_hostile.py``, ``tests/test_budget.py``)
check the same bounds with smaller inputs.

Names: ``half-open``, ``trickle``, ``pdu-length``, ``deflate-bomb``, ``big-header``,
``spool-full`` (needs ``unshare``: the SCP's spool folder is a 4 MiB tmpfs in a mount
namespace of its own), ``spool-leftovers``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis
from pydicom.uid import generate_uid

from tests.faults import (
    ASSOCIATE_RQ,
    Child,
    MemoryWatch,
    RawPeer,
    associate_rq,
    big_text_dataset,
    deflate_bomb,
    p_data,
    pdu,
    send_files,
    spawn,
    spool_files,
    status_kib,
    store_pdus,
    write_part10,
)
from tests.support import RedisProcess, free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
MIB = 1024 * 1024
#: A TLS 1.2 ClientHello's first bytes: what a client that expects DICOM TLS sends first.
TLS_HELLO = bytes.fromhex("16030100c8010000c40303") + os.urandom(32)


@dataclass
class Target:
    port: int
    scp: Child
    data: redis.Redis
    spool: Path
    code: Path

    def rss_kib(self) -> int:
        return status_kib(self.scp.pid, "VmRSS")

    def reset_peak(self) -> None:
        """Start the peak (VmHWM) afresh from the current RSS (Linux ``clear_refs``)."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.scp.pid}/clear_refs").write_text("5")


def _echo(port: int, timeout: float = 10) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="HONEST")
    ae.acse_timeout = timeout
    ae.network_timeout = timeout
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="SCP2FHIR")
    if not assoc.is_established:
        return False
    ok = bool(assoc.send_c_echo().Status == 0)
    assoc.release()
    return ok


@contextlib.contextmanager
def target(code: Path, tmp: Path, wrap: Sequence[str] = (), **env: str) -> Iterator[Target]:
    """Redis and an SCP process from ``code``; ``wrap`` prefixes the SCP's command line."""
    own = RedisProcess().start()
    port = free_port()
    spool = tmp / "spool"
    spool.mkdir(exist_ok=True)
    full_env = {
        **os.environ,
        "SCP2FHIR_REDIS_URL": own.url,
        "SCP2FHIR_PORT": str(port),
        "SCP2FHIR_SPOOL_DIR": str(spool),
        "TMPDIR": str(spool),  # where older versions spool
        "PYTHONPATH": str(code),
        **env,
    }
    command = [*wrap, sys.executable, "-m", "scp.cli", "scp"]
    scp = _spawn_in(code, command, full_env, tmp / "scp.log")
    data = redis.Redis.from_url(own.url)
    try:
        wait_for(lambda: _alive_and_echoes(scp, port), 30, "the SCP to answer C-ECHO", 0.2)
        yield Target(port, scp, data, spool, code)
    finally:
        scp.stop()
        data.close()
        own.stop()


def _spawn_in(code: Path, command: list[str], env: dict[str, str], log: Path) -> Child:
    # ``python -m`` puts the working directory first on sys.path: run in ``code``.
    cwd = os.getcwd()
    os.chdir(code)
    try:
        return spawn("scp", command, env, log)
    finally:
        os.chdir(cwd)


def _alive_and_echoes(scp: Child, port: int) -> bool:
    if not scp.alive():
        raise RuntimeError(f"the SCP exited: {scp.output()[-3000:]}")
    return _echo(port)


# --- unauthenticated denial of service ----------------------------------------------------


def _hostile(port: int, kind: str) -> RawPeer:
    peer = RawPeer.connect(port)
    if kind == "partial-rq":
        peer.send(associate_rq()[:7])
    elif kind == "http":
        peer.send(b"GET / HTTP/1.1\r\nHost: scp\r\n\r\n")
    elif kind == "tls":
        peer.send(TLS_HELLO)
    elif kind == "partial-pdata":
        with contextlib.suppress(AssertionError):  # rejected once the SCP is full
            peer.associate()
            peer.send(p_data(1, b"\0" * 64, command=True, last=True)[:9])
    # "silent": connected, says nothing
    return peer


def half_open(t: Target, count: int, wait: float) -> None:
    kinds = ["partial-rq", "http", "tls", "silent", "partial-pdata"]
    peers = [_hostile(t.port, kinds[i % len(kinds)]) for i in range(count)]
    time.sleep(1)
    began = time.monotonic()
    honest = _echo(t.port, timeout=10)
    print(
        f"{count} hostile connections open; honest C-ECHO association: "
        f"{'ok' if honest else 'FAILED'} in {time.monotonic() - began:.1f}s"
    )
    closed: dict[str, list[float | None]] = {kind: [] for kind in kinds}
    results: list[float | None] = [None] * count
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, peers[i].closed_within(wait)))
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, seconds in enumerate(results):
        closed[kinds[index % len(kinds)]].append(seconds)
    for kind, times in closed.items():
        held = sum(1 for s in times if s is None)
        done = [s for s in times if s is not None]
        worst = f", closed after at most {max(done):.1f}s" if done else ""
        print(f"  {kind:14} {len(times)} connections: {held} still open after {wait:.0f}s{worst}")
    for peer in peers:
        peer.close()


def trickle(t: Target, interval: float, wait: float) -> None:
    """A peer that sends its A-ASSOCIATE-RQ one byte every ``interval`` seconds."""
    request = associate_rq()
    peer = RawPeer.connect(t.port)
    began = time.monotonic()
    for byte in request:
        if not peer.send(bytes([byte])):
            break
        if peer.closed_within(interval) is not None or time.monotonic() - began > wait:
            break
    alive = peer.closed_within(0.1) is None
    print(
        f"trickle, one byte per {interval:g}s: connection "
        f"{'still open' if alive else 'closed by the SCP'} after {time.monotonic() - began:.1f}s"
    )
    peer.close()


def pdu_length(t: Target, connections: int, stream: int) -> None:
    """Peers announcing an A-ASSOCIATE-RQ of 0xFFFFFFFF bytes, then sending ``stream``
    bytes of it (or until the SCP closes)."""
    before = t.rss_kib()
    sent = [0] * connections

    def attack(index: int) -> None:
        peer = RawPeer.connect(t.port)
        chunk = b"\0" * MIB
        if not peer.send(pdu(ASSOCIATE_RQ, b"", length=0xFFFFFFFF)):
            return
        while sent[index] < stream and peer.send(chunk):
            sent[index] += len(chunk)
        peer.closed_within(30)
        peer.close()

    t.reset_peak()
    with MemoryWatch({"scp": t.scp.pid}) as watch:
        threads = [threading.Thread(target=attack, args=(i,)) for i in range(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(2)
    print(
        f"{connections} connections announcing 0xFFFFFFFF bytes, sent "
        f"{sum(sent) // MIB} MiB in all: SCP RSS {before // 1024} MiB before, peak "
        f"{watch.peaks['scp'] // 1024} MiB, {t.rss_kib() // 1024} MiB after they closed; "
        f"honest C-ECHO {'ok' if _echo(t.port) else 'FAILED'}"
    )


def _store(t: Target, path: Path, parallel: int = 1) -> list[int | None]:
    results: list[int | None] = [None] * parallel

    def one(index: int) -> None:
        [results[index]] = send_files(t.port, [path], timeout=600)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def _status_text(status: int | None) -> str:
    return "none" if status is None else f"0x{status:04X}"


def deflate_bombs(t: Target, tmp: Path, inflated: int) -> None:
    for where in ("pixels", "private"):
        path = deflate_bomb(tmp / f"bomb-{where}.dcm", inflated, where)
        for parallel in (1, 2):
            t.reset_peak()
            with MemoryWatch({"scp": t.scp.pid}) as watch:
                began = time.monotonic()
                statuses = _store(t, path, parallel)
            print(
                f"deflate bomb ({path.stat().st_size / MIB:.1f} MiB inflating to "
                f"{inflated // MIB} MiB, the bulk in the {where}), {parallel} at once: "
                f"{', '.join(map(_status_text, statuses))} in {time.monotonic() - began:.1f}s; "
                f"SCP peak RSS {watch.peaks['scp'] // 1024} MiB"
            )


def big_header(t: Target, tmp: Path, total: int) -> None:
    sop = generate_uid()
    body = big_text_dataset(generate_uid(), generate_uid(), sop, total)
    path = write_part10(tmp / "big-header.dcm", body, CT, sop)
    t.data.flushall()
    used = int(t.data.info("memory")["used_memory"])
    t.reset_peak()
    with MemoryWatch({"scp": t.scp.pid}) as watch:
        [status] = _store(t, path)
    grown = int(t.data.info("memory")["used_memory"]) - used
    print(
        f"{len(body) / MIB:.0f} MiB of text in {body.count(b'TEXT')} Content Sequence items: "
        f"{_status_text(status)}; SCP peak RSS {watch.peaks['scp'] // 1024} MiB, Redis "
        f"+{grown / MIB:.1f} MiB for the instance"
    )


# --- the spool ---------------------------------------------------------------------------


def spool_full(code: Path, tmp: Path) -> None:
    spool = tmp / "spool"
    spool.mkdir()
    mount = f'mount -t tmpfs -o size=4m tmpfs {shlex.quote(str(spool))} && exec "$@"'
    wrap = ["unshare", "-Urm", "sh", "-c", mount, "sh"]
    big_sop, small_sop = generate_uid(), generate_uid()
    study, series = generate_uid(), generate_uid()
    big = write_part10(
        tmp / "big.dcm", big_text_dataset(study, series, big_sop, 6 * MIB), CT, big_sop
    )
    small = write_part10(
        tmp / "small.dcm", big_text_dataset(study, series, small_sop, 4096), CT, small_sop
    )
    with target(code, tmp, wrap=wrap) as t:
        statuses = send_files(t.port, [big, small, small])
        print(
            f"spool on a 4 MiB tmpfs; one association sends a 6 MiB instance, then a small "
            f"one twice: {', '.join(map(_status_text, statuses))}"
        )


def spool_leftovers(code: Path, tmp: Path, associations: int) -> None:
    with target(code, tmp) as t:
        peers = []
        for _ in range(associations):
            peer = RawPeer.connect(t.port)
            maximum = peer.associate([(CT, EXPLICIT_LE)])
            sop = generate_uid()
            dataset = big_text_dataset(generate_uid(), generate_uid(), sop, 8 * MIB)
            for encoded in store_pdus(1, CT, sop, dataset, maximum)[:-2]:
                peer.send(encoded)
            peers.append(peer)
        wait_for(lambda: len(spool_files(t.spool)) >= associations, 30, "spooled files")
        during = spool_files(t.spool)
        t.scp.kill9()
        after_kill = spool_files(t.spool)
        for peer in peers:
            peer.close()
    size = sum(p.stat().st_size for p in after_kill)
    with target(code, tmp) as t:
        after_restart = spool_files(t.spool)
    print(
        f"{associations} associations mid-dataset: {len(during)} spool files; after kill -9 "
        f"{len(after_kill)} files ({size / MIB:.0f} MiB); after a restart "
        f"{len(after_restart)} files"
    )


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.attacks", description=__doc__)
    parser.add_argument(
        "name",
        choices=[
            "half-open",
            "trickle",
            "pdu-length",
            "deflate-bomb",
            "big-header",
            "spool-full",
            "spool-leftovers",
        ],
    )
    parser.add_argument("--code", type=Path, default=ROOT, help="source tree of the SCP")
    parser.add_argument("--count", type=int, default=40, help="hostile connections")
    parser.add_argument("--wait", type=float, default=45, help="seconds to watch them")
    parser.add_argument("--megabytes", type=int, default=0, help="size of the attack")
    args = parser.parse_args(argv)
    code = args.code.resolve()
    with tempfile.TemporaryDirectory(prefix="scp2fhir-attack-") as folder:
        tmp = Path(folder)
        if args.name == "spool-full":
            spool_full(code, tmp)
            return 0
        if args.name == "spool-leftovers":
            spool_leftovers(code, tmp, args.count if args.count != 40 else 6)
            return 0
        with target(code, tmp) as t:
            if args.name == "half-open":
                half_open(t, args.count, args.wait)
            elif args.name == "trickle":
                trickle(t, 2.0, args.wait)
            elif args.name == "pdu-length":
                pdu_length(t, 4, (args.megabytes or 1024) * MIB)
            elif args.name == "deflate-bomb":
                deflate_bombs(t, tmp, (args.megabytes or 2048) * MIB)
            elif args.name == "big-header":
                big_header(t, tmp, (args.megabytes or 105) * MIB)
    return 0


if __name__ == "__main__":
    socket.setdefaulttimeout(None)
    raise SystemExit(main(sys.argv[1:]))
