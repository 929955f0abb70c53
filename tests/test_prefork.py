"""``scp2fhir scp`` with several acceptor processes (scp.prefork): one port, one
deployment, every acceptor serving, restarted when it dies, gone with its parent."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pydicom
import redis
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

from scp import keys, statuses
from scp.up.readiness import socket_inodes
from tests.conftest import ROOT, pipeline_env
from tests.faults import Child, children_of, send_files, start_scp
from tests.support import free_port, sample_file, wait_for

CT = pydicom.dcmread(sample_file("CT_small.dcm"))
_SERVED = re.compile(r"scp\[(\d+)\].*calling=FAULTSCU.*stored=1 refused=0")


def _acceptors(parent: Child, count: int) -> list[int]:
    wait_for(lambda: len(children_of(parent.pid)) == count, 20, f"{count} acceptor processes", 0.1)
    return children_of(parent.pid)


def _two_acceptors(redis_url: str, tmp_path: Path) -> tuple[int, Child]:
    port = free_port()
    env = pipeline_env(redis_url, tmp_path / "out", port, SCP2FHIR_SCP_PROCESSES="2")
    return port, start_scp(env, tmp_path / "scp.log", port)


def _one_ct_each(tmp_path: Path, count: int) -> list[Path]:
    paths = []
    for index in range(count):
        path = tmp_path / f"ct{index}.dcm"
        ds = CT.copy()
        ds.SOPInstanceUID = generate_uid()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _scp_that_should_not_start(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``scp2fhir scp`` run to its end (it is expected to refuse to start)."""
    return subprocess.run(
        [sys.executable, "-m", "scp.cli", "scp"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _served_by(scp: Child) -> dict[int, int]:
    """Associations that stored one instance, by the pid that logged them."""
    served: dict[int, int] = {}
    for match in _SERVED.finditer(scp.output()):
        served[int(match.group(1))] = served.get(int(match.group(1)), 0) + 1
    return served


def _serving_pid(port: int, client_port: int, acceptors: list[int]) -> int | None:
    """The acceptor holding the server side of the connection from ``client_port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local, remote, state = fields[1], fields[2], fields[3]
            if (
                state == "01"  # ESTABLISHED
                and int(local.rsplit(":", 1)[1], 16) == port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                inodes.add(fields[9])
    holders = [pid for pid in acceptors if socket_inodes(pid) & inodes]
    return holders[0] if len(holders) == 1 else None


def test_two_acceptors_both_serve(redis_url: str, data: redis.Redis, tmp_path: Path) -> None:
    """Both acceptors serve, each stores what it was sent; the parent serves none.
    Associations are held open until one lands on the acceptor that does not hold the
    first (a bounded number: the busy one waits before accept(), so the idle one wins
    nearly always), then each stores one instance and is released."""
    port, scp = _two_acceptors(redis_url, tmp_path)
    held: list[Association] = []
    try:
        acceptors = _acceptors(scp, 2)
        ae = AE(ae_title="FAULTSCU")
        ae.add_requested_context(CT.SOPClassUID, CT.file_meta.TransferSyntaxUID)
        holders: list[int | None] = []
        for _ in range(10):
            assoc = ae.associate("127.0.0.1", port, ae_title="SCP2FHIR")
            assert assoc.is_established
            held.append(assoc)
            assert assoc.dul.socket is not None and assoc.dul.socket.socket is not None
            client_port = assoc.dul.socket.socket.getsockname()[1]
            holders.append(_serving_pid(port, client_port, acceptors))
            assert holders[-1] in acceptors, (holders, acceptors)
            if set(holders) == set(acceptors):
                break
        assert set(holders) == set(acceptors), f"every association went to {holders[0]}"
        for assoc in held:
            ds = CT.copy()
            ds.SOPInstanceUID = generate_uid()
            assert assoc.send_c_store(ds).Status == statuses.SUCCESS
            assoc.release()
        held.clear()
        assert data.xlen(keys.INBOX) == len(holders)
        served = wait_for(
            lambda: _served_by(scp) if sum(_served_by(scp).values()) == len(holders) else None,
            10,
            "every association logged",
        )
        assert served == {pid: holders.count(pid) for pid in acceptors}, (served, holders)
    finally:
        for assoc in held:
            assoc.abort()
        scp.stop()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the port is closed after the stop"


def test_killed_acceptor_is_restarted(redis_url: str, tmp_path: Path) -> None:
    port, scp = _two_acceptors(redis_url, tmp_path)
    try:
        first, second = _acceptors(scp, 2)
        os.kill(first, signal.SIGKILL)
        wait_for(
            lambda: first not in children_of(scp.pid) and len(children_of(scp.pid)) == 2,
            20,
            "a new acceptor in place of the killed one",
            0.1,
        )
        assert second in children_of(scp.pid)
        assert re.search(rf"acceptor=\d pid={first} exited \(signal SIGKILL\)", scp.output())
        stored = [send_files(port, [path]) for path in _one_ct_each(tmp_path, 6)]
        assert stored == [[statuses.SUCCESS]] * 6
    finally:
        scp.stop()


def test_acceptors_die_with_their_parent(redis_url: str, tmp_path: Path) -> None:
    """kill -9 of the parent alone: the acceptors go too, and the port is free again."""
    port, scp = _two_acceptors(redis_url, tmp_path)
    try:
        acceptors = _acceptors(scp, 2)
        os.kill(scp.pid, signal.SIGKILL)
        scp.process.wait(10)

        def gone() -> bool:
            return not any(Path(f"/proc/{pid}").exists() for pid in acceptors)

        wait_for(gone, 10, "the acceptors to exit after their parent", 0.1)
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0
    finally:
        scp.stop()


def test_second_deployment_on_the_port_fails_at_start(redis_url: str, tmp_path: Path) -> None:
    """Another `scp2fhir scp` on a port in use exits 1 with one line, and the first one
    keeps every association."""
    port, scp = _two_acceptors(redis_url, tmp_path)
    try:
        env = pipeline_env(redis_url, tmp_path / "out2", port, SCP2FHIR_SCP_PROCESSES="2")
        second = _scp_that_should_not_start(env)
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"port {port} is in use" in lines[0], second.stderr
        stored = [send_files(port, [path]) for path in _one_ct_each(tmp_path, 4)]
        assert stored == [[statuses.SUCCESS]] * 4
        assert sum(_served_by(scp).values()) == 4
    finally:
        scp.stop()


def test_an_address_it_cannot_listen_on_is_one_line(redis_url: str, tmp_path: Path) -> None:
    """An address not of this host (TEST-NET-1; names that do not resolve fail the same
    way, but the tests' network guard refuses any lookup): one line naming the settings,
    exit 1, no traceback."""
    bind = "192.0.2.1"
    env = pipeline_env(
        redis_url, tmp_path / "out", free_port(), SCP2FHIR_BIND=bind, SCP2FHIR_SCP_PROCESSES="2"
    )
    result = _scp_that_should_not_start(env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert f"cannot listen on {bind}:" in lines[0] and "SCP2FHIR_BIND" in lines[0]


def test_sigterm_lets_the_association_in_progress_finish(
    redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    """SIGTERM to the parent: no new associations, but one already open goes on storing
    until it releases; then every process exits, the parent with status 0."""
    port, scp = _two_acceptors(redis_url, tmp_path)
    try:
        acceptors = _acceptors(scp, 2)
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CT.SOPClassUID, CT.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="SCP2FHIR")
        assert assoc.is_established
        first = CT.copy()
        first.SOPInstanceUID = generate_uid()
        assert assoc.send_c_store(first).Status == statuses.SUCCESS
        scp.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining 1 open associations" in scp.output(), 10, "the drain to begin")
        for _ in range(3):
            more = CT.copy()
            more.SOPInstanceUID = generate_uid()
            assert assoc.send_c_store(more).Status == statuses.SUCCESS
        assoc.release()
        assert assoc.is_released
        assert scp.process.wait(30) == 0
        assert not any(Path(f"/proc/{pid}").exists() for pid in acceptors)
        assert data.xlen(keys.INBOX) == 4
    finally:
        scp.stop()


def test_default_is_one_acceptor_per_usable_core() -> None:
    """The cores the process may run on, not those of the machine: pinned to one core
    (as a container's cpuset does), it defaults to one acceptor."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
        "from scp.settings import ScpSettings; from scp.typed_settings import from_env; "
        "print(from_env(ScpSettings, {}).scp_processes)"
    )
    pinned = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert pinned.stdout.strip() == "1"
    from scp.settings import ScpSettings
    from scp.typed_settings import from_env

    assert from_env(ScpSettings, {}).scp_processes == len(os.sched_getaffinity(0))
    assert from_env(ScpSettings, {"SCP2FHIR_SCP_PROCESSES": "3"}).scp_processes == 3


def test_up_starts_one_scp_that_forks_the_acceptors() -> None:
    """`scp2fhir up` runs one `scp` child with the process count, not one child per
    process: several would each bind the port, and all but one would fail."""
    from scp.up.supervisor import children
    from tests.support import parse_configuration

    parsed = parse_configuration({"SCP2FHIR_SCP_PROCESSES": "3", "SCP2FHIR_WEB_PORT": "0"})
    scps = [
        child
        for child in children(parsed.scp, parsed.up, parsed.shared)
        if child.command[-1] == "scp"
    ]
    assert [child.name for child in scps] == ["scp"]
    assert scps[0].extra_env == {"SCP2FHIR_SCP_PROCESSES": "3"}
