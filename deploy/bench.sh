#!/usr/bin/env bash
# The sidecar's benchmarks in one bounded run (about 15 minutes after the release build): a HAPI
# FHIR of their own (FHIRSEAL_BENCH_HAPI_PORT, default 18095; part A writes identity into it
# directly, so it is never the one the tests use), then
#   seal     — sealing steps per Synthea Patient against the AES-256-GCM + SHA-256 floor;
#   load     — creates into HAPI direct and through the sidecar (4 in flight), and the sidecar
#              alone in front of a fast in-process upstream (sealed Patients, Observations);
#   latency  — one request at a time, HAPI direct and through the sidecar;
#   search   — an identity search matching 10,000 people, through the sidecar and (another
#              name, written unsealed) on HAPI directly;
# each printing its baseline and ratios and writing target/bench/<name>.json. Ends with a table
# of every figure with a baseline. Extra arguments: the benches to run (default: all three).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
port=${FHIRSEAL_BENCH_HAPI_PORT:-18095}
hapi="$root/deploy/hapi/hapi.sh"
benches=("$@")
[[ ${#benches[@]} -gt 0 ]] || benches=(seal load latency search)
cd "$root"
start=$(date +%s)

started=""
stop_hapi() {
  if [[ -n "$started" ]]; then
    "$hapi" stop "$port" || true
  fi
}
trap stop_hapi EXIT

cargo build --release -p fhirseal-sidecar --benches --locked
"$hapi" build
if "$hapi" status "$port" >/dev/null 2>&1; then
  echo "bench.sh: using the HAPI FHIR already answering on 127.0.0.1:$port"
else
  started=yes
  "$hapi" start "$port"
fi
export FHIRSEAL_TEST_HAPI="http://127.0.0.1:$port/fhir"

for bench in "${benches[@]}"; do
  echo
  echo "== $bench ($(( $(date +%s) - start )) s)"
  case "$bench" in
    # Criterion's own estimates are short here; the ratio table after them is what counts.
    seal) timeout 600 cargo bench --locked -p fhirseal-sidecar --bench seal -- \
            --warm-up-time 1 --measurement-time 2 ;;
    load) FHIRSEAL_BENCH_B_N=${FHIRSEAL_BENCH_B_N:-20000} \
            timeout 600 cargo bench --locked -p fhirseal-sidecar --bench load ;;
    latency) timeout 300 cargo bench --locked -p fhirseal-sidecar --bench latency ;;
    search) timeout 900 cargo bench --locked -p fhirseal-sidecar --bench search ;;
    *) echo "bench.sh: no bench named $bench (seal, load, latency, search)" >&2; exit 2 ;;
  esac
done

echo
echo "== figures (target/bench/*.json), $(( $(date +%s) - start )) s"
python3 - "${CARGO_TARGET_DIR:-$root/target}/bench" "${benches[@]}" <<'PY'
import json, os, sys
folder, names = sys.argv[1], sys.argv[2:]
print(f"{'figure':<44} {'value':>12} {'baseline':>12} {'ratio':>8}  unit")
for name in names:
    path = os.path.join(folder, f"{name}.json")
    if not os.path.exists(path):
        print(f"{name}: no figures written")
        continue
    for key, m in json.load(open(path)).items():
        show = lambda x: "—" if x is None else (f"{x:,.1f}" if abs(x) >= 10 else f"{x:.3f}")
        print(f"{name + '.' + key:<44} {show(m.get('value')):>12} {show(m.get('baseline')):>12} "
              f"{show(m.get('ratio')):>8}  {m.get('unit', '')}")
PY
