"""The HTTP side: one ``httpx.Client`` per process, built lazily from the settings.

* ``Content-Type: application/fhir+json; fhirVersion=4.0`` (or ``5.0``), as configured.
* TLS: the operating system's trust store, or ``SCP2FHIR_FHIR_CA_BUNDLE``; a client
  certificate for mutual TLS. The same context serves the token endpoint.
* Request bodies of ``SCP2FHIR_FHIR_GZIP_MIN_BYTES`` or more go gzip-compressed. No
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
from scp.settings import Settings
from workers.delivery.auth import MemoryTokenCache, RedisTokenCache, TokenCache, build_auth
from workers.delivery.errors import ServerUnavailable

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
    global _transport_factory, _client
    _transport_factory = factory or _default_transport
    _client = None


def content_type(fhir_version: str) -> str:
    return f"{FHIR_JSON}; fhirVersion={'5.0' if fhir_version == 'R5' else '4.0'}"


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """System trust store (not certifi's: a hospital installs its CA in the system), or
    the configured CA bundle; plus the client certificate for mutual TLS."""
    urls = (settings.fhir_base_url or "", settings.fhir_token_url or "")
    if not any(url.startswith("https:") for url in urls):
        # Plain HTTP only: no TLS will happen, so skip reading the trust store (~25 ms in
        # every job process).
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if settings.fhir_ca_bundle is None:
        context = ssl.create_default_context()
    elif settings.fhir_ca_bundle.is_dir():
        context = ssl.create_default_context(capath=str(settings.fhir_ca_bundle))
    else:
        context = ssl.create_default_context(cafile=str(settings.fhir_ca_bundle))
    if settings.fhir_client_cert is not None:
        context.load_cert_chain(settings.fhir_client_cert, settings.fhir_client_key)
    return context


def server_hash(base_url: str) -> str:
    return hashlib.sha256(base_url.encode()).hexdigest()[:16]


class FhirClient:
    """Requests to one FHIR server; URLs are relative to its base (``""`` is the base)."""

    def __init__(self, settings: Settings, connection: redis.Redis | None = None) -> None:
        if settings.fhir_base_url is None:
            raise ValueError("no FHIR server configured (SCP2FHIR_FHIR_BASE_URL)")
        self.settings = settings
        self.base_url = settings.fhir_base_url
        self.content_type = content_type(settings.fhir_version)
        self._redis = connection
        self._no_gzip_key = keys.fhir_no_gzip(server_hash(self.base_url))
        self._no_gzip_local = False
        context = ssl_context(settings)
        timeout = httpx.Timeout(
            settings.fhir_timeout_seconds, connect=min(10.0, settings.fhir_timeout_seconds)
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
            auth=build_auth(settings, self._token_http, cache),
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
        minimum = self.settings.fhir_gzip_min_bytes
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
                f"{what}: no answer within {self.settings.fhir_timeout_seconds:g}s "
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


_client: FhirClient | None = None
_client_owner: tuple[int, int] | None = None


def get_client(settings: Settings, connection: redis.Redis | None) -> FhirClient:
    """This process's client for ``settings``, built on first use. RQ runs each job in a
    forked process; a client inherited from the parent is never reused (its sockets
    would be shared), so the owner check includes the pid."""
    global _client, _client_owner
    owner = (os.getpid(), id(settings))
    if _client is None or _client_owner != owner:
        _client = FhirClient(settings, connection)
        _client_owner = owner
        if not logging.getLogger().isEnabledFor(logging.DEBUG):
            # httpx logs every request at INFO; the delivery's own line says more.
            logging.getLogger("httpx").setLevel(logging.WARNING)
    return _client
