"""The ``scp2fhir`` command: one verb per process kind.

Configuration comes from a TOML file (``--config`` or ``SCP2FHIR_CONFIG``) and
``SCP2FHIR_*`` environment variables (:mod:`scp.config`): a flag wins over its variable,
a variable over the file. Invalid configuration stops the command with one line on
stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from scp import config as configuration
from scp.settings import ScpSettings
from scp.shared_settings import SharedSettings
from scp.typed_settings import ConfigError
from scp.up.settings import UpSettings
from scp.variables import VARIABLES
from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from scp.up.state import UpState
    from workers.delivery.settings import DeliverySettings

#: flag dest -> environment variable it overrides
_FLAG_VARIABLES = {
    "redis_url": "SCP2FHIR_REDIS_URL",
    "ae_title": "SCP2FHIR_AE_TITLE",
    "port": "SCP2FHIR_PORT",
    "bind": "SCP2FHIR_BIND",
    "quiet_seconds": "SCP2FHIR_QUIET_SECONDS",
    "output_dir": "SCP2FHIR_OUTPUT_DIR",
    "fhir_version": "SCP2FHIR_FHIR_VERSION",
    "profile": "SCP2FHIR_PROFILE",
    "workers": "SCP2FHIR_WORKERS",
    "config": configuration.CONFIG_VARIABLE,
}
#: variable -> the flag that sets it (where `config check` says a value came from)
_FLAG_NAMES = {
    variable: "--" + dest.replace("_", "-") for dest, variable in _FLAG_VARIABLES.items()
}

#: Verbs that, without SCP2FHIR_REDIS_URL, use the Redis of the ``up`` running on the data
#: folder (:mod:`scp.up.state`).
_UP_VERBS = ("status", "web", "retry-failed", "retract", "forget")
#: Verbs that deliver or report on deliveries: they parse the destinations.
_DELIVERY_VERBS = ("worker", "up", "status", "web", "retry-failed", "config", "retract", "forget")


def _parser() -> argparse.ArgumentParser:
    epilog = "environment:\n" + "\n".join(
        f"  {name:28} {default:>10}  {text}" for name, (default, text) in VARIABLES.items()
    )
    parser = argparse.ArgumentParser(
        prog="scp2fhir",
        description="DICOM storage SCP -> FHIR ImagingStudy bridge",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"scp2fhir {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    def common(p: argparse.ArgumentParser, *flags: str) -> None:
        p.add_argument(
            "--config", help="TOML configuration file (overrides SCP2FHIR_CONFIG)", type=str
        )
        if "redis" in flags:
            p.add_argument("--redis-url", help="overrides SCP2FHIR_REDIS_URL")
        if "scp" in flags:
            p.add_argument("--ae-title", help="overrides SCP2FHIR_AE_TITLE")
            p.add_argument("--port", help="overrides SCP2FHIR_PORT")
            p.add_argument("--bind", help="overrides SCP2FHIR_BIND (address the SCP listens on)")
        if "emit" in flags:
            p.add_argument("--quiet-seconds", help="overrides SCP2FHIR_QUIET_SECONDS")
            p.add_argument("--output-dir", help="overrides SCP2FHIR_OUTPUT_DIR")
        if "fhir" in flags:
            p.add_argument("--fhir-version", help="overrides SCP2FHIR_FHIR_VERSION (R4, R5)")
            p.add_argument(
                "--profile", help="overrides SCP2FHIR_PROFILE (base, mii, mii-2027, osiris, qicore)"
            )

    common(verbs.add_parser("scp", help="run the storage SCP"), "redis", "scp")
    worker = verbs.add_parser("worker", help="run an RQ worker (with RQ's scheduler)")
    common(worker, "redis", "emit", "fhir")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    up = verbs.add_parser("up", help="run everything on this machine (private Redis if none set)")
    common(up, "redis", "scp", "emit", "fhir")
    up.add_argument("--workers", help="overrides SCP2FHIR_WORKERS")
    status = verbs.add_parser("status", help="open studies, last emitted, queues and failures")
    common(status, "redis", "emit")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--last", type=int, default=10, help="how many emitted studies to list")
    web = verbs.add_parser("web", help="serve /metrics, /healthz, /readyz and a status page")
    common(web, "redis", "emit")
    web.add_argument("--port", type=int, help="overrides SCP2FHIR_WEB_PORT")
    convert = verbs.add_parser("convert", help="DICOM files/folders -> ImagingStudy NDJSON")
    common(convert, "fhir")
    convert.add_argument("paths", nargs="+", type=Path)
    convert.add_argument(
        "--explain",
        action="store_true",
        help="instead of the resources, list per study what the profile wanted and the "
        "DICOM headers could not give, and why",
    )
    retry = verbs.add_parser(
        "retry-failed", help="re-queue dead-lettered deliveries (after fixing the cause)"
    )
    common(retry, "redis")
    retry.add_argument(
        "--study", action="append", default=[], help="only this Study Instance UID (repeatable)"
    )
    retry.add_argument(
        "--destination",
        action="append",
        default=[],
        help="only this destination's dead letters (repeatable; default: every destination)",
    )
    config = verbs.add_parser("config", help="the effective configuration")
    config_verbs = config.add_subparsers(dest="config_verb", required=True)
    check = config_verbs.add_parser(
        "check",
        help="print the effective configuration (secrets masked, where each value came "
        "from) and check Redis and each destination; exit 0 if all is well, else 1",
    )
    common(check, "redis")
    check.add_argument(
        "--offline", action="store_true", help="check the configuration only, reach nothing"
    )
    retract = verbs.add_parser(
        "retract",
        help="mark a study entered-in-error in the output folder and on the FHIR server",
    )
    common(retract, "redis", "emit", "fhir")
    retract.add_argument("--study", required=True, help="Study Instance UID")
    retract.add_argument("--reason", help="why (kept and logged; no patient data, please)")
    forget = verbs.add_parser(
        "forget", help="remove everything held in Redis for a retracted study (erasure)"
    )
    common(forget, "redis", "emit")
    forget.add_argument("--study", required=True, help="Study Instance UID")
    # Reconcile and backfill against a PACS (workers/reconcile/command.py).
    from workers.reconcile.command import add_arguments as pacs_arguments

    reconcile = verbs.add_parser(
        "reconcile", help="compare with a PACS (C-FIND): missing, incomplete, complete studies"
    )
    common(reconcile, "redis")
    pacs_arguments(reconcile, "reconcile")
    backfill = verbs.add_parser(
        "backfill", help="fetch a period of a PACS's archive, day by day, resumable"
    )
    common(backfill, "redis")
    pacs_arguments(backfill, "backfill")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scp2fhir")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _flags(args: argparse.Namespace) -> dict[str, str]:
    """Variables the command line sets (the web port flag is the verb's own)."""
    flags = {}
    for dest, variable in _FLAG_VARIABLES.items():
        value = getattr(args, dest, None)
        if value is not None and not (args.verb == "web" and dest == "port"):
            flags[variable] = str(value)
    return flags


def _environment(args: argparse.Namespace) -> dict[str, str]:
    """What ``scp2fhir up`` hands its children: this environment with the flags set as
    their variables (the file is named by SCP2FHIR_CONFIG, so they read it too)."""
    return {**os.environ, **_flags(args)}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    delivery: DeliverySettings | None = None
    try:
        config = configuration.load(os.environ, _flags(args), _FLAG_NAMES)
        # Every part is parsed for every verb, as one flat settings object was: a bad
        # value is an error whichever verb reads it.
        shared = configuration.settings(config, SharedSettings)
        scp = configuration.settings(config, ScpSettings)
        worker = configuration.settings(config, WorkerSettings)
        up = configuration.settings(config, UpSettings)
        up_state = None
        if args.verb in _UP_VERBS and shared.redis_url is None:
            from scp.up import state

            try:
                up_state = state.read(up.data_dir)
            except state.UpNotRunning as exc:
                print(f"scp2fhir {args.verb}: {exc}", file=sys.stderr)
                return 1
            # What the running up uses, not what this shell's environment says.
            shared = dataclasses.replace(shared, redis_url=up_state.redis_url)
            worker = dataclasses.replace(worker, quiet_seconds=up_state.quiet_seconds)
        if args.verb in ("scp", "worker", *_UP_VERBS):
            shared.require_redis_url()
        if args.verb in ("worker", "up", "convert", "config", "retract"):
            from workers.context import mapping_options

            configuration.explained(config, mapping_options, worker)
        if args.verb in ("worker", "up", "config"):
            from scp.pacs.settings import PacsSettings

            # the scheduled reconcile's
            configuration.explained(config, PacsSettings.from_env, config.values, scp.ae_title)
        if args.verb in _DELIVERY_VERBS:
            from workers.delivery.settings import delivery_settings

            delivery = delivery_settings(config, worker)
    except ConfigError as exc:
        print(f"scp2fhir: configuration error: {exc}", file=sys.stderr)
        return 2

    if args.verb in ("scp", "worker"):
        from scp.up.preflight import PreflightError, check_redis

        try:
            check_redis(shared.require_redis_url())
        except PreflightError as exc:
            print(f"scp2fhir {args.verb}: {exc}", file=sys.stderr)
            return 1

    from scp import logs

    logs.configure(shared.log_level, args.verb, shared.log_format, shared.log_hash_uids)
    if args.verb == "scp":
        from scp import prefork
        from scp.server import serve

        return prefork.run(
            scp.bind,
            scp.port,
            scp.scp_processes,
            lambda listener: serve(scp, shared, listener=listener),
            scp.drain_seconds,
        )
    if args.verb == "worker":
        from scp.pacs.settings import PacsSettings
        from workers.runner import run

        pacs = configuration.explained(config, PacsSettings.from_env, config.values, scp.ae_title)
        run(worker, shared, delivery, burst=args.burst, pacs=pacs)
        return 0
    if args.verb == "up":
        from scp.up.supervisor import up as run_up

        return run_up(shared, scp, worker, up, _environment(args))
    if args.verb == "status":
        assert delivery is not None
        return _status(shared, worker, delivery, args.json, args.last, up_state)
    if args.verb == "web":
        assert delivery is not None
        return _web(shared, worker, up, delivery, args.port)
    if args.verb == "retry-failed":
        assert delivery is not None
        return _retry_failed(shared, delivery, args.study, args.destination)
    if args.verb == "config":
        from scp.config_check import check

        assert delivery is not None
        return check(config, shared, delivery, sys.stdout, offline=args.offline)
    if args.verb in ("retract", "forget"):
        assert delivery is not None
        reason = getattr(args, "reason", None)
        return _lifecycle(shared, worker, delivery, args.verb, args.study, reason)
    if args.verb in ("reconcile", "backfill"):
        from workers.reconcile import command

        return command.run(args.verb, scp, shared, dict(config.values), args)
    if args.verb == "convert":
        from workers.context import mapping_options
        from workers.convert import convert

        options = mapping_options(worker)
        studies, unreadable = convert(
            args.paths, worker.fhir_version, sys.stdout, options, explain=args.explain
        )
        logging.getLogger("scp2fhir.convert").info(
            "%d studies written, %d files unreadable", studies, unreadable
        )
        return 0 if studies or not unreadable else 1
    return 2


def _status(
    shared: SharedSettings,
    worker: WorkerSettings,
    delivery: DeliverySettings,
    as_json: bool,
    last: int,
    up_state: UpState | None,
) -> int:
    import json

    from scp.connections import connect
    from scp.status import render_text, snapshot

    clients = connect(shared.require_redis_url())
    snap = snapshot(
        clients.data, clients.rq, worker.quiet_seconds, last=last, destinations=delivery.names
    )
    source = f"scp2fhir up pid={up_state.pid}" if up_state else "SCP2FHIR_QUIET_SECONDS"
    if as_json:
        found = {**snap.as_json(), "quiet_seconds": worker.quiet_seconds}
        if up_state:
            found["up_pid"] = up_state.pid
        print(json.dumps(found, indent=2))
    else:
        print(f"quiet period: {worker.quiet_seconds:g} s ({source})")
        print(render_text(snap))
    return 0


def _web(
    shared: SharedSettings,
    worker: WorkerSettings,
    up: UpSettings,
    delivery: DeliverySettings,
    port: int | None,
) -> int:
    import signal
    import threading

    from scp.connections import connect
    from scp.web import serve

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    clients = connect(shared.require_redis_url())
    serve(up, worker.quiet_seconds, clients, port or up.web_port, stop, destinations=delivery.names)
    return 0


def _retry_failed(
    shared: SharedSettings, delivery: DeliverySettings, studies: list[str], names: list[str]
) -> int:
    """Queue a fresh delivery for each dead-lettered study (``scp2fhir retry-failed``)."""
    for name in names:
        if delivery.named(name) is None:
            known = ", ".join(delivery.names) or "none configured"
            print(
                f"scp2fhir: configuration error: --destination {name}: no such destination "
                f"({known})",
                file=sys.stderr,
            )
            return 2
    from scp.connections import connect
    from workers.delivery import retry_failed

    clients = connect(shared.require_redis_url())
    counts = []
    for destination in delivery.destinations:
        if names and destination.name not in names:
            continue
        queued = retry_failed(clients, destination, studies)
        for uid in queued:
            print(f"{destination.name} {uid}")
        counts.append(f"{destination.name}: {len(queued)}")
    total = sum(int(c.rsplit(" ", 1)[1]) for c in counts)
    print(
        f"re-queued {total} deliveries ({', '.join(counts) or 'no destination'})", file=sys.stderr
    )
    return 0


def _lifecycle(
    shared: SharedSettings,
    worker: WorkerSettings,
    delivery: DeliverySettings,
    verb: str,
    study_uid: str,
    reason: str | None,
) -> int:
    """``scp2fhir retract`` / ``scp2fhir forget``: what was done, one line each."""
    from scp.connections import connect
    from workers.context import WorkerContext
    from workers.lifecycle.retraction import LifecycleError, forget, retract

    clients = connect(shared.require_redis_url())
    try:
        if verb == "retract":
            context = WorkerContext.build(worker, shared, clients, delivery)
            outcome = retract(context, study_uid, reason)
        else:
            outcome = forget(clients, worker, study_uid, delivery.names)
    except LifecycleError as exc:
        print(f"scp2fhir {verb}: {exc}", file=sys.stderr)
        return 1
    for line in outcome.done:
        print(f"{study_uid}: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
