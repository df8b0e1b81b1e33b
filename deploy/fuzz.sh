#!/usr/bin/env bash
# Runs every fuzz target for a share of MINUTES (default 10) with cargo-fuzz on the nightly
# toolchain, seeded with Synthea resources (shared/data beside the repository) and with the
# encodings the unit tests make. Not part of CI: CI runs the crates' regression tests, which
# hold every input a campaign has found.
#
#   deploy/fuzz.sh [MINUTES] [TARGET…]
#
# Needs `cargo install cargo-fuzz` and `rustup toolchain install nightly`. Crashes land in
# <crate>/fuzz/artifacts/<target>/; the summary says how long each target ran and what it found.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
minutes=${1:-10}
shift || true
targets=("$@")
all=(
  adapters:route adapters:search adapters:json_patch adapters:parse adapters:split_merge
  consensus:codec consensus:ring_signature consensus:raft_rpc
)
if [ ${#targets[@]} -eq 0 ]; then
  targets=("${all[@]}")
fi
seconds=$(( minutes * 60 / ${#targets[@]} ))
synthea="${FHIRSEAL_SYNTHEA_DIR:-$root/../shared/data/synthea}"

# Seeds: every resource of the Synthea bundles as a file, for the targets that read resources.
seed_resources() {
  local dir=$1
  mkdir -p "$dir"
  if [ -d "$synthea" ] && [ -z "$(ls -A "$dir" 2>/dev/null)" ]; then
    python3 - "$synthea" "$dir" <<'PY'
import json, os, sys, hashlib
src, out = sys.argv[1], sys.argv[2]
n = 0
for name in sorted(os.listdir(src)):
    if not name.endswith('.json'):
        continue
    bundle = json.load(open(os.path.join(src, name)))
    for entry in bundle.get('entry', [])[:200]:
        data = json.dumps(entry['resource']).encode()
        open(os.path.join(out, hashlib.sha1(data).hexdigest()), 'wb').write(data)
        n += 1
print(f"fuzz.sh: {n} Synthea resources as seeds in {out}")
PY
  fi
}

summary=()
for spec in "${targets[@]}"; do
  crate=${spec%%:*}
  target=${spec#*:}
  dir="$root/$crate/fuzz"
  corpus="$dir/corpus/$target"
  mkdir -p "$corpus"
  case "$target" in
    parse|split_merge) seed_resources "$corpus" ;;
  esac
  echo "== $crate/$target for $seconds s"
  started=$(date +%s)
  set +e
  (cd "$dir" && cargo +nightly fuzz run "$target" "$corpus" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 2>&1 | tail -n 15)
  status=${PIPESTATUS[0]}
  set -e
  ran=$(( $(date +%s) - started ))
  found=$(ls "$dir/artifacts/$target" 2>/dev/null | wc -l | tr -d ' ')
  summary+=("$crate/$target: ran ${ran} s, corpus $(ls "$corpus" | wc -l | tr -d ' ') inputs, ${found} crash artifacts (exit $status)")
done
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
