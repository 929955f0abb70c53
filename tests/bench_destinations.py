"""The cost of destinations, a scenario of ``python -m tests.bench`` (``--only destinations``):
fold and emit rates with one destination and with three (an EHR with QI-Core, a
pseudonymized MII research copy that leaves out MR, an R5 folder), and the time each
destination's delivery job needs to build its copy of a 2000-instance study."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from scp import keys
from scp.header import read_header
from scp.inbox import Inbox
from tests.bench import line, median
from tests.support import RedisProcess, make_study
from workers.context import install
from workers.jobs import drain_inbox, ensure_group

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
