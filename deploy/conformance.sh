#!/usr/bin/env bash
# The conformance suite in CI: against HAPI FHIR direct, then fhirseal in front of the same
# HAPI compared with HAPI direct (differential mode), then fhirseal in privacy mode (a
# researcher, who may not see identity, reads what a clinician wrote).
#
#   FHIRSEAL_TEST_HAPI=http://127.0.0.1:18080/fhir deploy/conformance.sh [extra suite flags]
#
# Needs a running HAPI (deploy/hapi/hapi.sh start PORT, or deploy/test.sh's). Builds the two
# binaries (debug), starts `fhirseal run` on a free loopback port, waits for /readyz, runs
#   fhirseal-conformance --endpoint $HAPI                        --junit target/conformance-hapi.xml
#   fhirseal-conformance --endpoint SIDECAR --reference $HAPI    --junit target/conformance-differential.xml
#   fhirseal-conformance --endpoint SIDECAR --privacy                --junit target/conformance-privacy.xml
# stops the sidecar, and exits non-zero if any run fails. Extra arguments go to every run
# (e.g. --only search). FHIRSEAL_CONFORMANCE_NO_BUILD=1 uses the binaries already built in
# the target directory instead of building them.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
hapi=${FHIRSEAL_TEST_HAPI:?"set FHIRSEAL_TEST_HAPI to a running HAPI FHIR base, e.g. http://127.0.0.1:18080/fhir"}
hapi=${hapi%/}
target=${CARGO_TARGET_DIR:-$root/target}
case "$target" in /*) ;; *) target="$root/$target" ;; esac
reports="$root/target"
mkdir -p "$reports"

cd "$root"
if [ "${FHIRSEAL_CONFORMANCE_NO_BUILD:-0}" != 1 ]; then
  # With the test targets selected, dependencies get the same features as under `cargo test`,
  # so after the test run this builds nothing again.
  cargo build --locked --workspace --bins --tests
fi
fhirseal="$target/debug/fhirseal"
suite="$target/debug/fhirseal-conformance"

if ! curl -s -o /dev/null -m 10 -f "$hapi/metadata"; then
  echo "conformance.sh: HAPI does not answer at $hapi/metadata" >&2
  exit 1
fi

# The sidecar binds port 0 and says where it listens (JSON log line "fhirseal is listening").
work=$(mktemp -d)
log="$work/fhirseal.log"
sidecar_pid=""
stop_sidecar() {
  if [ -n "$sidecar_pid" ] && kill -0 "$sidecar_pid" 2>/dev/null; then
    kill -TERM "$sidecar_pid" 2>/dev/null || true
    wait "$sidecar_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap stop_sidecar EXIT

# Two API keys: a clinician (sees identity) and a researcher (does not).
random_key() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
clinician=$(random_key)
researcher=$(random_key)
cat >"$work/fhirseal.toml" <<TOML
[seal]
rsa_bits = 2048

[[auth.api_keys]]
key = "$clinician"
institution = "local"
role = "clinician"

[[auth.api_keys]]
key = "$researcher"
institution = "local"
role = "researcher"
TOML

"$fhirseal" run --config "$work/fhirseal.toml" --listen 127.0.0.1:0 --upstream "$hapi" \
  --data-dir "$work/data" --log-format json >"$log" 2>&1 &
sidecar_pid=$!

sidecar=""
for _ in $(seq 1 100); do
  sidecar=$(grep -o '"base":"[^"]*"' "$log" 2>/dev/null | head -1 | sed 's/"base":"\(.*\)"/\1/' || true)
  if [ -n "$sidecar" ] && curl -s -o /dev/null -m 5 -f "${sidecar%/fhir}/readyz"; then
    break
  fi
  if ! kill -0 "$sidecar_pid" 2>/dev/null; then
    echo "conformance.sh: fhirseal exited; its log:" >&2
    cat "$log" >&2
    exit 1
  fi
  sidecar=""
  sleep 0.2
done
if [ -z "$sidecar" ]; then
  echo "conformance.sh: fhirseal is not ready after 20 s; its log:" >&2
  cat "$log" >&2
  exit 1
fi
echo "conformance.sh: fhirseal at $sidecar in front of $hapi"

status=0
echo
echo "== conformance: HAPI FHIR direct ($hapi)"
"$suite" --endpoint "$hapi" --junit "$reports/conformance-hapi.xml" "$@" || status=1
echo
echo "== differential: fhirseal ($sidecar) against HAPI FHIR direct ($hapi)"
# Where fhirseal answers differently from HAPI on purpose, each for a reason it owes the
# client (ARCHITECTURE.md, "Known differences from the upstream"):
known_differences=(
  # an identity string searched with :contains: HAPI no longer holds the names (400, named)
  search-string-contains
  # :missing on an identity element the upstream no longer holds (400, named)
  search-modifiers-not-missing
  # birth-date ranges finer than the year: the upstream keeps only the year (400, named)
  search-prefixes
  search-several-values
  # an identity search inside a batch, for a person written earlier in the same batch
  batch-per-entry-outcomes
  # FHIRPath Patch: only JSON Patch is applied, in the sidecar, where what it adds can be sealed
  patch-fhirpath-patch
  # a resource missing a required element: fhirseal parses writes strictly (400), HAPI stores it
  error-422-invalid-resource
)
skips=()
for name in "${known_differences[@]}"; do skips+=(--skip "$name"); done
"$suite" --endpoint "$sidecar" --reference "$hapi" --header "X-Api-Key: $clinician" \
  "${skips[@]}" --junit "$reports/conformance-differential.xml" "$@" || status=1
echo
echo "== privacy: fhirseal ($sidecar), written by a clinician, read by a researcher"
"$suite" --endpoint "$sidecar" --privacy --writer-header "X-Api-Key: $clinician" \
  --header "X-Api-Key: $researcher" --junit "$reports/conformance-privacy.xml" "$@" || status=1

if [ "$status" != 0 ]; then
  echo "conformance.sh: FAILED (JUnit in $reports/conformance-*.xml)" >&2
fi
exit "$status"
