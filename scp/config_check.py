"""``scp2fhir config check``: the effective configuration, and whether its parts answer.

Prints every variable with its value and where it came from (flag, environment, file
key, default), every destination the same way, secrets masked; then checks what it can
reach: Redis (PING) and each destination (a FHIR server's ``GET /metadata`` through the
destination's own client, so TLS and authentication are exercised too; a folder's
write permission). Exit status 0 when every check passes, 1 otherwise (a configuration
that does not parse never gets here: exit 2, as for every verb).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from scp.config import CONFIG_VARIABLE, Configuration, Origin, is_secret, masked
from scp.secret import Secret
from scp.shared_settings import SharedSettings
from scp.variables import VARIABLES
from workers.delivery.settings import DeliverySettings, Destination


def check(
    config: Configuration,
    settings: SharedSettings,
    delivery: DeliverySettings,
    out: TextIO,
    offline: bool = False,
) -> int:
    def write(line: str = "") -> None:
        print(line, file=out)

    write(f"configuration file: {config.file or 'none (SCP2FHIR_CONFIG is not set)'}")
    write()
    write("settings (value, then where it came from):")
    for name, (default, _) in VARIABLES.items():
        origin = config.origin(name)
        value = config.values.get(name)
        if name == CONFIG_VARIABLE and config.file is not None:
            value = str(config.file)
        shown = default if value is None else ("***" if is_secret(name) else masked(value))
        write(f"  {name:34} {shown:32} {origin}")
    write()
    if not delivery:
        write("destinations: none (the output folder only)")
    for destination in delivery.destinations:
        write(f"destination {destination.name} ({destination.kind} {destination.where}):")
        for key, value in describe(destination):
            # A secret read from a file came from its ``_file`` key.
            found = destination.origins.get(key) or destination.origins.get(key + "_file")
            write(f"  {key:34} {value:32} {found or Origin('default')}")
    if offline:
        return 0
    write()
    write("checks:")
    failed = 0
    for ok, line in _checks(settings, delivery):
        failed += not ok
        write(f"  {'ok  ' if ok else 'FAIL'}  {line}")
    return 1 if failed else 0


def describe(destination: Destination) -> list[tuple[str, str]]:
    """The destination's effective settings as (key path, printable value), secrets
    masked."""
    lines: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
        for item in dataclasses.fields(value):
            if item.name in ("origins", "options", "name"):
                continue
            inner = getattr(value, item.name)
            key = f"{prefix}{item.name}"
            if dataclasses.is_dataclass(inner) and not isinstance(inner, type):
                yield from walk(key + ".", inner)
            else:
                yield key, inner

    for key, value in walk("", destination):
        lines.append((key, _printable(value)))
    lines.append(("wado_rs_url", _printable(destination.options.wado_rs_base_url)))
    return lines


def _printable(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, Secret):
        return f"*** (file {value.path})" if value.path is not None else "***"
    if isinstance(value, frozenset | set | tuple):
        return ", ".join(sorted(str(v) for v in value)) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}=***" for k in sorted(value)) or "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return masked(str(value))


def _checks(settings: SharedSettings, delivery: DeliverySettings) -> Iterator[tuple[bool, str]]:
    yield _redis(settings)
    for destination in delivery.destinations:
        if destination.folder is not None:
            yield _folder(destination, destination.folder)
        else:
            yield _server(destination)


def _redis(settings: SharedSettings) -> tuple[bool, str]:
    import redis

    from scp.connections import connect

    if settings.redis_url is None:
        return True, "redis: not set (only `scp2fhir up` runs without: it starts its own)"
    where = masked(settings.redis_url)
    try:
        clients = connect(settings.redis_url)
        began = time.monotonic()
        clients.data.ping()
        ms = (time.monotonic() - began) * 1000
        clients.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        return False, f"redis {where}: {type(exc).__name__}: {exc}"
    return True, f"redis {where}: PING answered in {ms:.0f} ms"


def _folder(destination: Destination, folder: Path) -> tuple[bool, str]:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir() and os.access(existing, os.W_OK | os.X_OK):
        note = "" if existing == folder else f" (created at the first delivery under {existing})"
        return True, f"destination {destination.name}: folder {folder} is writable{note}"
    return False, f"destination {destination.name}: folder {folder} is not writable"


def _server(destination: Destination) -> tuple[bool, str]:
    from workers.delivery.client import FhirClient
    from workers.delivery.conformance import Capabilities
    from workers.delivery.errors import DeliveryError

    where = f"destination {destination.name}: {destination.url}"
    try:
        client = FhirClient(destination)
        try:
            response = client.request("GET", "metadata")
        finally:
            client.close()
    except DeliveryError as exc:
        return False, f"{where}/metadata: {type(exc).__name__}: {exc}"
    if response.status_code != 200:
        return False, f"{where}/metadata: HTTP {response.status_code}"
    try:
        caps = Capabilities.parse(response.json())
    except ValueError as exc:
        return False, f"{where}/metadata: no CapabilityStatement ({exc})"
    expected = "5.0" if destination.fhir_version == "R5" else "4.0"
    version = caps.fhir_version or "?"
    if not version.startswith(expected):
        return False, (
            f"{where}: speaks FHIR {version}, but the destination's fhir_version is "
            f"{destination.fhir_version}"
        )
    way = caps.first_write(destination.write_mode, has_identifier=True)
    return True, (
        f"{where}: FHIR {version}; ImagingStudy update={'yes' if caps.update else 'NO'}, "
        f"first write by {way}, transactions={'yes' if caps.transaction else 'no'}"
    )
