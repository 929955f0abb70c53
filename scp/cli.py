"""The ``scp2fhir`` command: one verb per process kind.

Configuration comes from ``SCP2FHIR_*`` environment variables; a flag overrides
its variable. Invalid configuration stops the command with one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from scp.settings import VARIABLES, ConfigError, Settings

#: flag dest -> environment variable it overrides
_FLAG_VARIABLES = {
    "redis_url": "SCP2FHIR_REDIS_URL",
    "ae_title": "SCP2FHIR_AE_TITLE",
    "port": "SCP2FHIR_PORT",
    "quiet_seconds": "SCP2FHIR_QUIET_SECONDS",
    "output_dir": "SCP2FHIR_OUTPUT_DIR",
    "fhir_version": "SCP2FHIR_FHIR_VERSION",
    "profile": "SCP2FHIR_PROFILE",
    "workers": "SCP2FHIR_WORKERS",
}


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
    verbs = parser.add_subparsers(dest="verb", required=True)

    def common(p: argparse.ArgumentParser, *flags: str) -> None:
        if "redis" in flags:
            p.add_argument("--redis-url", help="overrides SCP2FHIR_REDIS_URL")
        if "scp" in flags:
            p.add_argument("--ae-title", help="overrides SCP2FHIR_AE_TITLE")
            p.add_argument("--port", help="overrides SCP2FHIR_PORT")
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
        "retry-failed", help="re-queue dead-lettered FHIR deliveries (after fixing the cause)"
    )
    common(retry, "redis")
    retry.add_argument(
        "--study", action="append", default=[], help="only this Study Instance UID (repeatable)"
    )
    return parser


def _environment(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    for dest, variable in _FLAG_VARIABLES.items():
        value = getattr(args, dest, None)
        if value is not None:
            env[variable] = str(value)
    return env


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = _environment(args)
    try:
        settings = Settings.from_env(env)
        if args.verb in ("scp", "worker", "status", "web"):
            settings.require_redis_url()
        if args.verb in ("worker", "up", "convert"):
            from workers.context import mapping_options

            mapping_options(settings)  # the mapping's own checks, reported the same way
    except ConfigError as exc:
        print(f"scp2fhir: configuration error: {exc}", file=sys.stderr)
        return 2

    from scp import logs

    logs.configure(settings.log_level, args.verb, settings.log_format, settings.log_hash_uids)
    if args.verb == "scp":
        from scp.server import serve

        serve(settings)
        return 0
    if args.verb == "worker":
        from workers.runner import run

        run(settings, burst=args.burst)
        return 0
    if args.verb == "up":
        from scp.supervisor import up as run_up

        return run_up(settings, env)
    if args.verb == "status":
        return _status(settings, args.json, args.last)
    if args.verb == "web":
        return _web(settings, args.port)
    if args.verb == "retry-failed":
        return _retry_failed(settings, args.study)
    if args.verb == "convert":
        from workers.context import mapping_options
        from workers.convert import convert

        try:
            options = mapping_options(settings)
        except ConfigError as exc:
            print(f"scp2fhir: configuration error: {exc}", file=sys.stderr)
            return 2
        studies, unreadable = convert(
            args.paths, settings.fhir_version, sys.stdout, options, explain=args.explain
        )
        logging.getLogger("scp2fhir.convert").info(
            "%d studies written, %d files unreadable", studies, unreadable
        )
        return 0 if studies or not unreadable else 1
    return 2


def _status(settings: Settings, as_json: bool, last: int) -> int:
    import json

    from scp.connections import connect
    from scp.status import render_text, snapshot

    clients = connect(settings.require_redis_url())
    snap = snapshot(clients.data, clients.rq, settings.quiet_seconds, last=last)
    print(json.dumps(snap.as_json(), indent=2) if as_json else render_text(snap))
    return 0


def _web(settings: Settings, port: int | None) -> int:
    import signal
    import threading

    from scp.connections import connect
    from scp.web import serve

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    serve(settings, connect(settings.require_redis_url()), port or settings.web_port, stop)
    return 0


def _retry_failed(settings: Settings, studies: list[str]) -> int:
    """Queue a fresh delivery for each dead-lettered study (``scp2fhir retry-failed``)."""
    try:
        url = settings.require_redis_url()
    except ConfigError as exc:
        print(f"scp2fhir: configuration error: {exc}", file=sys.stderr)
        return 2
    from scp.connections import connect
    from workers.delivery import retry_failed

    queued = retry_failed(connect(url), settings, studies)
    for uid in queued:
        print(uid)
    print(f"re-queued {len(queued)} deliveries", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
