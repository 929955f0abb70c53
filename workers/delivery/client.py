"""The HTTP side: one ``httpx.Client`` per destination and process, built lazily.

* ``Content-Type: application/fhir+json; fhirVersion=4.0`` (or ``5.0``), as configured.
* TLS: the operating system's trust store, or the destination's ``tls.ca_bundle``; a
  client certificate for mutual TLS. The same context serves the token endpoint.
* Request bodies of ``gzip_min_bytes`` or more go gzip-compressed. No
  CapabilityStatement element says whether a server takes compressed bodies, so the
  answer decides: a 400, 415 or 5xx to a compressed body is repeated plain at once, and
  if that is answered differently the server is marked (in Redis, for an hour) as one
  that gets plain bodies.
* Timeouts and connection errors become :class:`~workers.delivery.errors.ServerUnavailable`;
  statuses are left to the caller.

Tests may swap the transport (:func:`set_transport_factory`), e.g. to wrap the real one.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from typing import Any

# httpx imports httpcore only when the first transport is built. The worker's parent
# process imports this module and RQ forks a process per job: imported here, every job
# process starts with it (~0.1 s each otherwise).
import httpcore  # noqa: F401
import httpx
import redis

from scp import keys
from workers.delivery.auth import MemoryTokenCache, RedisTokenCache, TokenCache, build_auth
from workers.delivery.errors import ServerUnavailable
from workers.delivery.settings import Destination

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
#: How long a server that refused a compressed body gets plain ones.
NO_GZIP_SECONDS = 3600
USER_AGENT = "scp2fhir"

TransportFactory = Callable[[ssl.SSLContext], httpx.BaseTransport]


def _default_transport(context: ssl.SSLContext) -> httpx.BaseTransport:
    return httpx.HTTPTransport(verify=context)


_transport_factory: TransportFactory = _default_transport


def set_transport_factory(factory: TransportFactory | None) -> None:
    """Build clients' transports with ``factory`` (tests); ``None`` restores the default."""
    _transport_factory = factory or _default_transport
    _clients.clear()


def content_type(fhir_version: str) -> str:
    return f"{FHIR_JSON}; fhirVersion={'5.0' if fhir_version == 'R5' else '4.0'}"


def ssl_context(destination: Destination) -> ssl.SSLContext:
    """System trust store (not certifi's: a hospital installs its CA in the system), or
    the configured CA bundle; plus the client certificate for mutual TLS."""
    tls = destination.tls
    urls = (destination.url or "", destination.auth.token_url or "")
    if not any(url.startswith("https:") for url in urls):
        # Plain HTTP only: no TLS will happen, so skip reading the trust store (~25 ms in
        # every job process).
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_bundle is None:
        context = ssl.create_default_context()
    elif tls.ca_bundle.is_dir():
        context = ssl.create_default_context(capath=str(tls.ca_bundle))
    else:
        context = ssl.create_default_context(cafile=str(tls.ca_bundle))
    if tls.client_cert is not None:
        context.load_cert_chain(tls.client_cert, tls.client_key)
    return context


def server_hash(base_url: str) -> str:
    return hashlib.sha256(base_url.encode()).hexdigest()[:16]


class FhirClient:
    """Requests to one FHIR server; URLs are relative to its base (``""`` is the base)."""

    def __init__(self, destination: Destination, connection: redis.Redis | None = None) -> None:
        if destination.url is None:
            raise ValueError(f"destination {destination.name} is a folder, not a FHIR server")
        self.destination = destination
        self.base_url = destination.url
        self.content_type = content_type(destination.fhir_version)
        self._redis = connection
        self._no_gzip_key = keys.fhir_no_gzip(server_hash(self.base_url))
        self._no_gzip_local = False
        context = ssl_context(destination)
        timeout = httpx.Timeout(
            destination.timeout_seconds, connect=min(10.0, destination.timeout_seconds)
        )
        common: dict[str, Any] = {
            "timeout": timeout,
            "follow_redirects": False,
            "headers": {"User-Agent": USER_AGENT},
        }
        # Token requests get a client of their own (same TLS and timeouts), so fetching
        # a token from inside an auth flow never competes with the request it is for.
        self._token_http = httpx.Client(transport=_transport_factory(context), **common)
        cache: TokenCache = RedisTokenCache(connection) if connection else MemoryTokenCache()
        self.http = httpx.Client(
            transport=_transport_factory(context),
            auth=build_auth(destination.auth, self._token_http, cache),
            **common,
        )

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}" if path else self.base_url

    def request(
        self,
        method: str,
        path: str,
        *,
        resource: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request (the body, if any, as FHIR JSON); raises
        :class:`ServerUnavailable` for timeouts and connection errors only."""
        sent = {"Accept": FHIR_JSON, **(headers or {})}
        if resource is None:
            return self._send(method, path, None, sent)
        body = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        sent["Content-Type"] = self.content_type
        minimum = self.destination.gzip_min_bytes
        if not minimum or len(body) < minimum or self._gzip_refused():
            return self._send(method, path, body, sent)
        packed = self._send(
            method, path, gzip.compress(body, compresslevel=5), {**sent, "Content-Encoding": "gzip"}
        )
        status = packed.status_code
        if status not in (400, 415) and status < 500:
            return packed
        plain = self._send(method, path, body, sent)
        if plain.status_code != status:
            self._refuse_gzip(status)
        return plain

    def _send(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str]
    ) -> httpx.Response:
        what = f"{method} {path or '/'}".split("?")[0]
        try:
            return self.http.request(method, self.url(path), content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise ServerUnavailable(
                f"{what}: no answer within {self.destination.timeout_seconds:g}s "
                f"({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc

    def _gzip_refused(self) -> bool:
        if self._no_gzip_local:
            return True
        return bool(self._redis is not None and self._redis.exists(self._no_gzip_key))

    def _refuse_gzip(self, status: int) -> None:
        logger.warning(
            "server=%s answered HTTP %d to a gzip-compressed body and accepted it plain: "
            "sending plain bodies for %ds",
            self.base_url,
            status,
            NO_GZIP_SECONDS,
        )
        self._no_gzip_local = True
        if self._redis is not None:
            self._redis.set(self._no_gzip_key, str(status), ex=NO_GZIP_SECONDS)

    def close(self) -> None:
        self.http.close()
        self._token_http.close()


#: (pid, destination name, id of its settings) -> client
_clients: dict[tuple[int, str, int], FhirClient] = {}


def get_client(destination: Destination, connection: redis.Redis | None) -> FhirClient:
    """This process's client for ``destination``, built on first use. RQ runs each job
    in a forked process; a client inherited from the parent is never reused (its
    sockets would be shared), so the owner check includes the pid."""
    owner = (os.getpid(), destination.name, id(destination))
    client = _clients.get(owner)
    if client is None:
        for stale in [k for k in _clients if k[0] != owner[0]]:
            del _clients[stale]  # the parent's: never closed here, its sockets are shared
        client = _clients[owner] = FhirClient(destination, connection)
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            # httpx logs every request at INFO; the delivery's own line says more.
            logging.getLogger("httpx").setLevel(logging.WARNING)
    return client
