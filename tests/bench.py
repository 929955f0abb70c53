"""scp2fhir's benchmark: `python -m tests.bench` (see the README's Performance section).

In one run on one machine (a command, not a test: nothing here asserts a speed):

* ingest, per scenario (one CT study of 1000 instances of 39 KB, sent by dcmtk
  `storescu` over 1 association, then split in 4 and sent by 4 `storescu` at once):
  dcmtk `storescp` (the reference), Orthanc, pynetdicom's stock `storescp --ignore`,
  `scp2fhir scp` alone and `scp2fhir up`, alternating receivers within each repetition;
  instances/s and the ratio to storescp, CPU ms per instance of each receiver's own
  processes (the machine is shared: CPU time is what noise disturbs least), peak RSS;
  for scp2fhir also its Redis's CPU, memory and inbox bytes per instance, and for `up`
  the time from the last C-STORE response to the ImagingStudy file minus the quiet period;
* worker side: fold rate of one worker, Redis bytes per instance held after emission,
  build of a 5000-instance ImagingStudy (load from Redis + map), base and mii profile;
* spool: `scp2fhir scp` with either spool setting, on the CT study (instances/s, CPU)
  and on one large object (200 MiB: peak RSS, which the default setting keeps flat);
* completion signals: last instance -> ImagingStudy with MPPS and with the quiet period;
* destinations: fold and emit rates with one destination and with three, and each
  destination's build of its copy (:mod:`tests.bench_destinations`).

Figures are medians over --reps repetitions (default 3). Every send is checked: a
receiver that holds fewer instances than were sent, or a storescu error line, stops the
run. `--only` selects scenarios and/or receivers by name (comma-separated or repeated).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pydicom
import redis

from scp import keys
from scp.connections import connect
from scp.header import read_header
from scp.inbox import Inbox
from tests.bench_procs import PeakSampler, all_stats, tree_cpu
from tests.bench_receivers import (
    ROOT,
    Orthanc,
    PynetdicomStorescp,
    Scp,
    SendFailed,
    Storescp,
    System,
    send,
    tool_version,
)
from tests.support import RedisProcess, build_context, make_study, sample_file, wait_for
from workers import collector
from workers.context import install
from workers.fold import StudyAggregate
from workers.jobs import drain_inbox, ensure_group
from workers.mapping import imaging_study

__all__ = ["ROOT", "Storescp", "System", "line", "main", "platform_line", "send"]

QUIET_SECONDS = 2.0
INGEST = {"1-association": 1, "4-associations": 4}
SCENARIOS = (*INGEST, "worker", "spool", "completion", "destinations")
RECEIVERS = ("storescp", "orthanc", "pynetdicom", "scp", "scp-nofast", "up")
#: the issue's targets, printed beside the figures (README "Performance")
FOLD_TARGET_PER_SECOND = 5000
BUILD_TARGET_SECONDS = {"base": 0.2, "mii": 0.5}
MIB = 1024


class Receiver(Protocol):
    key: str
    label: str
    port: int

    def roles(self) -> dict[str, list[int]]: ...
    def received(self) -> int | None: ...
    def stop(self) -> None: ...


def line(label: str, value: str) -> None:
    print(f"  {label:<58} {value}", flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- ingest ----------------------------------------------------------------------------


@dataclass
class Measures:
    """One receiver's figures over the repetitions of a scenario."""

    rates: list[float] = field(default_factory=list)
    #: role -> CPU ms per instance during the send, one per repetition
    cpu: dict[str, list[float]] = field(default_factory=dict)
    #: scp2fhir: Redis memory added per instance (the inbox entry and its bookkeeping)
    redis_bytes: list[float] = field(default_factory=list)
    #: up: CPU ms per instance of the whole system until the ImagingStudy is written
    system_cpu: dict[str, list[float]] = field(default_factory=dict)
    #: up: last C-STORE response -> ImagingStudy written, minus the quiet period
    latencies: list[float] = field(default_factory=list)


@dataclass
class BenchStudy:
    study_uid: str
    count: int
    #: one folder per association
    parts: list[Path]


