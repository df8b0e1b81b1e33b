#!/usr/bin/env bash
# The crash campaign: TRIALS (default 1000) trials in each of which the real `fhirseal` binary
# dies at a seeded point of one of four phases (before forwarding; after the upstream's commit,
# before the vault's; after the vault's commit, before the acknowledgement; anchoring and block
# production) while writers send Synthea bundles and Patients through it, is restarted on the
# same data directory and checked (sidecar/tests/proxy/t95_crash_campaign.rs says what). Not
# part of CI: CI runs the same test with a few trials.
#
#   deploy/crash-campaign.sh [TRIALS] [SEED]
#
# Starts HAPI FHIR on 127.0.0.1:${FHIRSEAL_TEST_HAPI_PORT:-18080} with deploy/hapi/hapi.sh
# unless one answers there (and stops it at the end if it started it), with a 6 GiB heap
# unless HAPI_JAVA_OPTS says otherwise (the heap holds HAPI's in-memory database, and a
# thousand trials write some 150,000 resources: in hapi.sh's default 1 GiB HAPI slows to a
# crawl in garbage collection after some 200 trials and then runs out of memory, and the
# trials measure that instead of the node), builds in release mode,
# and prints trials, kills per phase, violations and the median time to ready after a kill;
# the figures also go to target/bench/crash-campaign.json. SEED defaults to a random one
# (printed: pass it again to replay the campaign). FHIRSEAL_CRASH_SERIES sets how many trials
# share a data directory (default 4), FHIRSEAL_CRASH_PARALLEL how many such series run at once,
# each with its own node (default 2: a trial spends much of its time waiting), and
# FHIRSEAL_CRASH_FROM the trial to replay the campaign from. Exits with 1 when
# any trial found a violation.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
trials=${1:-1000}
seed=${2:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
port=${FHIRSEAL_TEST_HAPI_PORT:-18080}
hapi="$root/deploy/hapi/hapi.sh"

started=""
stop_hapi() {
  if [ -n "$started" ]; then
    "$hapi" stop "$port" || true
  fi
}
trap stop_hapi EXIT

if "$hapi" status "$port" >/dev/null 2>&1; then
  echo "crash-campaign.sh: using the HAPI FHIR already answering on 127.0.0.1:$port"
else
  export HAPI_JAVA_OPTS="${HAPI_JAVA_OPTS:--Xms512m -Xmx6g -XX:+UseSerialGC}"
  "$hapi" start "$port"
  started=1
fi

export FHIRSEAL_TEST_HAPI="http://127.0.0.1:$port/fhir"
export FHIRSEAL_CRASH_TRIALS="$trials"
export FHIRSEAL_CRASH_SEED="$seed"
export FHIRSEAL_CRASH_PARALLEL="${FHIRSEAL_CRASH_PARALLEL:-2}"
echo "crash-campaign.sh: $trials trials, seed $seed"
cd "$root"
cargo test --release --locked -p fhirseal-sidecar --test proxy \
  t95_crash_campaign -- --nocapture --test-threads=1
