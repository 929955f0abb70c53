"""scp2fhir's benchmark: `python -m tests.bench` (see the README's Performance section).

It measures, in one run on one machine, against dcmtk's storescp as the reference:

* ingest over 1 association (one CT study) and over 4 parallel associations
  (20 studies x 100 mixed CT/MR instances), instances/s for storescp and for the
  whole scp2fhir system (`scp2fhir up`: its SCP processes, workers and Redis), and
  the ratio scp2fhir / storescp;
* seconds from the last C-STORE response to the ImagingStudy file, minus the quiet
  period;
* worker fold throughput (instances/s, one worker, batches as in production);
* Redis memory per instance held after emission (the aggregate kept for late instances);
* time to build the ImagingStudy of a 5000-instance study (load from Redis + map);
* peak RSS of the SCP and worker processes;
* the cost of destinations (``--only destinations``): fold and emit rates with one
  destination and with three (an EHR with QI-Core, a pseudonymized MII research copy
  that leaves out MR, an R5 folder), and the time each destination's delivery job needs
  to build its copy of a 2000-instance study.

Figures are medians over --reps repetitions (default 3). Nothing here asserts:
speed is reported, correctness is what the tests check.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import redis

from scp import keys
from scp.connections import connect
from scp.header import read_header
from scp.inbox import Inbox
from scp.settings import Settings
from tests.support import (
    DCMTK_ENV,
    GeneratedStudy,
    RedisProcess,
    dcmtk,
    free_port,
    make_study,
    wait_for,
)
from workers.context import WorkerContext, install
from workers.fold import StudyAggregate
from workers.jobs import drain_inbox, ensure_group
from workers.mapping import imaging_study

ROOT = Path(__file__).resolve().parent.parent
QUIET_SECONDS = 2.0


def send(port: int, groups: Sequence[Sequence[Path]]) -> float:
    """Send each group over its own storescu association, all at once; returns seconds."""
    began = time.perf_counter()
    procs = [
        subprocess.Popen(
            [dcmtk("storescu"), "-aec", "SCP2FHIR", "127.0.0.1", str(port), *map(str, files)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for files in groups
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.perf_counter() - began


class Storescp:
    """dcmtk's storescp writing to a temporary folder: the reference receiver."""

    def __init__(self, fork: bool) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-storescp-"))
        args = [dcmtk("storescp"), "-od", str(self.dir), "-aet", "SCP2FHIR"]
        if fork:
            args.append("--fork")
        self.proc = subprocess.Popen(
            [*args, str(self.port)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _echo(self.port), 10, "storescp")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _echo(port: int) -> bool:
    result = subprocess.run(
        [dcmtk("echoscu"), "-aec", "SCP2FHIR", "127.0.0.1", str(port)],
        env=DCMTK_ENV,
        capture_output=True,
    )
    return result.returncode == 0


class System:
    """`scp2fhir up` with a private Redis in a temporary working directory."""

    def __init__(self, extra_env: dict[str, str]) -> None:
        self.port = free_port()
        self.cwd = Path(tempfile.mkdtemp(prefix="bench-scp2fhir-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_")}
        env.update(
            {
                "SCP2FHIR_PORT": str(self.port),
                "SCP2FHIR_QUIET_SECONDS": str(QUIET_SECONDS),
                "SCP2FHIR_DASHBOARD_PORT": "0",
                "SCP2FHIR_WEB_PORT": "0",
                "SCP2FHIR_LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(ROOT),
                **extra_env,
            }
        )
        self.log = (self.cwd / "up.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scp.cli", "up"],
            cwd=self.cwd,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: _echo(self.port), 60, "scp2fhir up")
        self.peaks: dict[str, int] = {}
        self._sampling = True
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()

    def output(self, study_uid: str) -> Path:
        return self.cwd / "out" / "ImagingStudy" / f"{study_uid}.json"

    def redis_url(self) -> str:
        # The private Redis's port is in its command line, which redis-server rewrites to
        # "redis-server 127.0.0.1:PORT" once it runs.
        for pid in _descendants(self.proc.pid):
            cmd = _cmdline(pid)
            if cmd and "redis-server" in cmd[0]:
                if "--port" in cmd:
                    return f"redis://127.0.0.1:{cmd[cmd.index('--port') + 1]}/0"
                return f"redis://{cmd[0].split()[-1]}/0"
        raise RuntimeError("private redis-server not found")

    def _sample_rss(self) -> None:
        while self._sampling:
            for pid in _descendants(self.proc.pid):
                role = _role(_cmdline(pid))
                if role:
                    self.peaks[role] = max(self.peaks.get(role, 0), _rss_kib(pid))
            time.sleep(0.2)

    def stop(self) -> None:
        self._sampling = False
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()
        shutil.rmtree(self.cwd, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    children = [int(p) for p in out.stdout.split()]
    return children + [d for c in children for d in _descendants(c)]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _role(cmd: list[str]) -> str | None:
    if "scp" in cmd and "scp.cli" in cmd:
        return "scp"
    if "worker" in cmd and "scp.cli" in cmd:
        return "worker"
    if cmd and "rq:" in cmd[0]:  # RQ's work horse / scheduler rename themselves
        return "worker"
    if cmd and "redis-server" in cmd[0]:
        return "redis"
    return None


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def line(label: str, value: str) -> None:
    print(f"  {label:<58} {value}", flush=True)


# --- scenarios -------------------------------------------------------------------------


def ingest(
    name: str,
    studies: Callable[[Path], list[GeneratedStudy]],
    associations: int,
    reps: int,
    work: Path,
) -> None:
    print(f"\n{name} ({associations} association{'s' if associations > 1 else ''})", flush=True)
    reference: list[float] = []
    ours: list[float] = []
    latencies: list[float] = []
    count = 0
    system = System({})
    try:
        for rep in range(reps):
            batch = studies(work / f"{name}-{rep}")
            files = [f for s in batch for f in s.files]
            count = len(files)
            groups = [files[i::associations] for i in range(associations)]
            scp = Storescp(fork=associations > 1)
            try:
                reference.append(count / send(scp.port, groups))
            finally:
                scp.stop()
            seconds = send(system.port, groups)
            done = time.time()
            ours.append(count / seconds)
            for study in batch:
                wait_for(
                    functools.partial(
                        _complete, system.output(study.study_uid), len(study.sop_uids)
                    ),
                    QUIET_SECONDS + 120,
                    "the ImagingStudy",
                )
            last_written = max(system.output(s.study_uid).stat().st_mtime for s in batch)
            latencies.append(last_written - done - QUIET_SECONDS)
            for study in batch:
                shutil.rmtree(study.files[0].parent, ignore_errors=True)
    finally:
        system.stop()
    ratio = median(ours) / median(reference)
    line(f"instances per run: {count}", "")
    line("dcmtk storescp instances/s (median)", f"{median(reference):8.0f}")
    line("scp2fhir instances/s (median, Success after Redis)", f"{median(ours):8.0f}")
    line("ratio scp2fhir / storescp", f"{ratio:8.2f}")
    line("last C-STORE -> last ImagingStudy written, minus quiet (s)", f"{median(latencies):8.2f}")
    line(
        "peak RSS KiB: scp / worker / redis",
        " / ".join(str(system.peaks.get(r, 0)) for r in ("scp", "worker", "redis")),
    )


def _complete(path: Path, instances: int) -> bool:
    try:
        return bool(json.loads(path.read_text())["numberOfInstances"] == instances)
    except (OSError, ValueError, KeyError):
        return False


def fold_and_build(reps: int, work: Path) -> None:
    print("\nworker side (one Redis, inline worker)", flush=True)
    server = RedisProcess().start()
    try:
        url = server.url
        clients = connect(url)
        study = make_study(work / "fold", [("CT", 2500), ("MR", 2500)])
        headers = [read_header(p).json for p in study.files]
        figures: dict[str, tuple[float, float, float]] = {}
        # base, and mii: a profile that records each instance's technique (the most data)
        for profile in ("base", "mii"):
            settings = Settings.from_env(
                {
                    "SCP2FHIR_REDIS_URL": url,
                    "SCP2FHIR_OUTPUT_DIR": str(work / "out"),
                    "SCP2FHIR_PROFILE": profile,
                }
            )
            ctx = WorkerContext.build(settings, clients)
            install(ctx)
            rates: list[float] = []
            builds: list[float] = []
            per_instance: list[float] = []
            for _ in range(reps):
                clients.data.flushall()
                ensure_group(clients.data)
                baseline = int(clients.data.info("memory")["used_memory"])
                inbox = Inbox(clients.data, clients.rq)
                for header in headers:
                    inbox.push(study.study_uid, header)
                began = time.perf_counter()
                drain_inbox()
                rates.append(len(headers) / (time.perf_counter() - began))
                clients.rq.delete(*clients.rq.keys("rq:*"))  # jobs are not what is measured
                clients.data.delete(keys.INBOX, keys.OPEN_STUDIES)
                held = int(clients.data.info("memory")["used_memory"]) - baseline
                per_instance.append(held / len(headers))
                began = time.perf_counter()
                aggregate: StudyAggregate = ctx.store.load(study.study_uid)
                resource = imaging_study(aggregate, "R4", options=ctx.options)
                builds.append(time.perf_counter() - began)
                assert resource["numberOfInstances"] == len(headers)
            figures[profile] = (median(rates), median(per_instance), median(builds))
            line(f"[{profile}] fold instances/s per worker (median)", f"{median(rates):8.0f}")
            line(
                f"[{profile}] Redis bytes per instance held (aggregate, median)",
                f"{median(per_instance):8.0f}",
            )
            line(
                f"[{profile}] build ImagingStudy of 5000 instances (s, median)",
                f"{median(builds):8.3f}",
            )
        (base_rate, base_bytes, base_build), (rate, size, build) = figures["base"], figures["mii"]
        line(
            "mii / base: fold rate, bytes, build time",
            f"{rate / base_rate:.2f} {size / base_bytes:.2f} {build / base_build:.2f}",
        )
        clients.close()
        shutil.rmtree(work / "fold", ignore_errors=True)
    finally:
        server.stop()


#: The destinations of the cost scenario (never reached: emission only queues their jobs).
DESTINATIONS = {
    "ehr": '[[destinations]]\nname = "ehr"\nurl = "http://127.0.0.1:9/fhir"\nprofile = "qicore"\n',
    "research": '[[destinations]]\nname = "research"\nurl = "http://127.0.0.1:9/fhir"\n'
    'profile = "mii"\nbundle = true\n[destinations.leave_out]\nmodalities = ["MR"]\n'
    '[destinations.pseudonymize]\nkey_file = "{key}"\nbirth_date = "year"\n'
    'patient_id_system = "https://dic.example.org/sid/patient"\n',
    "repository": '[[destinations]]\nname = "repository"\nfolder = "{folder}"\n'
    'fhir_version = "R5"\n',
}


def destination_cost(reps: int, work: Path) -> None:
    """Fold and emit with one destination and with three; each destination's build."""
    from tests.conftest_delivery import worker_context
    from workers.delivery.output import destination_output
    from workers.jobs import emit

    print("\nthe cost of destinations (one Redis, inline worker)", flush=True)
    server = RedisProcess().start()
    key = work / "research.key"
    key.write_text("bench-key-0123456789abcdef\n")
    try:
        studies = [make_study(work / "dest" / str(n), [("CT", 20), ("MR", 20)]) for n in range(50)]
        headers = [(s.study_uid, read_header(p).json) for s in studies for p in s.files]
        big = make_study(work / "dest-big", [("CT", 1000), ("MR", 1000)])
        big_headers = [read_header(p).json for p in big.files]
        configurations = {"1 destination": ["ehr"], "3 destinations": list(DESTINATIONS)}
        contexts = {}
        for label, names in configurations.items():
            path = work / f"{len(names)}.toml"
            path.write_text(
                "\n".join(DESTINATIONS[n].format(key=key, folder=work / "repo") for n in names)
            )
            env = {
                "SCP2FHIR_REDIS_URL": server.url,
                "SCP2FHIR_OUTPUT_DIR": str(work / "out"),
                "SCP2FHIR_CONFIG": str(path),
            }
            contexts[label] = worker_context(env)
        folds: dict[str, list[float]] = {label: [] for label in configurations}
        emits: dict[str, list[float]] = {label: [] for label in configurations}
        for _ in range(reps):
            for label, ctx in contexts.items():  # interleaved: the machine's noise hits both
                install(ctx)
                data = ctx.clients.data
                data.flushall()
                ensure_group(data)
                inbox = Inbox(data, ctx.clients.rq)
                for study_uid, header in headers:
                    inbox.push(study_uid, header)
                began = time.perf_counter()
                drain_inbox()
                folds[label].append(len(headers) / (time.perf_counter() - began))
                ctx.clients.rq.delete(*ctx.clients.rq.keys("rq:*"))  # quiet checks: not measured
                began = time.perf_counter()
                for study in studies:
                    seen = data.zscore(keys.OPEN_STUDIES, study.study_uid)
                    assert seen is not None
                    data.set(keys.study_lease(study.study_uid), "bench")
                    assert emit(ctx, study.study_uid, int(seen), "bench")
                emits[label].append(len(studies) / (time.perf_counter() - began))
                queued = sum(
                    int(data.llen(f"rq:queue:{d.queue}")) for d in ctx.delivery.destinations
                )
                assert queued == len(studies) * len(configurations[label]), queued
        figures: dict[str, tuple[float, float]] = {}
        for label in configurations:
            figures[label] = (median(folds[label]), median(emits[label]))
            line(f"[{label}] fold instances/s (median)", f"{figures[label][0]:8.0f}")
            line(f"[{label}] emit studies/s (40 instances; median)", f"{figures[label][1]:8.1f}")
        (fold1, emit1), (fold3, emit3) = figures["1 destination"], figures["3 destinations"]
        line("3 / 1 destinations: fold rate, emit rate", f"{fold3 / fold1:.2f} {emit3 / emit1:.2f}")

        # What each delivery job builds (in its destination's own process).
        ctx = contexts["3 destinations"]
        install(ctx)
        data = ctx.clients.data
        data.flushall()
        ensure_group(data)
        inbox = Inbox(data, ctx.clients.rq)
        for header in big_headers:
            inbox.push(big.study_uid, header)
        drain_inbox()
        aggregate = ctx.store.load(big.study_uid)
        for destination in ctx.delivery.destinations:
            builds = []
            for _ in range(reps):
                began = time.perf_counter()
                built = destination_output(destination, aggregate, standalone=False)
                builds.append(time.perf_counter() - began)
                assert built is not None
            line(
                f"[{destination.name}] build its copy of 2000 instances (s, median)",
                f"{median(builds):8.3f}",
            )
        for each in contexts.values():
            each.clients.close()
    finally:
        server.stop()
        shutil.rmtree(work / "dest", ignore_errors=True)
        shutil.rmtree(work / "dest-big", ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller studies, 1 repetition")
    parser.add_argument(
        "--only", choices=("destinations",), help="run this scenario alone (no ingest)"
    )
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    big = 300 if args.quick else 2000
    per_study = 20 if args.quick else 100

    print(f"machine: {os.cpu_count()} cores, {platform_line()}")
    print(f"repetitions: {reps}; quiet period {QUIET_SECONDS}s; dcmtk with TCP_NODELAY=1")
    with tempfile.TemporaryDirectory(prefix="scp2fhir-bench-") as tmp:
        work = Path(tmp)
        if args.only == "destinations":
            destination_cost(reps, work)
            return 0
        ingest("one CT study", lambda d: [make_study(d, [("CT", big)])], 1, reps, work)
        ingest(
            "20 studies x 100 mixed CT/MR",
            lambda d: [
                make_study(d / str(n), [("CT", per_study // 2), ("MR", per_study // 2)])
                for n in range(20)
            ],
            4,
            reps,
            work,
        )
        fold_and_build(reps, work)
        from tests.bench_lifecycle import completion_latency

        completion_latency(reps, work)
        destination_cost(reps, work)
    return 0


def platform_line() -> str:
    import platform

    model = "unknown CPU"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                model = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, Python {platform.python_version()}, redis {redis.__version__}"


if __name__ == "__main__":
    raise SystemExit(main())