def bench_study(folder: Path, instances: int, associations: int) -> BenchStudy:
    """A CT study of ``instances`` slices (pydicom's CT_small, 39 KB), split in
    ``associations`` folders of consecutive instances."""
    study = make_study(folder / "all", [("CT", instances)])
    parts = []
    for n in range(associations):
        part = folder / f"part-{n}"
        part.mkdir()
        first, end = n * instances // associations, (n + 1) * instances // associations
        for path in study.files[first:end]:
            path.rename(part / path.name)
        parts.append(part)
    shutil.rmtree(folder / "all")
    return BenchStudy(study.study_uid, instances, parts)


def _cpu_by_role(receiver: Receiver) -> dict[str, float]:
    stats = all_stats()
    return {role: tree_cpu(roots, stats) for role, roots in receiver.roles().items()}


def measure(receiver: Receiver, study: BenchStudy, into: Measures) -> None:
    """One send of ``study`` to ``receiver``, checked, with its CPU and Redis figures."""
    held = receiver.received()
    redis_before = receiver.redis_bytes() if isinstance(receiver, Scp) else 0
    cpu_before = _cpu_by_role(receiver)
    seconds = send(receiver.port, [[part] for part in study.parts])
    done = time.time()
    cpu_after = _cpu_by_role(receiver)
    per_instance = 1000 / study.count
    into.rates.append(study.count / seconds)
    for role, spent in cpu_after.items():
        into.cpu.setdefault(role, []).append((spent - cpu_before.get(role, 0)) * per_instance)
    if held is not None:
        now = receiver.received()
        assert now is not None
        if now - held != study.count:
            raise SendFailed(f"{receiver.label} holds {now - held} of {study.count} instances")
    if isinstance(receiver, Scp):
        into.redis_bytes.append((receiver.redis_bytes() - redis_before) / study.count)
    if isinstance(receiver, System):
        wait_for(
            functools.partial(receiver.complete, study.study_uid, study.count),
            QUIET_SECONDS + 300,
            f"the ImagingStudy of {study.count} instances",
        )
        written = receiver.output(study.study_uid).stat().st_mtime
        into.latencies.append(written - done - QUIET_SECONDS)
        cpu_end = _cpu_by_role(receiver)
        for role, spent in cpu_end.items():
            into.system_cpu.setdefault(role, []).append(
                (spent - cpu_before.get(role, 0)) * per_instance
            )


def start_receiver(key: str, associations: int) -> Receiver:
    if key == "storescp":
        return Storescp(fork=associations > 1)
    if key == "orthanc":
        return Orthanc()
    if key == "pynetdicom":
        return PynetdicomStorescp()
    if key == "scp":
        return Scp()
    if key == "scp-nofast":  # the same without the C-STORE fast path (scp.fastpath)
        return Scp({"SCP2FHIR_FAST_PATH": "0"}, key, "scp2fhir scp, SCP2FHIR_FAST_PATH=0")
    return System({}, QUIET_SECONDS)


def ingest(
    scenario: str, instances: int, reps: int, work: Path, receivers: Sequence[str]
) -> dict[str, Measures]:
    associations = INGEST[scenario]
    print(
        f"\n{scenario}: one CT study of {instances} instances (39 KB slices), sent by "
        f"{associations} storescu at once; medians of {reps}",
        flush=True,
    )
    started: list[Receiver] = []
    sampler = PeakSampler()
    results: dict[str, Measures] = {}
    peaks: dict[str, dict[str, int]] = {}
    try:
        for key in receivers:
            started.append(start_receiver(key, associations))
            sampler.add(key, started[-1].roles)
            results[key] = Measures()
        for rep in range(reps):
            study = bench_study(work / f"{scenario}-{rep}", instances, associations)
            # alternating: each repetition starts with the next receiver
            for receiver in started[rep % len(started) :] + started[: rep % len(started)]:
                measure(receiver, study, results[receiver.key])
            shutil.rmtree(work / f"{scenario}-{rep}", ignore_errors=True)
        peaks = sampler.stop()
    finally:
        for receiver in started:
            receiver.stop()
    print_ingest({r.key: r.label for r in started}, results, peaks)
    return results


