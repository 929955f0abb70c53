"""What the server says it can do (its CapabilityStatement), and how delivery adapts.

The statement is read the first time a worker delivers, then taken from Redis for
:data:`CACHE_SECONDS` (all workers share it; a new read follows when it expires, so a
reconfigured server is noticed). Each read logs one line of what matters and a warning
for each thing missing, with what delivery does instead:

* no conditional update (``conditionalUpdate``) -> search ImagingStudy by identifier,
  then update the match or create (conditional create when offered, so two workers
  cannot both create);
* no client ids (``updateCreate: false``; a statement that does not say is taken at its
  word for ``update``) with ``write_mode = "client-id"`` -> conditional update, or search
  as above;
* no ImagingStudy ``update`` -> create only: a study already on the server cannot be
  updated, and such a delivery is dead-lettered with that reason;
* no ``transaction`` -> a study Bundle is delivered as the ImagingStudy alone;
* another ``fhirVersion`` than configured -> an error line, and deliveries are
  dead-lettered without sending anything: a lenient server (HAPI FHIR parses leniently)
  would store what it can read of another version's resource and drop the rest;
* no readable CapabilityStatement -> a warning; the configured mode is used as is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any, Literal

import redis

from scp import keys
from workers.delivery.client import FhirClient, server_hash
from workers.delivery.errors import DeliveryError
from workers.delivery.settings import Destination

logger = logging.getLogger(__name__)

#: How long a read CapabilityStatement is trusted.
CACHE_SECONDS = 600
#: How long "could not read it" is remembered before the next try.
UNKNOWN_CACHE_SECONDS = 60

FirstWrite = Literal["conditional", "client-id", "search"]


@dataclass(frozen=True)
class Capabilities:
    """The parts of a CapabilityStatement delivery depends on."""

    #: False when no CapabilityStatement could be read (everything is then assumed).
    known: bool = False
    fhir_version: str | None = None
    create: bool = True
    update: bool = True
    update_create: bool = True
    conditional_create: bool = True
    conditional_update: bool = True
    search_identifier: bool = True
    transaction: bool = True

    @classmethod
    def parse(cls, statement: Any) -> Capabilities:
        if (
            not isinstance(statement, dict)
            or statement.get("resourceType") != "CapabilityStatement"
        ):
            raise ValueError("not a CapabilityStatement")
        rests = [r for r in statement.get("rest") or [] if isinstance(r, dict)]
        server = next((r for r in rests if r.get("mode") == "server"), rests[0] if rests else {})
        resources = [r for r in server.get("resource") or [] if isinstance(r, dict)]
        study: dict[str, Any] = next((r for r in resources if r.get("type") == "ImagingStudy"), {})
        interactions = {
            i.get("code") for i in study.get("interaction") or [] if isinstance(i, dict)
        }
        system = {i.get("code") for i in server.get("interaction") or [] if isinstance(i, dict)}
        params = {p.get("name") for p in study.get("searchParam") or [] if isinstance(p, dict)}
        version = statement.get("fhirVersion")
        return cls(
            known=True,
            fhir_version=version if isinstance(version, str) else None,
            create="create" in interactions,
            update="update" in interactions,
            # Only an explicit "no" counts: HAPI FHIR accepts client ids (its
            # client_id_strategy) but never states updateCreate in its statement.
            update_create=study.get("updateCreate") is not False,
            conditional_create=study.get("conditionalCreate") is True,
            conditional_update=study.get("conditionalUpdate") is True,
            # A server listing no search parameters at all may still search; one that
            # lists some but not identifier may not.
            search_identifier="search-type" in interactions
            and (not params or "identifier" in params),
            transaction="transaction" in system,
        )

    def speaks(self, fhir_version: str) -> bool:
        """Whether the server's FHIR version is ``fhir_version`` (R4, R5); an unknown
        version counts as yes."""
        expected = "5.0" if fhir_version == "R5" else "4.0"
        return not self.fhir_version or self.fhir_version.startswith(expected)

    def first_write(self, mode: str, has_identifier: bool) -> FirstWrite:
        """How to write a study the bridge has no server id for yet."""
        if not has_identifier:
            return "client-id"  # nothing to search or condition on
        if mode == "client-id":
            order: tuple[FirstWrite, ...] = ("client-id", "conditional", "search")
        else:
            order = ("conditional", "search", "client-id")
        offered = {
            "conditional": self.conditional_update and self.update,
            "client-id": self.update_create and self.update,
            "search": self.search_identifier,
        }
        return next((way for way in order if offered[way]), order[0])


def load(
    client: FhirClient, destination: Destination, connection: redis.Redis | None
) -> Capabilities:
    """The server's capabilities, from the Redis cache or read (and logged) now."""
    key = keys.fhir_capabilities(server_hash(client.base_url))
    if connection is not None:
        cached: Any = connection.get(key)
        if cached:
            try:
                return Capabilities(**json.loads(cached))
            except (TypeError, ValueError):
                pass
    try:
        response = client.request("GET", "metadata")
        if response.status_code != 200:
            raise ValueError(f"HTTP {response.status_code}")
        capabilities = Capabilities.parse(response.json())
        ttl = CACHE_SECONDS
    except (DeliveryError, ValueError) as exc:
        logger.warning(
            "destination=%s server=%s CapabilityStatement not readable (%s): assuming it "
            "supports write_mode=%s",
            destination.name,
            client.base_url,
            exc,
            destination.write_mode,
        )
        capabilities = Capabilities()
        ttl = UNKNOWN_CACHE_SECONDS
    else:
        report(client.base_url, capabilities, destination)
    if connection is not None:
        connection.set(key, json.dumps(asdict(capabilities)), ex=ttl)
    return capabilities


