#!/usr/bin/env bash
# The quickstart: builds and starts HAPI FHIR on 127.0.0.1:8080 (the sidecar's default
# upstream), builds fhirseal, and runs it in the foreground on its embedded default
# (127.0.0.1:8088). Ctrl-C stops both. Extra arguments go to `fhirseal run`. FHIRSEAL_BIN runs
# a binary already built instead (no cargo build). deploy/demo.sh shows what it does.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
hapi_port=${HAPI_PORT:-8080}
hapi="$root/deploy/hapi/hapi.sh"

cd "$root"
bin=${FHIRSEAL_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release --locked --bin fhirseal
  bin="$root/target/release/fhirseal"
fi

started=0
if "$hapi" status "$hapi_port" >/dev/null 2>&1; then
  echo "quickstart: HAPI FHIR already answers on 127.0.0.1:$hapi_port"
else
  "$hapi" start "$hapi_port"
  started=1
fi
cleanup() {
  if [ "$started" = 1 ]; then
    "$hapi" stop "$hapi_port" || true
  fi
}
trap cleanup EXIT

listen=${FHIRSEAL_LISTEN:-127.0.0.1:8088}
admin=${FHIRSEAL_ADMIN_LISTEN:-127.0.0.1:9464}
data_dir=${FHIRSEAL_DATA_DIR:-$root/fhirseal-data}
keys="$data_dir/keys/api-keys.toml"
cat <<MSG

  fhirseal is starting in front of HAPI FHIR.
  Send FHIR requests to:   http://$listen/fhir
  API keys:                $keys (made on first start: a clinician, who sees
                           identity, a researcher, who does not, and an auditor,
                           who reads the access trail at /ledger/blocks/N)
  Try:                     curl -H "X-Api-Key: \$(grep -m1 '^key' $keys | cut -d'"' -f2)" \\
                                http://$listen/fhir/metadata
  HAPI FHIR direct:        http://127.0.0.1:$hapi_port/fhir (holds no identity)
  Admin (no API key):      http://$admin/metrics (Prometheus)  http://$admin/healthz
                           http://$admin/readyz
  Ledger:                  http://$listen/ledger/status, and GET [type]/[id]/\$verify
  Consortium:              a consortium of one (this node is regulator and only member):
                           $bin consortium status --data-dir $data_dir
  Demo:                    deploy/demo.sh (writes a Synthea patient, shows who sees what)
  Stop with Ctrl-C.

MSG
FHIRSEAL_DATA_DIR=$data_dir FHIRSEAL_LISTEN=$listen FHIRSEAL_ADMIN_LISTEN=$admin FHIRSEAL_UPSTREAM=${FHIRSEAL_UPSTREAM:-http://127.0.0.1:$hapi_port/fhir} \
  "$bin" run "$@"
