"""Delivery throughput against the FHIR test server: ``python -m tests.bench_delivery``.

Studies are pushed through the SCP's inbox, folded and emitted in this process (the
real jobs, run inline), which queues their delivery jobs; then real ``scp2fhir worker``
processes deliver them, and the clock runs until ``deliver-pending`` is empty. So the
figures cover the whole delivery path: RQ dequeue, the forked job process, reading the
aggregate, mapping, the HTTP exchange (the server validates every write), the Redis
bookkeeping. A raw loop of PUTs over one keep-alive connection gives the server's own
ceiling for comparison.

* one study of 1000 instances (4 series of 250): its first delivery (create) and
  ``--rounds`` re-deliveries, each after one more instance (update with If-Match);
* 100 small studies (2 series of 3 instances), in each write mode, with 1 and with 2
  workers, each run against an empty server (its conditional update searches linearly).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import redis
from pydicom.uid import generate_uid
from rq import SimpleWorker
from rq.registry import ScheduledJobRegistry

from scp import keys
from tests.conftest_delivery import (
    Worker,
    clone_header,
    cloned_study,
    delivery_env,
    push,
    study_headers,
    worker_context,
)
from tests.fhirserver.harness import FhirServer
from tests.support import RedisProcess, wait_for
from workers.context import WorkerContext, install
from workers.jobs import emit, ensure_group
from workers.mapping import imaging_study

Header = dict[str, Any]


def fold_and_emit(ctx: WorkerContext, redis_url: str, headers: list[Header]) -> list[str]:
    """Push, fold (drain jobs inline) and emit every study now; returns the UIDs."""
    push(redis_url, headers)
    SimpleWorker([keys.FOLD_QUEUE], connection=ctx.clients.rq).work(burst=True)
    data = ctx.clients.data
    uids: list[str] = list(data.zrange(keys.OPEN_STUDIES, 0, -1))  # type: ignore[arg-type]
    for uid in uids:
        data.delete(keys.study_check(uid))
        token = uuid.uuid4().hex
        data.set(keys.study_lease(uid), token)
        seen = data.zscore(keys.OPEN_STUDIES, uid)
        assert seen is not None and emit(ctx, uid, int(seen), token)
    # Folding scheduled a quiet check per study; they were done here, inline. Left in
    # place, they would run on the emit queue ahead of the deliveries being measured.
    scheduled = ScheduledJobRegistry(keys.EMIT_QUEUE, connection=ctx.clients.rq)  # type: ignore[no-untyped-call]
    for job_id in scheduled.get_job_ids():
        scheduled.remove(job_id, delete_job=True)
    return uids


def drained(data: redis.Redis) -> bool:
    return data.zcard(keys.DELIVER_PENDING) == 0 and not data.keys(keys.study_deliver_queued("*"))


def timed_delivery(data: redis.Redis) -> float:
    began = time.monotonic()
    wait_for(lambda: drained(data), 600, "deliveries", step=0.005)
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="re-deliveries of the big study")
    parser.add_argument("--log-level", default="WARNING", help="of the workers (logs kept)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="scp2fhir-bench-delivery-"))
    redis_server = RedisProcess().start()
    fhir = FhirServer().start()
    try:
        env = delivery_env(redis_server.url, folder / "out", fhir.base_url)
        env["SCP2FHIR_LOG_LEVEL"] = args.log_level
        ctx = worker_context(env)
        ensure_group(ctx.clients.data)
        install(ctx)
        data = ctx.clients.data
        _, (template,) = study_headers(folder / "template", [("CT", 1)])

        # -- one study of 1000 instances ---------------------------------------------
        fhir.reset()
        big_uid, big = cloned_study(template, 4, 250)
        fold_and_emit(ctx, redis_server.url, big)
        body = json.dumps(imaging_study(ctx.store.load(big_uid), "R4")).encode()
        worker = Worker(env, folder / "worker-big.log")
        try:
            first = timed_delivery(data)
            updates = []
            for _ in range(args.rounds):
                extra = clone_header(template, big_uid, generate_uid(), 1)
                fold_and_emit(ctx, redis_server.url, [extra])
                updates.append(timed_delivery(data))
        finally:
            worker.stop()
        version = str(data.hget(keys.study_delivery(big_uid), "version"))
        print(
            f"1000-instance study ({len(body) / 1e6:.2f} MB ImagingStudy): first delivery "
            f"{first:.2f}s, {args.rounds} updates median {statistics.median(updates):.2f}s "
            f"-> {1 / statistics.median(updates):.2f} resources/s "
            f"({len(body) / 1e6 / statistics.median(updates):.2f} MB/s); server version {version}"
        )
        with httpx.Client(timeout=120) as client:
            raw = []
            resource = json.loads(body)
            for _ in range(args.rounds):
                began = time.monotonic()
                client.put(
                    f"{fhir.base_url}/ImagingStudy/{resource['id']}",
                    content=body,
                    headers={"Content-Type": "application/fhir+json"},
                ).raise_for_status()
                raw.append(time.monotonic() - began)
        print(
            f"  raw PUT of the same resource (server alone): median "
            f"{statistics.median(raw):.2f}s -> {1 / statistics.median(raw):.2f} resources/s"
        )

        # -- 100 small studies: each write mode, 1 and 2 workers, empty server ---------
        for mode in ("conditional", "client-id"):
            mode_env = {**env, "SCP2FHIR_FHIR_WRITE_MODE": mode}
            for workers in (1, 2):
                fhir.reset()  # the test server's search is linear in what it holds
                headers: list[Header] = []
                for _ in range(100):
                    headers += cloned_study(template, 2, 3)[1]
                uids = fold_and_emit(ctx, redis_server.url, headers)
                logs = [folder / f"worker-small-{mode}-{workers}-{n}.log" for n in range(workers)]
                running = [Worker(mode_env, log) for log in logs]
                try:
                    seconds = timed_delivery(data)
                finally:
                    for worker in running:
                        worker.stop()
                print(
                    f"100 small studies, {mode}, {workers} worker(s): {seconds:.2f}s -> "
                    f"{len(uids) / seconds:.1f} resources/s (includes worker start-up)"
                )
            # The server alone: the same first writes over one keep-alive connection.
            fhir.reset()
            bodies = [imaging_study(ctx.store.load(uid), "R4") for uid in uids]
            with httpx.Client(timeout=60) as client:
                began = time.monotonic()
                for uid, resource in zip(uids, bodies, strict=True):
                    if mode == "conditional":
                        url = f"{fhir.base_url}/ImagingStudy?identifier=urn:dicom:uid|urn:oid:{uid}"
                        resource = {k: v for k, v in resource.items() if k != "id"}
                    else:
                        url = f"{fhir.base_url}/ImagingStudy/{uid}"
                    client.put(
                        url,
                        content=json.dumps(resource).encode(),
                        headers={"Content-Type": "application/fhir+json"},
                    ).raise_for_status()
                raw_seconds = time.monotonic() - began
            print(
                f"  the same 100 writes from one client, no RQ (server alone): "
                f"{raw_seconds:.2f}s -> {100 / raw_seconds:.1f} resources/s"
            )
    finally:
        fhir.stop()
        redis_server.stop()
        print(f"worker logs: {folder}")


if __name__ == "__main__":
    main()
