#!/usr/bin/env bash
# The test command: starts a real HAPI FHIR JPA server on 127.0.0.1 (port FHIRSEAL_TEST_HAPI_PORT,
# default 18080; built once by deploy/hapi/hapi.sh), runs the workspace's tests against it, and
# stops it again if this script started it. Extra arguments go to `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=${FHIRSEAL_TEST_HAPI_PORT:-18080}
hapi="$root/deploy/hapi/hapi.sh"

started=0
stop_hapi() {
  if [ "$started" = 1 ]; then
    "$hapi" stop "$port" || true
  fi
}
trap stop_hapi EXIT

if "$hapi" status "$port" >/dev/null 2>&1; then
  echo "test.sh: using the HAPI FHIR already answering on 127.0.0.1:$port"
else
  "$hapi" start "$port"
  started=1
fi

export FHIRSEAL_TEST_HAPI="http://127.0.0.1:$port/fhir"
cd "$root"
cargo test --workspace --locked "$@"
