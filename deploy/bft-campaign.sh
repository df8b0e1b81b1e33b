#!/usr/bin/env bash
# The BFT simulation's seeded campaign, long: SEEDS seeds from FIRST (default 500 from 1000), each
# a run at K = 4 with one Byzantine delegate and one at K = 7 with two (equivocating, withholding
# votes, proposing invalid blocks; see consensus/tests/bft/t30_agreement.rs), under a hostile
# network with kills. CI runs four seeds of the same test. A failing seed prints the command that
# replays it. Figures: target/bench/bft-campaign.json; every run's line: target/bench/bft-campaign.log.
set -euo pipefail
seeds=${1:-500}
first=${2:-1000}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
mkdir -p target/bench
log=target/bench/bft-campaign.log
cargo test --release --locked -p fhirseal-consensus --test bft --no-run
start=$(date +%s)
status=0
FHIRSEAL_SIM_SEED=$first FHIRSEAL_SIM_SEEDS=$seeds \
  cargo test --release --locked -p fhirseal-consensus --test bft campaign -- --nocapture \
  >"$log" 2>&1 || status=$?
seconds=$(( $(date +%s) - start ))
sum() { grep '^FIGURE' "$log" | sed -E "s/$1/\1/" | awk '{s += $1} END {print s + 0}'; }
runs=$(grep -c '^FIGURE' "$log" || true)
heights=$(sum '.*\): ([0-9]+) heights.*')
rounds=$(sum '.*rounds>0: ([0-9]+).*')
restarts=$(sum '.*restarts ([0-9]+).*')
passed=$([ "$status" -eq 0 ] && echo true || echo false)
printf '{"seeds": %s, "first_seed": %s, "runs": %s, "heights": %s, "heights_after_round_0": %s, "restarts": %s, "seconds": %s, "passed": %s}\n' \
  "$seeds" "$first" "$runs" "$heights" "$rounds" "$restarts" "$seconds" "$passed" \
  >target/bench/bft-campaign.json
cat target/bench/bft-campaign.json
if [ "$status" -ne 0 ]; then
  grep -E 'panicked|replay:' "$log" | head -20 >&2
  exit "$status"
fi