def print_ingest(
    labels: dict[str, str], results: dict[str, Measures], peaks: dict[str, dict[str, int]]
) -> None:
    reference = results.get("storescp")
    ref_rate = median(reference.rates) if reference else float("nan")
    ref_cpu = median(reference.cpu["storescp"]) if reference else float("nan")
    print(
        f"  {'receiver':<42} {'inst/s':>7} {'ratio':>6} {'CPU ms/inst':>12} "
        f"{'CPU/storescp':>13} {'peak RSS MiB':>13}"
    )
    main_role = {"storescp": "storescp", "orthanc": "orthanc", "pynetdicom": "pynetdicom"}
    for key, measures in results.items():
        role = main_role.get(key, "scp")
        rate, cpu = median(measures.rates), median(measures.cpu.get(role, []))
        rss = peaks.get(key, {}).get(role, 0) / MIB
        print(
            f"  {labels[key]:<42} {rate:7.0f} {_ratio(rate, ref_rate):>6} {cpu:12.2f} "
            f"{_ratio(cpu, ref_cpu, 1) + 'x':>13} {rss:13.1f}",
            flush=True,
        )
    if "scp" in results:
        scp, scp_rss = results["scp"], peaks.get("scp", {})
        print(
            f"    scp2fhir scp's Redis: CPU {median(scp.cpu.get('redis', [])):.2f} ms/inst, "
            f"peak RSS {scp_rss.get('redis', 0) / MIB:.1f} MiB, "
            f"{median(scp.redis_bytes):.0f} bytes per instance in the inbox"
        )
    if "up" in results:
        up, up_rss = results["up"], peaks.get("up", {})
        parts = ", ".join(
            f"{role} {median(values):.2f}"
            for role, values in sorted(up.system_cpu.items())
            if role != "other"
        )
        total = sum(median(v) for v in up.system_cpu.values())
        print(
            f"    scp2fhir up until the ImagingStudy is written: CPU {total:.2f} ms/inst ({parts})"
        )
        print(
            "    scp2fhir up peak RSS MiB: "
            + " / ".join(f"{r} {up_rss.get(r, 0) / MIB:.1f}" for r in ("scp", "worker", "redis"))
        )
        print(
            f"    scp2fhir up: last C-STORE -> ImagingStudy written, minus the "
            f"{QUIET_SECONDS:g} s quiet period: {median(up.latencies):.2f} s"
        )
    print(
        "    (CPU: the receiver's own processes during the send; for scp2fhir the SCP "
        "processes only)",
        flush=True,
    )


def _ratio(value: float, reference: float, digits: int = 2) -> str:
    """``value / reference``, or "-" without a usable reference (none run, or too little
    CPU time to read: /proc counts in clock ticks)."""
    if not reference > 0:
        return "-"
    return f"{value / reference:.{digits}f}"


# --- worker side -----------------------------------------------------------------------


