#!/usr/bin/env bash
# The project's test command (README "Quickstart"; .ci/run calls it).
# Installs what the tests need on a fresh Debian machine, then runs lint, types and tests.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k pipeline`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/bin/storescu ] || missing+=(dcmtk)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# docker-compose only parses and checks docker/compose.yaml (no engine runs here);
# chromium renders the RQ dashboard for the operations test; node runs the FHIR test server.
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
# libfuse 3 (and fusermount3) for tests/crashfs.py, the filesystem that crashes like an OS.
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
# promtool checks and unit-tests docker/prometheus/alerts.yml; installed without
# recommends (only the tools are needed: no exporter daemon comes along).
bare=()
# Java 17 and Maven build the HAPI FHIR test server and the HL7 validator (tests/hapi).
command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
# unshare mounts a small tmpfs as a full spool disk (tests/test_spool.py).
command -v unshare >/dev/null 2>&1 || missing+=(util-linux)
command -v promtool >/dev/null 2>&1 || bare+=(prometheus)
# Orthanc routes studies to scp2fhir as the README tells (tests/test_ops.py) and is the
# PACS of the reconcile/backfill tests (each starts its own on free ports).
[ -x /usr/sbin/Orthanc ] || bare+=(orthanc)
if [ ${#missing[@]} -gt 0 ] || [ ${#bare[@]} -gt 0 ]; then
  echo "installing ${missing[*]} ${bare[*]} from Debian's packages"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ${#bare[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "${bare[@]}" >/dev/null
  fi
fi

# The FHIR test server's packages (tests/fhirserver/package-lock.json); the tests never
# install anything themselves.
if [ ! -d tests/fhirserver/node_modules/@medplum/fhir-router ] \
   || [ tests/fhirserver/package-lock.json -nt tests/fhirserver/node_modules ]; then
  (cd tests/fhirserver && npm ci --no-audit --no-fund --silent)
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
  | grep -v -e "^WARNING: Location" -e "Running pip as the 'root' user" || true
# tests/hapi: Maven Central into ~/.m2 on the first run (README "Development": time, disk),
# offline from there on. Quiet and non-interactive in CI.
mvn_flags=(-B -ntp)
if [ "${CI:-}" = "true" ] || [ ! -t 0 ]; then mvn_flags=(-B -q); fi
mvn "${mvn_flags[@]}" -f tests/hapi/pom.xml package

python3 -m ruff check .
python3 -m ruff format --check .
python3 -m mypy
python3 -m pytest "$@"
