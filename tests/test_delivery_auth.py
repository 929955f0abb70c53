"""Authentication and TLS towards the FHIR server, against real local servers: a token
endpoint that verifies what the bridge sends, and a proxy that checks the tokens (or
requires a client certificate) in front of each real FHIR test server (medplum's router,
HAPI FHIR JPA)."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from rq.registry import FailedJobRegistry

from scp import keys
from tests import conftest_delivery
from tests.certs import make_pki
from tests.conftest_delivery import (
    FaultProxy,
    RealServer,
    TokenServer,
    Worker,
    delivery_env,
    push,
    study_headers,
    wait_delivered,
)
from tests.support import wait_for

fhir_server = conftest_delivery.fhir_server
fhir = conftest_delivery.fhir
proxy = conftest_delivery.proxy

CLIENT_ID = "scp2fhir-bridge"
SCOPE = "system/ImagingStudy.rs system/ImagingStudy.cu"


def deliver_one(redis_url: str, fhir: RealServer, folder: Path, count: int = 2) -> str:
    """Push a study; wait until the FHIR server (asked directly, not through the
    token-checking proxy) has it."""
    study, headers = study_headers(folder, [("CT", count)])
    push(redis_url, headers)
    wait_delivered(fhir.base_url, study.study_uid, count, timeout=20)
    return study.study_uid


def test_static_bearer_token_from_a_rotated_file(
    fhir: RealServer, proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("static-token-ONE\n")
    proxy.require_bearer = lambda token: token == token_file.read_text().strip()
    env = delivery_env(
        redis_url,
        tmp_path / "out",
        proxy.base_url,
        SCP2FHIR_FHIR_AUTH="bearer",
        SCP2FHIR_FHIR_TOKEN_FILE=str(token_file),
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        deliver_one(redis_url, fhir, tmp_path / "a")
        token_file.write_text("static-token-TWO\n")  # rotated, no restart
        deliver_one(redis_url, fhir, tmp_path / "b")
        assert not [s for s in proxy.seen if s.status == 401]
        log = worker.text()
        assert "static-token" not in log
    finally:
        worker.stop()


def test_client_credentials_token_is_cached_and_refreshed_once_after_401(
    fhir: RealServer, proxy: FaultProxy, redis_url: str, tmp_path: Path
) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("s3cret:with&odd=chars\n")
    tokens = TokenServer(CLIENT_ID, secret="s3cret:with&odd=chars", expires_in=600).start()
    proxy.require_bearer = tokens.valid
    env = delivery_env(
        redis_url,
        tmp_path / "out",
        proxy.base_url,
        SCP2FHIR_FHIR_AUTH="client-credentials",
        SCP2FHIR_FHIR_TOKEN_URL=tokens.url,
        SCP2FHIR_FHIR_CLIENT_ID=CLIENT_ID,
        SCP2FHIR_FHIR_CLIENT_SECRET_FILE=str(secret_file),
        SCP2FHIR_FHIR_SCOPE=SCOPE,
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        deliver_one(redis_url, fhir, tmp_path / "a")
        deliver_one(redis_url, fhir, tmp_path / "b")
        # Every job runs in its own forked process: one token served them all (Redis).
        assert tokens.requests == 1
        issued = list(tokens.issued)

        tokens.expire_all()  # the FHIR server no longer takes the cached token
        deliver_one(redis_url, fhir, tmp_path / "c")
        assert tokens.requests == 2
        assert [s.status for s in proxy.seen if s.status == 401] == [401]
        log = worker.text()
        assert "answered 401: refreshing the access token once" in log
        for secret in ["s3cret", *issued, *tokens.issued]:
            assert secret not in log
    finally:
        worker.stop()
        tokens.stop()


def test_a_refused_client_is_dead_lettered(
    proxy: FaultProxy, redis_url: str, data: redis.Redis, tmp_path: Path
) -> None:
    tokens = TokenServer(CLIENT_ID, secret="the-right-one").start()
    env = delivery_env(
        redis_url,
        tmp_path / "out",
        proxy.base_url,
        SCP2FHIR_FHIR_AUTH="client-credentials",
        SCP2FHIR_FHIR_TOKEN_URL=tokens.url,
        SCP2FHIR_FHIR_CLIENT_ID=CLIENT_ID,
        SCP2FHIR_FHIR_CLIENT_SECRET="a-wrong-one",
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        study, headers = study_headers(tmp_path / "a", [("MR", 1)])
        push(redis_url, headers)
        failed = FailedJobRegistry(keys.DELIVER_QUEUE, connection=redis.Redis.from_url(redis_url))
        wait_for(lambda: failed.count == 1, 20, "the dead letter")
        log = worker.text()
        assert f"refused client_id={CLIENT_ID}: HTTP 401 invalid_client" in log
        assert "AuthenticationFailed" in log
        assert "a-wrong-one" not in log and "the-right-one" not in log
        assert data.hget(keys.DELIVER_FAILED, study.study_uid)
    finally:
        worker.stop()
        tokens.stop()


def private_key(kind: str, path: Path) -> bytes:
    """Write a private key of ``kind`` to ``path``; return its public key (PEM)."""
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if kind == "RSA":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(("kind", "algorithm"), [("RSA", "RS384"), ("EC", "ES384")])
def test_smart_backend_services_signed_assertion(
    fhir: RealServer, proxy: FaultProxy, redis_url: str, tmp_path: Path, kind: str, algorithm: str
) -> None:
    key_file = tmp_path / "bridge-key.pem"
    tokens = TokenServer(CLIENT_ID, public_key=private_key(kind, key_file)).start()
    proxy.require_bearer = tokens.valid
    env = delivery_env(
        redis_url,
        tmp_path / "out",
        proxy.base_url,
        SCP2FHIR_FHIR_AUTH="smart-backend",
        SCP2FHIR_FHIR_TOKEN_URL=tokens.url,
        SCP2FHIR_FHIR_CLIENT_ID=CLIENT_ID,
        SCP2FHIR_FHIR_PRIVATE_KEY_FILE=str(key_file),
        SCP2FHIR_FHIR_KEY_ID="bridge-key-1",
        SCP2FHIR_FHIR_SCOPE=SCOPE,
    )
    worker = Worker(env, tmp_path / "w.log")
    try:
        deliver_one(redis_url, fhir, tmp_path / "a")
        assert tokens.refusals == []
        assert tokens.assertion_headers == [{"alg": algorithm, "kid": "bridge-key-1", "typ": "JWT"}]
    finally:
        worker.stop()
        tokens.stop()


def test_mutual_tls_with_a_private_ca(fhir: RealServer, redis_url: str, tmp_path: Path) -> None:
    ca, server, client = make_pki(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server.cert, server.key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    tls_proxy = FaultProxy(fhir.root_url, tls=context).start()
    try:
        # The proxy really demands a client certificate.
        with pytest.raises(httpx.TransportError):
            trusting = ssl.create_default_context(cafile=str(ca))
            httpx.get(f"{tls_proxy.base_url}/metadata", verify=trusting, timeout=5)
        env = delivery_env(
            redis_url,
            tmp_path / "out",
            tls_proxy.base_url,
            SCP2FHIR_FHIR_CA_BUNDLE=str(ca),
            SCP2FHIR_FHIR_CLIENT_CERT=str(client.cert),
            SCP2FHIR_FHIR_CLIENT_KEY=str(client.key),
        )
        worker = Worker(env, tmp_path / "w.log")
        try:
            deliver_one(redis_url, fhir, tmp_path / "a")
            assert tls_proxy.writes("PUT")
        finally:
            worker.stop()
    finally:
        tls_proxy.stop()