def fold_and_build(reps: int, work: Path, instances: int) -> None:
    print(
        f"\nworker: fold and build, one study of {instances} CT/MR instances, one Redis, "
        f"inline worker; medians of {reps}",
        flush=True,
    )
    server = RedisProcess().start()
    # The garbage collector as `scp2fhir worker` sets it (workers/runner.py), restored after.
    thresholds = collector.tune()
    try:
        url = server.url
        clients = connect(url)
        series = [("CT", instances // 2), ("MR", instances - instances // 2)]
        study = make_study(work / "fold", series)
        headers = [read_header(p).json for p in study.files]
        figures: dict[str, tuple[float, float, float]] = {}
        # base, and mii: a profile that records each instance's technique (the most data)
        for profile in ("base", "mii"):
            env = {
                "SCP2FHIR_REDIS_URL": url,
                "SCP2FHIR_OUTPUT_DIR": str(work / "out"),
                "SCP2FHIR_PROFILE": profile,
            }
            ctx = build_context(env, clients)
            install(ctx)
            rates: list[float] = []
            cpu_rates: list[float] = []
            builds: list[float] = []
            loads: list[float] = []
            build_cpu: list[float] = []
            per_instance: list[float] = []
            for _ in range(reps):
                clients.data.flushall()
                ensure_group(clients.data)
                baseline = int(clients.data.info("memory")["used_memory"])
                inbox = Inbox(clients.data, clients.rq)
                for header in headers:
                    inbox.push(study.study_uid, header)
                began, cpu = time.perf_counter(), time.process_time()
                folded = 0
                while folded < len(headers):  # a drain hands over after its time slice
                    folded += drain_inbox()
                rates.append(len(headers) / (time.perf_counter() - began))
                cpu_rates.append(len(headers) / (time.process_time() - cpu))
                clients.rq.delete(*clients.rq.keys("rq:*"))  # jobs are not what is measured
                clients.data.delete(keys.INBOX, keys.OPEN_STUDIES)
                held = int(clients.data.info("memory")["used_memory"]) - baseline
                per_instance.append(held / len(headers))
                began, cpu = time.perf_counter(), time.process_time()
                aggregate: StudyAggregate = ctx.store.load(study.study_uid)
                loads.append(time.perf_counter() - began)
                resource = imaging_study(aggregate, "R4", options=ctx.options)
                builds.append(time.perf_counter() - began)
                build_cpu.append(time.process_time() - cpu)
                assert resource["numberOfInstances"] == len(headers)
            figures[profile] = (median(rates), median(per_instance), median(builds))
            line(
                f"[{profile}] fold instances/s per worker (target >= {FOLD_TARGET_PER_SECOND})",
                f"{median(rates):8.0f}",
            )
            line(
                f"[{profile}] fold instances per CPU second of the worker",
                f"{median(cpu_rates):8.0f}",
            )
            line(
                f"[{profile}] Redis bytes per instance held (aggregate)",
                f"{median(per_instance):8.0f}",
            )
            line(
                f"[{profile}] build ImagingStudy of {instances} (s, target < "
                f"{BUILD_TARGET_SECONDS[profile]:g})",
                f"{median(builds):8.3f}",
            )
            line(
                f"[{profile}]   of which load from Redis (s) | worker CPU s",
                f"{median(loads):8.3f} {median(build_cpu):.3f}",
            )
        (base_rate, base_bytes, base_build), (rate, size, build) = figures["base"], figures["mii"]
        line(
            "mii / base: fold rate, bytes, build time",
            f"{rate / base_rate:.2f} {size / base_bytes:.2f} {build / base_build:.2f}",
        )
        clients.close()
        shutil.rmtree(work / "fold", ignore_errors=True)
    finally:
        gc.set_threshold(*thresholds)
        server.stop()


# --- spool: small instances and a large object -----------------------------------------


def large_object(folder: Path, megabytes: int) -> Path:
    """A multi-frame 16-bit image of about ``megabytes`` MiB (pixel data of zeros)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(sample_file("CT_small.dcm"))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.Rows = ds.Columns = 512
    frame = 512 * 512 * 2
    frames = max(1, megabytes * 1024 * 1024 // frame)
    ds.NumberOfFrames = frames
    ds.PixelData = bytes(frame * frames)
    path = folder / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def spool(work: Path, megabytes: int, instances: int, reps: int) -> None:
    """`scp2fhir scp` with each spool setting: a CT study (alternating, as in the ingest
    scenarios), then one large object (peak RSS before and after)."""
    print(
        f"\nspool: scp2fhir scp with SCP2FHIR_SPOOL=file (the default) and =memory, "
        f"1 association; {instances} CT instances (medians of {reps}), then one "
        f"{megabytes} MiB object",
        flush=True,
    )
    path = large_object(work / "large", megabytes)
    size = path.stat().st_size / 1024 / 1024
    receivers = {name: Scp({"SCP2FHIR_SPOOL": name}) for name in ("file", "memory")}
    results = {name: Measures() for name in receivers}
    try:
        for rep in range(reps):
            study = bench_study(work / f"spool-{rep}", instances, 1)
            for name in list(receivers)[rep % 2 :] + list(receivers)[: rep % 2]:
                measure(receivers[name], study, results[name])
            shutil.rmtree(work / f"spool-{rep}", ignore_errors=True)
        for name, measures in results.items():
            line(
                f"SPOOL={name}: {instances} CT instances, inst/s | CPU ms/inst",
                f"{median(measures.rates):8.0f} | {median(measures.cpu['scp']):.2f}",
            )
        for name, scp in receivers.items():
            before, held = scp.peak_rss_kib(), scp.received()
            seconds = send(scp.port, [[path]])
            after = scp.peak_rss_kib()
            if scp.received() != (held or 0) + 1:
                raise SendFailed(f"scp2fhir scp (SPOOL={name}) did not keep the large object")
            line(
                f"SPOOL={name}: {size:.0f} MiB object in {seconds:.1f} s, peak RSS MiB",
                f"{before / MIB:.0f} -> {after / MIB:.0f} (+{(after - before) / MIB:.0f})",
            )
    finally:
        for scp in receivers.values():
            scp.stop()
        shutil.rmtree(work / "large", ignore_errors=True)


# --- the command -----------------------------------------------------------------------


def platform_line() -> str:
    model = "unknown CPU"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, Python {platform.python_version()}, redis {redis.__version__}"


def machine() -> list[str]:
    from importlib.metadata import version

    memory = "?"
    try:
        for text in Path("/proc/meminfo").read_text().splitlines():
            if text.startswith("MemTotal:"):
                memory = f"{int(text.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    model = platform_line().split(",")[0]
    software = [
        f"Python {platform.python_version()}",
        f"pynetdicom {version('pynetdicom')}",
        f"pydicom {version('pydicom')}",
        "dcmtk " + tool_version(["/usr/bin/storescp", "--version"], r"v([\d.]+)"),
        "Orthanc " + tool_version(["/usr/sbin/Orthanc", "--version"], r"Orthanc ([\d.]+)"),
        "redis-server " + tool_version(["redis-server", "--version"], r"v=([\d.]+)"),
    ]
    return [
        f"machine: {model}, {os.cpu_count()} cores, {memory} RAM, Linux {platform.release()}",
        "software: " + ", ".join(software),
    ]


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _names(values: Iterable[str]) -> set[str]:
    names = {name.strip() for value in values for name in value.split(",") if name.strip()}
    unknown = names - set(SCENARIOS) - set(RECEIVERS)
    if unknown:
        raise SystemExit(
            f"--only: unknown {', '.join(sorted(unknown))}; scenarios: {', '.join(SCENARIOS)}; "
            f"receivers: {', '.join(RECEIVERS)}"
        )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="1 repetition, smaller studies and object"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help=f"scenarios ({', '.join(SCENARIOS)}) and/or receivers ({', '.join(RECEIVERS)})",
    )
    parser.add_argument("--instances", type=int, help="ingest study size (default 1000)")
    parser.add_argument("--build-instances", type=int, help="worker study size (default 5000)")
    parser.add_argument("--large-mb", type=int, help="large object size (default 200)")
    args = parser.parse_args(argv)
    names = _names(args.only)
    scenarios = [s for s in SCENARIOS if s in names] or list(SCENARIOS)
    receivers = [r for r in RECEIVERS if r in names] or list(RECEIVERS)
    reps = 1 if args.quick else args.reps
    instances = args.instances or (200 if args.quick else 1000)
    build = args.build_instances or (1000 if args.quick else 5000)
    megabytes = args.large_mb or (20 if args.quick else 200)

    began = time.monotonic()
    print("\n".join(machine()))
    print(f"load average at start: {load_average()}")
    print(
        f"repetitions: {reps}; quiet period {QUIET_SECONDS:g} s; dcmtk tools and Orthanc "
        "with TCP_NODELAY=1",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="scp2fhir-bench-") as tmp:
        work = Path(tmp)
        runs: dict[str, Callable[[], object]] = {
            "worker": lambda: fold_and_build(reps, work, build),
            "spool": lambda: spool(work, megabytes, instances, reps),
            "completion": lambda: _completion(reps, work),
            "destinations": lambda: _destinations(reps, work),
        }
        for scenario in scenarios:
            if scenario in INGEST:
                ingest(scenario, instances, reps, work, receivers)
            else:
                runs[scenario]()
    print(f"\nload average at end: {load_average()}; {time.monotonic() - began:.0f} s in all")
    return 0


def _destinations(reps: int, work: Path) -> None:
    from tests.bench_destinations import destination_cost

    destination_cost(reps, work)


def _completion(reps: int, work: Path) -> None:
    from tests.bench_lifecycle import completion_latency

    completion_latency(reps, work)


if __name__ == "__main__":
    sys.exit(main())
