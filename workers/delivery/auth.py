"""Authentication to the FHIR server, as ``httpx.Auth`` flows.

* ``none``: nothing.
* ``bearer``: a static token (``Authorization: Bearer ...``) from the environment or a
  file; a file is read again for each request, so a rotated token is picked up.
* ``client-credentials``: OAuth2 client credentials grant (RFC 6749 4.4), the client
  authenticated with HTTP Basic (RFC 6749 2.3.1).
* ``smart-backend``: SMART Backend Services: the same grant, the client authenticated by
  a signed JWT assertion (``private_key_jwt``, RFC 7523) with RS384 or ES384.

OAuth2 tokens are cached until shortly before they expire. RQ runs every job in a
forked process, so an in-process cache would die with each job: the cache is in Redis
(:func:`scp.keys.fhir_token`), shared by all job processes. A 401 from the FHIR server
drops the cached token, fetches a new one and repeats the request once.

Secrets are never logged: log lines name the token endpoint and the client id only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote_plus

import httpx
import jwt
import redis
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from scp import keys
from scp.secret import Secret
from workers.delivery.errors import AuthenticationFailed, TokenUnavailable
from workers.delivery.retry import is_transient_status, parse_retry_after
from workers.delivery.settings import Auth

logger = logging.getLogger(__name__)

#: Lifetime of a SMART client assertion (the spec allows at most five minutes).
ASSERTION_SECONDS = 300
#: Assumed lifetime of a token whose response has no expires_in.
DEFAULT_EXPIRES_IN = 300.0
#: A cached token is dropped this long (at most) before it expires, so a request never
#: leaves with a token that expires on the way.
MAX_EXPIRY_MARGIN = 60.0
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class TokenCache(Protocol):
    def get(self, key: str) -> str | None: ...

    def put(self, key: str, token: str, ttl_seconds: float) -> None: ...

    def drop(self, key: str, token: str) -> None: ...


class RedisTokenCache:
    """Access tokens in Redis, expiring with the token."""

    _DROP = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"

    def __init__(self, connection: redis.Redis) -> None:
        self._redis = connection

    def get(self, key: str) -> str | None:
        value: Any = self._redis.get(keys.fhir_token(key))
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)

    def put(self, key: str, token: str, ttl_seconds: float) -> None:
        self._redis.set(keys.fhir_token(key), token, px=max(1, int(ttl_seconds * 1000)))

    def drop(self, key: str, token: str) -> None:
        # Only if it is still the token that failed: another process may have refreshed it.
        self._redis.eval(self._DROP, 1, keys.fhir_token(key), token)


class MemoryTokenCache:
    """In-process cache (tests, or no Redis)."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}

    def get(self, key: str) -> str | None:
        entry = self._tokens.get(key)
        if entry is None or entry[1] <= time.monotonic():
            return None
        return entry[0]

    def put(self, key: str, token: str, ttl_seconds: float) -> None:
        self._tokens[key] = (token, time.monotonic() + ttl_seconds)

    def drop(self, key: str, token: str) -> None:
        if self._tokens.get(key, ("",))[0] == token:
            del self._tokens[key]


class BearerAuth(httpx.Auth):
    """A static bearer token. After a 401 the request is repeated once, only if the
    token file meanwhile holds a different token."""

    def __init__(self, token: Secret) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._token.reveal()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            fresh = self._token.reveal()
            if fresh != token:
                request.headers["Authorization"] = f"Bearer {fresh}"
                yield request


