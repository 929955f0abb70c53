"""Backfill throughput: `python -m tests.bench_reconcile` (README "Reconcile and backfill").

In one run on one machine, per repetition with a fresh `scp2fhir up` (private Redis, 2
SCP processes, 2 workers):

* **reference**: dcmtk `storescu` sends a set of studies straight to scp2fhir, over as
  many associations as the backfill moves at once (SCP2FHIR_PACS_MOVES=2);
* **backfill**: the same shape of studies, held by a private Orthanc only, fetched with
  `scp2fhir backfill` (C-FIND per day, C-MOVE to scp2fhir); wall time of the command;
* **ceiling**: the same backfill with dcmtk `storescp` as the move destination, i.e. what
  Orthanc's C-MOVE delivers to a receiver that does nothing but write files.

Instances/s are medians over --reps repetitions; nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.bench import ROOT, Storescp, System, line, platform_line, send
from tests.orthanc import OrthancProcess, dated_study
from tests.support import GeneratedStudy

MOVES = 2


def studies(folder: Path, days: Sequence[str], per_day: int, size: int) -> list[GeneratedStudy]:
    return [
        dated_study(folder / f"{day}-{i}", [("CT", size)], day, f"{8 + i:02d}0000")
        for day in days
        for i in range(per_day)
    ]


def backfill(
    system: System, pacs: OrthancProcess, days: Sequence[str], **extra: str
) -> tuple[float, float]:
    """Run `scp2fhir backfill` over ``days``; returns instances/s of its wall time and the
    CPU seconds the command itself used per 1000 instances."""
    since, until = (f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in (days[0], days[-1]))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCP2FHIR_")},
        "SCP2FHIR_REDIS_URL": system.redis_url(),
        "SCP2FHIR_PACS_MOVES": str(MOVES),
        "SCP2FHIR_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        **extra,
    }
    began = time.perf_counter()
    cpu = _children_cpu()
    result = subprocess.run(
        [sys.executable, "-m", "scp.cli", "backfill", "--pacs", pacs.address,
         "--since", since, "--until", until],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    seconds = time.perf_counter() - began
    cpu = _children_cpu() - cpu
    if result.returncode != 0:
        raise RuntimeError(f"backfill failed: {result.stderr[-2000:]}")
    moved = re.search(r"\((\d+) instances\)", result.stdout)
    assert moved, result.stdout
    instances = int(moved.group(1))
    return instances / seconds, cpu / instances * 1000


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_reconcile", description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer instances, 1 repetition")
    args = parser.parse_args(argv)
    reps = 1 if args.quick else args.reps
    per_day, size = (5, 20) if args.quick else (10, 50)
    print(f"machine: {os.cpu_count()} cores, {platform_line()}")
    print(f"repetitions: {reps}; 2 days x {per_day} studies x {size} CT instances per set")
    reference: list[float] = []
    ours: list[float] = []
    ceiling: list[float] = []
    cpu: list[float] = []
    with tempfile.TemporaryDirectory(prefix="scp2fhir-bench-reconcile-") as tmp:
        work = Path(tmp)
        direct = studies(work / "direct", ["20200101", "20200102"], per_day, size)
        fetched = studies(work / "fetched", ["20200201", "20200202"], per_day, size)
        to_storescp = studies(work / "storescp", ["20200301", "20200302"], per_day, size)
        files = [f for s in direct for f in s.files]
        pacs = OrthancProcess().start()
        try:
            pacs.store(f for s in fetched + to_storescp for f in s.files)
            for _ in range(reps):
                system = System({"SCP2FHIR_LOG_LEVEL": "WARNING"})
                storescp = Storescp(fork=True)
                try:
                    groups = [files[i::MOVES] for i in range(MOVES)]
                    reference.append(len(files) / send(system.port, groups))
                    pacs.point_at(system.port)
                    rate, seconds = backfill(system, pacs, ["20200201", "20200202"])
                    ours.append(rate)
                    cpu.append(seconds)
                    pacs.point_at(storescp.port, "STORESCP", name="storescp")
                    rate, _ = backfill(
                        system,
                        pacs,
                        ["20200301", "20200302"],
                        SCP2FHIR_PACS_MOVE_DESTINATION="STORESCP",
                    )
                    ceiling.append(rate)
                finally:
                    storescp.stop()
                    system.stop()
        finally:
            pacs.remove()
    print(f"\nbackfill from Orthanc ({len(files)} instances per set, {MOVES} at once)")
    line("storescu -> scp2fhir instances/s (median, reference)", f"{_m(reference):8.0f}")
    line("backfill Orthanc -> scp2fhir instances/s (median)", f"{_m(ours):8.0f}")
    line("ratio backfill / storescu", f"{_m(ours) / _m(reference):8.2f}")
    line("backfill Orthanc -> dcmtk storescp instances/s (ceiling)", f"{_m(ceiling):8.0f}")
    line("CPU s of the backfill command per 1000 instances (median)", f"{_m(cpu):8.2f}")
    return 0


def _m(values: list[float]) -> float:
    return statistics.median(values)


if __name__ == "__main__":
    raise SystemExit(main())
