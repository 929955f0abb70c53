"""The delivery's pure parts: configuration checks, secrets, backoff, classification,
OperationOutcome summaries, and reading a real CapabilityStatement."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from scp.connections import connect
from scp.secret import Secret
from scp.typed_settings import ConfigError
from tests.conftest import ROOT
from tests.fhirserver.harness import FhirServer
from tests.support import parse_configuration
from workers.delivery.conformance import Capabilities
from workers.delivery.errors import (
    AuthenticationFailed,
    ConflictPersists,
    Rejected,
    ServerUnavailable,
    outcome_summary,
)
from workers.delivery.retry import backoff_seconds, error_for, parse_retry_after
from workers.delivery.settings import DeliverySettings, Destination
from workers.delivery.writer import study_identifier_token

BASE = {"SCP2FHIR_FHIR_BASE_URL": "https://fhir.example.org/fhir"}


def destinations(env: dict[str, str]) -> DeliverySettings:
    """The destinations ``env`` configures, as ``main()`` parses them."""
    return parse_configuration(env).delivery


def destination(env: dict[str, str]) -> Destination:
    (only,) = destinations(env).destinations
    return only


def key_file(tmp_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    path = tmp_path / "key.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def smart(tmp_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> dict[str, str]:
    return {
        **BASE,
        "SCP2FHIR_FHIR_AUTH": "smart-backend",
        "SCP2FHIR_FHIR_TOKEN_URL": "https://auth.example.org/token",
        "SCP2FHIR_FHIR_CLIENT_ID": "bridge",
        "SCP2FHIR_FHIR_PRIVATE_KEY_FILE": key_file(tmp_path, key),
        "SCP2FHIR_FHIR_KEY_ID": "k1",
        "SCP2FHIR_FHIR_SCOPE": "system/ImagingStudy.cu",
    }


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"SCP2FHIR_FHIR_AUTH": "bearer", "SCP2FHIR_FHIR_TOKEN": "t"},
            "SCP2FHIR_FHIR_AUTH is set but SCP2FHIR_FHIR_BASE_URL is not",
        ),
        (
            {**BASE, "SCP2FHIR_FHIR_AUTH": "kerberos"},
            "must be one of none, bearer, client-credentials",
        ),
        (
            {**BASE, "SCP2FHIR_FHIR_AUTH": "bearer"},
            "needs SCP2FHIR_FHIR_TOKEN or SCP2FHIR_FHIR_TOKEN_FILE",
        ),
        (
            {**BASE, "SCP2FHIR_FHIR_TOKEN": "t"},
            "SCP2FHIR_FHIR_TOKEN is set but SCP2FHIR_FHIR_AUTH=none does not use it",
        ),
        (
            {
                **BASE,
                "SCP2FHIR_FHIR_AUTH": "bearer",
                "SCP2FHIR_FHIR_TOKEN": "t",
                "SCP2FHIR_FHIR_TOKEN_FILE": "/etc/hostname",
            },
            "set SCP2FHIR_FHIR_TOKEN or SCP2FHIR_FHIR_TOKEN_FILE, not both",
        ),
        (
            {**BASE, "SCP2FHIR_FHIR_AUTH": "bearer", "SCP2FHIR_FHIR_TOKEN_FILE": "/nonexistent"},
            "SCP2FHIR_FHIR_TOKEN_FILE='/nonexistent' cannot be read",
        ),
        (
            {
                **BASE,
                "SCP2FHIR_FHIR_AUTH": "client-credentials",
                "SCP2FHIR_FHIR_TOKEN_URL": "https://a/token",
                "SCP2FHIR_FHIR_CLIENT_ID": "c",
            },
            "needs SCP2FHIR_FHIR_CLIENT_SECRET or SCP2FHIR_FHIR_CLIENT_SECRET_FILE",
        ),
        (
            {**BASE, "SCP2FHIR_FHIR_AUTH": "client-credentials", "SCP2FHIR_FHIR_CLIENT_ID": "c"},
            "SCP2FHIR_FHIR_AUTH=client-credentials needs SCP2FHIR_FHIR_TOKEN_URL",
        ),
        (
            {
                **BASE,
                "SCP2FHIR_FHIR_AUTH": "client-credentials",
                "SCP2FHIR_FHIR_TOKEN_URL": "ldap://a",
                "SCP2FHIR_FHIR_CLIENT_ID": "c",
                "SCP2FHIR_FHIR_CLIENT_SECRET": "s",
            },
            "SCP2FHIR_FHIR_TOKEN_URL='ldap://a' is not an http(s) URL",
        ),
        ({**BASE, "SCP2FHIR_FHIR_WRITE_MODE": "upsert"}, "must be one of conditional, client-id"),
        ({**BASE, "SCP2FHIR_FHIR_CLIENT_KEY": "/etc/hostname"}, "needs SCP2FHIR_FHIR_CLIENT_CERT"),
        ({**BASE, "SCP2FHIR_FHIR_CA_BUNDLE": "/nonexistent.pem"}, "does not exist"),
        ({**BASE, "SCP2FHIR_FHIR_CLIENT_CERT": "/etc/hostname"}, "cannot be loaded as a PEM"),
        (
            {
                **BASE,
                "SCP2FHIR_FHIR_RETRY_BASE_SECONDS": "10",
                "SCP2FHIR_FHIR_RETRY_MAX_SECONDS": "5",
            },
            "is below SCP2FHIR_FHIR_RETRY_BASE_SECONDS",
        ),
        ({**BASE, "SCP2FHIR_FHIR_MAX_ATTEMPTS": "0"}, "out of range 1..1000"),
        ({**BASE, "SCP2FHIR_FHIR_TIMEOUT_SECONDS": "601"}, "above 0 and at most 600"),
    ],
)
def test_invalid_delivery_configuration_is_one_clear_line(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        destinations(env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_smart_backend_keys_are_checked_at_start(tmp_path: Path) -> None:
    ok_rsa = destination(smart(tmp_path, rsa.generate_private_key(65537, 2048)))
    assert ok_rsa.auth.method == "smart-backend"
    destination(smart(tmp_path, ec.generate_private_key(ec.SECP384R1())))
    with pytest.raises(ConfigError, match="must be an RSA key \\(RS384\\) or an EC P-384"):
        destination(smart(tmp_path, ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ConfigError, match="SCP2FHIR_FHIR_PRIVATE_KEY_FILE is a 1024-bit RSA key"):
        destination(smart(tmp_path, rsa.generate_private_key(65537, 1024)))
    env = smart(tmp_path, rsa.generate_private_key(65537, 2048))
    del env["SCP2FHIR_FHIR_SCOPE"]
    with pytest.raises(ConfigError, match="needs SCP2FHIR_FHIR_SCOPE"):
        destination(env)


def test_the_worker_stops_at_start_with_one_line() -> None:
    env = {
        **os.environ,
        "SCP2FHIR_REDIS_URL": "redis://127.0.0.1:1/0",
        **BASE,
        "SCP2FHIR_FHIR_AUTH": "bearer",
    }
    result = subprocess.run(
        [sys.executable, "-m", "scp.cli", "worker"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs SCP2FHIR_FHIR_TOKEN or SCP2FHIR_FHIR_TOKEN_FILE" in lines[0]


def test_secrets_are_masked_and_files_reread(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("first-secret-value\n")
    settings = destination(
        {
            **BASE,
            "SCP2FHIR_FHIR_AUTH": "client-credentials",
            "SCP2FHIR_FHIR_TOKEN_URL": "https://auth.example.org/token",
            "SCP2FHIR_FHIR_CLIENT_ID": "bridge",
            "SCP2FHIR_FHIR_CLIENT_SECRET_FILE": str(secret_file),
        }
    )
    secret = settings.auth.client_secret
    assert secret is not None
    assert "first-secret-value" not in repr(settings)
    assert "first-secret-value" not in f"{settings}"
    assert secret.reveal() == "first-secret-value"
    secret_file.write_text("second-secret-value")
    assert secret.reveal() == "second-secret-value"
    secret_file.unlink()  # unreadable now: the value read at start
    assert secret.reveal() == "first-secret-value"
    plain = Secret("token-value")
    assert repr(plain) == "Secret(***)" and str(plain) == "Secret(***)"


def test_backoff_grows_with_jitter_caps_and_honours_retry_after() -> None:
    rng = random.Random(7)
    for attempt in range(1, 15):
        exponential = min(600.0, 2.0 * 2 ** (attempt - 1))
        delay = backoff_seconds(attempt, 2.0, 600.0, rng=rng)
        assert exponential / 2 <= delay <= exponential
    assert backoff_seconds(1, 2.0, 600.0, retry_after=30, rng=rng) >= 30
    assert backoff_seconds(1, 2.0, 600.0, retry_after=10**6, rng=rng) == 3600


def test_retry_after_in_seconds_or_as_a_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120") == 120
    assert parse_retry_after(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def answer(status: int, body: object = None, **headers: str) -> httpx.Response:
    content = json.dumps(body).encode() if body is not None else b""
    return httpx.Response(status, content=content, headers=headers)


def test_statuses_are_classified() -> None:
    for status in (408, 429, 500, 502, 503, 504):
        error = error_for(answer(status, **{"Retry-After": "7"}), "PUT x")
        assert isinstance(error, ServerUnavailable) and error.retry_after == 7
    assert isinstance(error_for(answer(401), "PUT x"), AuthenticationFailed)
    assert isinstance(error_for(answer(403), "PUT x"), AuthenticationFailed)
    assert isinstance(error_for(answer(409), "PUT x"), ConflictPersists)
    assert isinstance(error_for(answer(412), "PUT x"), ConflictPersists)
    for status in (400, 404, 405, 410, 415, 422):
        error = error_for(answer(status), "PUT x")
        assert isinstance(error, Rejected) and error.status == status


def test_outcome_summary_keeps_codes_and_paths_never_values() -> None:
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": "Value 'DOE^JOHN' is not allowed",
                "details": {"text": "DOE^JOHN", "coding": [{"code": "MSG_BAD_VALUE"}]},
                "expression": [
                    "ImagingStudy.series[0].modality",
                    "Patient.name.where(family='DOE')",
                ],
            },
            {"severity": "<script>", "code": "DOE JOHN", "location": ["Line[1] Col[2]"]},
        ],
    }
    summary = outcome_summary(json.dumps(outcome))
    assert summary == (
        "error invalid [MSG_BAD_VALUE] @ ImagingStudy.series[0].modality, "
        "Patient.name.where(family='...'); ? ? @ Line[1] Col[2]"
    )
    assert outcome_summary(b"<html>Bad Gateway</html>") == "no OperationOutcome"
    many = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}] * 20}
    assert outcome_summary(json.dumps(many)).endswith("... 12 more")


def test_identifier_token_escapes_search_characters() -> None:
    study = {"identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}]}
    assert study_identifier_token(study) == "urn:dicom:uid|urn:oid:1.2.3"
    odd = {"identifier": [{"system": "urn:dicom:uid", "value": "a|b,c$d\\e"}]}
    assert study_identifier_token(odd) == "urn:dicom:uid|a\\|b\\,c\\$d\\\\e"
    assert study_identifier_token({"identifier": []}) is None


@pytest.mark.parametrize("server", ["medplum", "hapi"])
def test_the_test_servers_capability_statement_and_the_fallbacks(
    server: str, request: pytest.FixtureRequest
) -> None:
    if server == "hapi":
        statement = httpx.get(f"{request.getfixturevalue('hapi_r4').base_url}/metadata").json()
        study = next(r for r in statement["rest"][0]["resource"] if r["type"] == "ImagingStudy")
        # HAPI takes client ids (client_id_strategy ANY) without saying so: not stated is
        # not "no", or client-id mode would fall back to conditional update there.
        assert "updateCreate" not in study
    else:
        with FhirServer() as fhir:
            statement = httpx.get(f"{fhir.base_url}/metadata", timeout=10).json()
    caps = Capabilities.parse(statement)
    assert caps.known and caps.fhir_version == "4.0.1"
    assert caps.update and caps.create and caps.conditional_update and caps.update_create
    assert caps.conditional_create and caps.search_identifier and caps.transaction
    assert caps.first_write("conditional", True) == "conditional"
    assert caps.first_write("client-id", True) == "client-id"
    assert caps.first_write("conditional", False) == "client-id"
    no_conditional = Capabilities(known=True, conditional_update=False)
    assert no_conditional.first_write("conditional", True) == "search"
    assert no_conditional.first_write("client-id", True) == "client-id"
    no_client_ids = Capabilities(known=True, update_create=False)
    assert no_client_ids.first_write("client-id", True) == "conditional"
    said_no = {
        **statement,
        "rest": [
            {
                **statement["rest"][0],
                "resource": [
                    {**r, "updateCreate": False} for r in statement["rest"][0]["resource"]
                ],
            }
        ],
    }
    assert not Capabilities.parse(said_no).update_create
    with pytest.raises(ValueError):
        Capabilities.parse({"resourceType": "Patient"})


def test_retry_failed_requeues_only_the_studies_asked_for(redis_url: str) -> None:
    from rq import Queue

    from scp import keys
    from workers.delivery import retry_failed

    clients = connect(redis_url)
    clients.data.hset(keys.DELIVER_FAILED, mapping={"1.2.3": "job-a", "1.2.4": "job-b"})
    default = destination({"SCP2FHIR_REDIS_URL": redis_url, **BASE})
    assert retry_failed(clients, default, ["1.2.4"]) == ["1.2.4"]
    assert clients.data.hgetall(keys.DELIVER_FAILED) == {"1.2.3": "job-a"}
    (job,) = Queue(keys.DELIVER_QUEUE, connection=clients.rq).jobs
    assert job.args == ("1.2.4", 1, "default") and job.func_name == "workers.jobs.deliver_study"
    assert retry_failed(clients, default) == ["1.2.3"]
    assert clients.data.hgetall(keys.DELIVER_FAILED) == {}