def report(base_url: str, caps: Capabilities, destination: Destination) -> None:
    """Log what the server offers and, for each gap, what delivery does instead."""

    def yes(flag: bool) -> str:
        return "yes" if flag else "NO"

    mode = destination.write_mode
    name = destination.name
    way = caps.first_write(mode, has_identifier=True)
    logger.info(
        "destination=%s server=%s fhirVersion=%s ImagingStudy: create=%s update=%s "
        "conditional-update=%s client-ids=%s conditional-create=%s search-by-identifier=%s; "
        "transaction=%s; first write of a study: %s",
        name,
        base_url,
        caps.fhir_version,
        yes(caps.create),
        yes(caps.update),
        yes(caps.conditional_update),
        yes(caps.update_create),
        yes(caps.conditional_create),
        yes(caps.search_identifier),
        yes(caps.transaction),
        way,
    )
    if not caps.speaks(destination.fhir_version):
        logger.error(
            "destination=%s server=%s speaks FHIR %s but fhir_version=%s: nothing is sent "
            "(deliveries are dead-lettered until fixed, then `scp2fhir retry-failed`)",
            name,
            base_url,
            caps.fhir_version,
            destination.fhir_version,
        )
    if not caps.update:
        logger.warning(
            "destination=%s server=%s does not allow ImagingStudy update: new studies are "
            "created, but a study that changes after delivery cannot be updated "
            "(dead-lettered)",
            name,
            base_url,
        )
    if not caps.create and not caps.update_create:
        logger.warning(
            "destination=%s server=%s lists no way to create an ImagingStudy", name, base_url
        )
    if way != mode:
        gaps = []
        if mode == "conditional" and not caps.conditional_update:
            gaps.append("no conditional update")
        if mode == "client-id" and not caps.update_create:
            gaps.append("no client-assigned ids (updateCreate)")
        logger.warning(
            "destination=%s server=%s has %s: write_mode=%s falls back to %s",
            name,
            base_url,
            ", ".join(gaps) or "not what the mode needs",
            mode,
            "search by identifier, then update or create" if way == "search" else way,
        )
    if not caps.transaction:
        logger.warning(
            "destination=%s server=%s does not take transaction Bundles: a study Bundle is "
            "delivered as the ImagingStudy alone",
            name,
            base_url,
        )
