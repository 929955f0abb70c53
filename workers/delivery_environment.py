"""The environment's one delivery destination: which variable sets which destination key,
and each variable's default and meaning (collected into :data:`scp.variables.VARIABLES`).

Read by :mod:`workers.delivery.settings` through :class:`scp.config.EnvironmentReader`
like a ``[[destinations]]`` table (with such tables in the file these variables are
errors). Kept in a module of its own, outside :mod:`workers.delivery`, so the registry,
which every verb loads, does not import the delivery code (HTTP client, auth).
"""

from __future__ import annotations

#: Destination key path -> environment variable, for the environment's one destination.
ENVIRONMENT_NAMES: dict[str, str] = {
    "url": "SCP2FHIR_FHIR_BASE_URL",
    "write_mode": "SCP2FHIR_FHIR_WRITE_MODE",
    "timeout_seconds": "SCP2FHIR_FHIR_TIMEOUT_SECONDS",
    "gzip_min_bytes": "SCP2FHIR_FHIR_GZIP_MIN_BYTES",
    "validate": "SCP2FHIR_FHIR_VALIDATE",
    "auth.method": "SCP2FHIR_FHIR_AUTH",
    "auth.token": "SCP2FHIR_FHIR_TOKEN",
    "auth.token_file": "SCP2FHIR_FHIR_TOKEN_FILE",
    "auth.token_url": "SCP2FHIR_FHIR_TOKEN_URL",
    "auth.client_id": "SCP2FHIR_FHIR_CLIENT_ID",
    "auth.client_secret": "SCP2FHIR_FHIR_CLIENT_SECRET",
    "auth.client_secret_file": "SCP2FHIR_FHIR_CLIENT_SECRET_FILE",
    "auth.private_key_file": "SCP2FHIR_FHIR_PRIVATE_KEY_FILE",
    "auth.key_id": "SCP2FHIR_FHIR_KEY_ID",
    "auth.scope": "SCP2FHIR_FHIR_SCOPE",
    "tls.ca_bundle": "SCP2FHIR_FHIR_CA_BUNDLE",
    "tls.client_cert": "SCP2FHIR_FHIR_CLIENT_CERT",
    "tls.client_key": "SCP2FHIR_FHIR_CLIENT_KEY",
    "retry.max_attempts": "SCP2FHIR_FHIR_MAX_ATTEMPTS",
    "retry.base_seconds": "SCP2FHIR_FHIR_RETRY_BASE_SECONDS",
    "retry.max_seconds": "SCP2FHIR_FHIR_RETRY_MAX_SECONDS",
    "retry.conflict_retries": "SCP2FHIR_FHIR_CONFLICT_RETRIES",
}

#: The delivery variables of the environment's one destination (with [[destinations]] in
#: the file they are errors): variable -> (default shown to operators, description),
#: collected into :data:`scp.variables.VARIABLES`.
ENVIRONMENT_VARIABLES: dict[str, tuple[str, str]] = {
    "SCP2FHIR_FHIR_BASE_URL": (
        "(unset)",
        "FHIR server to PUT ImagingStudy resources to; unset: folder output only.",
    ),
    "SCP2FHIR_FHIR_WRITE_MODE": (
        "conditional",
        "How a study finds its resource: `conditional` (conditional update on the Study "
        "Instance UID identifier; the server assigns the id) or `client-id` (PUT to the "
        "study's stable id; the server must allow client ids).",
    ),
    "SCP2FHIR_FHIR_AUTH": (
        "none",
        "Authentication to the FHIR server: none, bearer, client-credentials (OAuth2) or "
        "smart-backend (SMART Backend Services, private_key_jwt).",
    ),
    "SCP2FHIR_FHIR_TOKEN": (
        "(unset)",
        "Static bearer token (SCP2FHIR_FHIR_AUTH=bearer).",
    ),
    "SCP2FHIR_FHIR_TOKEN_FILE": (
        "(unset)",
        "File holding the static bearer token instead; read again on each delivery (rotation).",
    ),
    "SCP2FHIR_FHIR_TOKEN_URL": (
        "(unset)",
        "OAuth2 token endpoint (client-credentials, smart-backend).",
    ),
    "SCP2FHIR_FHIR_CLIENT_ID": (
        "(unset)",
        "OAuth2 client id (client-credentials, smart-backend).",
    ),
    "SCP2FHIR_FHIR_CLIENT_SECRET": (
        "(unset)",
        "OAuth2 client secret (client-credentials; sent with HTTP Basic).",
    ),
    "SCP2FHIR_FHIR_CLIENT_SECRET_FILE": (
        "(unset)",
        "File holding the OAuth2 client secret instead; read again on each token request.",
    ),
    "SCP2FHIR_FHIR_PRIVATE_KEY_FILE": (
        "(unset)",
        "PEM private key signing the SMART client assertion: RSA (RS384) or EC P-384 "
        "(ES384), unencrypted (protect the file).",
    ),
    "SCP2FHIR_FHIR_KEY_ID": (
        "(unset)",
        "`kid` of that key in the JWK Set registered with the server (smart-backend).",
    ),
    "SCP2FHIR_FHIR_SCOPE": (
        "(unset)",
        "Scopes asked for with the token, e.g. `system/ImagingStudy.rs "
        "system/ImagingStudy.cu` (required for smart-backend).",
    ),
    "SCP2FHIR_FHIR_CA_BUNDLE": (
        "(system)",
        "PEM file (or OpenSSL hashed folder) of the CAs trusted for the FHIR and token "
        "servers; unset: the operating system's trust store.",
    ),
    "SCP2FHIR_FHIR_CLIENT_CERT": (
        "(unset)",
        "PEM client certificate for mutual TLS (may hold its key too).",
    ),
    "SCP2FHIR_FHIR_CLIENT_KEY": (
        "(unset)",
        "PEM private key of SCP2FHIR_FHIR_CLIENT_CERT, if not in that file.",
    ),
    "SCP2FHIR_FHIR_TIMEOUT_SECONDS": (
        "30",
        "Timeout of one HTTP exchange with the FHIR or token server (connect: at most 10).",
    ),
    "SCP2FHIR_FHIR_MAX_ATTEMPTS": (
        "20",
        "Delivery attempts (timeouts, connection errors, 408, 429, 5xx) before the study "
        "is dead-lettered.",
    ),
    "SCP2FHIR_FHIR_RETRY_BASE_SECONDS": (
        "2",
        "First retry delay; doubles per attempt, with jitter, and is never shorter than "
        "the server's Retry-After.",
    ),
    "SCP2FHIR_FHIR_RETRY_MAX_SECONDS": (
        "600",
        "Longest retry delay of the backoff.",
    ),
    "SCP2FHIR_FHIR_CONFLICT_RETRIES": (
        "3",
        "Re-reads and retries after a version conflict (If-Match answered 409/412) before"
        " the attempt counts as failed.",
    ),
    "SCP2FHIR_FHIR_GZIP_MIN_BYTES": (
        "65536",
        "Request bodies at least this large are sent gzip-compressed (0 = never); once "
        "the server refuses one, bodies go plain for an hour.",
    ),
    "SCP2FHIR_FHIR_VALIDATE": (
        "0",
        "1: before writing, ask the server's $validate (with the profile's URL); errors "
        "dead-letter the study, warnings are counted.",
    ),
}
