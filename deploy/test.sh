#!/usr/bin/env bash
# The test command. Starts two real HAPI FHIR JPA servers on 127.0.0.1 (built once by
# deploy/hapi/hapi.sh): the one fhirseal stands in front of (FHIRSEAL_TEST_HAPI_PORT, default
# 18080) and a reference loaded directly with the original data, for comparisons
# (FHIRSEAL_TEST_HAPI_REFERENCE_PORT, default 18081). Runs the workspace's tests against them,
# then the conformance suite (deploy/conformance.sh), and stops the servers it started.
# Extra arguments go to `cargo test`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=${FHIRSEAL_TEST_HAPI_PORT:-18080}
reference_port=${FHIRSEAL_TEST_HAPI_REFERENCE_PORT:-18081}
hapi="$root/deploy/hapi/hapi.sh"

started=()
stop_hapi() {
  for p in "${started[@]}"; do
    "$hapi" stop "$p" || true
  done
}
trap stop_hapi EXIT

"$hapi" build
pids=()
for p in "$port" "$reference_port"; do
  if "$hapi" status "$p" >/dev/null 2>&1; then
    echo "test.sh: using the HAPI FHIR already answering on 127.0.0.1:$p"
  else
    started+=("$p")
    "$hapi" start "$p" &
    pids+=($!)
  fi
done
for pid in "${pids[@]}"; do
  wait "$pid"
done

export FHIRSEAL_TEST_HAPI="http://127.0.0.1:$port/fhir"
export FHIRSEAL_TEST_HAPI_REFERENCE="http://127.0.0.1:$reference_port/fhir"
cd "$root"
cargo test --workspace --locked "$@"
deploy/conformance.sh
