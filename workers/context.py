"""What an RQ job needs from its worker process: settings, destinations, Redis, queues.

``scp2fhir worker`` builds one :class:`WorkerContext` in ``main()`` and installs it
before RQ starts; the work horses RQ forks inherit it. Tests install their own.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from rq import Queue

from scp import keys
from scp.connections import RedisClients
from scp.shared_settings import SharedSettings
from scp.typed_settings import ConfigError
from workers.aggregates import AggregateStore
from workers.delivery.settings import DeliverySettings
from workers.mapping import MappingOptions
from workers.profiles import profile_named
from workers.settings import WorkerSettings


def mapping_options(settings: WorkerSettings) -> MappingOptions:
    """The mapping's options from settings; a bad value is a configuration error."""
    try:
        options = MappingOptions(
            accession_system=settings.accession_system,
            patient_id_system=settings.patient_id_system,
            wado_rs_base_url=settings.wado_rs_url,
            bundle=settings.fhir_bundle,
            profile=settings.profile,
            site_timezone=settings.site_timezone,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    profile = profile_named(options.profile)
    if settings.fhir_version not in profile.fhir_versions:
        raise ConfigError(
            f"SCP2FHIR_PROFILE={profile.name} is defined for FHIR "
            f"{', '.join(sorted(profile.fhir_versions))}, not "
            f"SCP2FHIR_FHIR_VERSION={settings.fhir_version}"
        )
    return options


@dataclass(frozen=True)
class WorkerContext:
    settings: WorkerSettings
    shared: SharedSettings
    clients: RedisClients
    store: AggregateStore
    fold_queue: Queue
    emit_queue: Queue
    #: The output folder's mapping options.
    options: MappingOptions
    delivery: DeliverySettings = field(default_factory=DeliverySettings)

    @classmethod
    def build(
        cls,
        settings: WorkerSettings,
        shared: SharedSettings,
        clients: RedisClients,
        delivery: DeliverySettings | None = None,
    ) -> WorkerContext:
        return cls(
            settings=settings,
            shared=shared,
            clients=clients,
            store=AggregateStore(clients.data),
            fold_queue=Queue(keys.FOLD_QUEUE, connection=clients.rq),
            emit_queue=Queue(keys.EMIT_QUEUE, connection=clients.rq),
            options=mapping_options(settings),
            delivery=delivery or DeliverySettings(),
        )

    @property
    def needs_technique(self) -> bool:
        """Whether the fold records acquisition technique (some output's profile wants it)."""
        return self.options.needs_technique or any(
            d.options.needs_technique for d in self.delivery.destinations
        )

    @property
    def consumer(self) -> str:
        """This process's consumer name in the inbox group (host and pid: unique, readable)."""
        return f"{socket.gethostname()}-{os.getpid()}"


_current: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    global _current
    _current = context


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("no WorkerContext installed: run jobs through `scp2fhir worker`")
    return _current