class OAuthAuth(httpx.Auth):
    """Bearer tokens from an OAuth2 token endpoint (client credentials grant), cached;
    a 401 refreshes the token once. Subclasses say how the client authenticates."""

    kind = "oauth"

    def __init__(
        self,
        token_url: str,
        client_id: str,
        scope: str | None,
        http: httpx.Client,
        cache: TokenCache,
    ) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.scope = scope
        self._http = http
        self._cache = cache
        identity = "|".join((self.kind, token_url, client_id, scope or ""))
        self._cache_key = hashlib.sha256(identity.encode()).hexdigest()[:24]

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == 401:
            # An expired or revoked token: one fresh token, one more try. A second 401
            # is the answer (the caller dead-letters it).
            logger.info(
                "client_id=%s FHIR server answered 401: refreshing the access token once",
                self.client_id,
            )
            self._cache.drop(self._cache_key, token)
            request.headers["Authorization"] = f"Bearer {self.token()}"
            yield request

    def token(self) -> str:
        cached = self._cache.get(self._cache_key)
        if cached is not None:
            return cached
        token, expires_in = self._request_token()
        margin = min(MAX_EXPIRY_MARGIN, expires_in / 5)
        self._cache.put(self._cache_key, token, expires_in - margin)
        logger.info(
            "client_id=%s new access token from %s, expires in %.0fs",
            self.client_id,
            self.token_url,
            expires_in,
        )
        return token

    def _form(self) -> dict[str, str]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        return form

    def _headers(self) -> dict[str, str]:
        return {}

    def _request_token(self) -> tuple[str, float]:
        where = f"token endpoint {self.token_url}"
        try:
            response = self._http.post(
                self.token_url,
                data=self._form(),
                headers={"Accept": "application/json", **self._headers()},
            )
        except httpx.TimeoutException as exc:
            raise TokenUnavailable(f"{where}: timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise TokenUnavailable(f"{where}: {type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if is_transient_status(status):
            raise TokenUnavailable(
                f"{where}: HTTP {status}", parse_retry_after(response.headers.get("Retry-After"))
            )
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if status != 200:
            raise AuthenticationFailed(
                f"{where} refused client_id={self.client_id}: " + _oauth_error(status, body)
            )
        if not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            raise AuthenticationFailed(f"{where}: HTTP 200 without an access_token")
        token_type = str(body.get("token_type", "bearer"))
        if token_type.lower() != "bearer":
            raise AuthenticationFailed(f"{where}: token_type {token_type[:20]!r} is not bearer")
        try:
            expires_in = float(body.get("expires_in", DEFAULT_EXPIRES_IN))
        except (TypeError, ValueError):
            expires_in = DEFAULT_EXPIRES_IN
        return body["access_token"], max(1.0, expires_in)


def _oauth_error(status: int, body: Any) -> str:
    """RFC 6749 5.2 error code and description (they describe the client, not patients)."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        text = f"HTTP {status} {body['error'][:60]}"
        description = body.get("error_description")
        if isinstance(description, str) and description:
            text += f": {description[:200]}"
        return text
    return f"HTTP {status}"


class ClientCredentialsAuth(OAuthAuth):
    kind = "client-credentials"

    def __init__(
        self,
        token_url: str,
        client_id: str,
        secret: Secret,
        scope: str | None,
        http: httpx.Client,
        cache: TokenCache,
    ) -> None:
        super().__init__(token_url, client_id, scope, http, cache)
        self._secret = secret

    def _headers(self) -> dict[str, str]:
        # RFC 6749 2.3.1: id and secret are form-urlencoded before the Basic encoding.
        pair = f"{quote_plus(self.client_id)}:{quote_plus(self._secret.reveal())}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


class SmartBackendAuth(OAuthAuth):
    """SMART Backend Services: a JWT signed with the client's private key (RS384 for
    RSA, ES384 for EC P-384) stands in for a secret."""

    kind = "smart-backend"

    def __init__(
        self,
        token_url: str,
        client_id: str,
        private_key_file: Path,
        key_id: str,
        scope: str | None,
        http: httpx.Client,
        cache: TokenCache,
    ) -> None:
        super().__init__(token_url, client_id, scope, http, cache)
        key = load_pem_private_key(private_key_file.read_bytes(), password=None)
        if isinstance(key, rsa.RSAPrivateKey):
            self.algorithm = "RS384"
        elif isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
            self.algorithm = "ES384"
        else:  # Settings refuses such keys at start; this is for direct callers.
            raise AuthenticationFailed("private key is neither RSA nor EC P-384")
        self._key = key
        self.key_id = key_id

    def client_assertion(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "iat": now,
            "exp": now + ASSERTION_SECONDS,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self.key_id, "typ": "JWT"}
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers=headers)

    def _form(self) -> dict[str, str]:
        return {
            **super()._form(),
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }


def build_auth(auth: Auth, http: httpx.Client, cache: TokenCache) -> httpx.Auth | None:
    """The auth flow ``auth`` asks for (``None`` for ``none``); ``http`` is the client
    the token requests go through."""
    if auth.method == "bearer":
        assert auth.token is not None  # the settings checked the combination
        return BearerAuth(auth.token)
    if auth.method == "client-credentials":
        assert auth.token_url and auth.client_id and auth.client_secret
        return ClientCredentialsAuth(
            auth.token_url, auth.client_id, auth.client_secret, auth.scope, http, cache
        )
    if auth.method == "smart-backend":
        assert auth.token_url and auth.client_id and auth.private_key_file and auth.key_id
        return SmartBackendAuth(
            auth.token_url,
            auth.client_id,
            auth.private_key_file,
            auth.key_id,
            auth.scope,
            http,
            cache,
        )
    return None
