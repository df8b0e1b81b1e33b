#!/usr/bin/env bash
# Runs the image's entrypoint (fhirseal-node.sh) as the Compose consortium profile does, on
# loopback with a built fhirseal and no container: h1 founds a consortium, h2 waits for its
# invite and joins, the registrar invites and admits h2; then h2 must be an active voter in
# h1's view, and a second bootstrap of either data directory must change nothing.
#
#   deploy/container/test-node.sh [FHIRSEAL_BIN]     (default target/debug/fhirseal)
#
# Exits 1 on any failure; everything lives in a temporary directory and the nodes it started
# are stopped.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export FHIRSEAL_BIN=${1:-${FHIRSEAL_BIN:-$root/target/debug/fhirseal}}
[[ -x "$FHIRSEAL_BIN" ]] || { echo "test-node.sh: no fhirseal binary at $FHIRSEAL_BIN" >&2; exit 2; }
node="$root/deploy/container/fhirseal-node.sh"
dir=$(mktemp -d)
pids=()
cleanup() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$dir"
}
trap cleanup EXIT
fail() {
    echo "test-node.sh: $*" >&2
    for f in "$dir"/*.log; do echo "--- $f" >&2; tail -n 15 "$f" >&2; done
    exit 1
}

read -r fhir1 fhir2 gov1 gov2 desk < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
for s in socks: s.close()')

export FHIRSEAL_EXCHANGE_DIR="$dir/exchange" FHIRSEAL_BOOTSTRAP_WAIT=60
mkdir -p "$FHIRSEAL_EXCHANGE_DIR"
for m in h1 h2; do
    # 2048-bit keys: quicker to make than the default 3072.
    printf 'data_dir = "%s"\n[seal]\nrsa_bits = 2048\n' "$dir/$m" >"$dir/$m.toml"
done

FHIRSEAL_CONFIG="$dir/h1.toml" FHIRSEAL_INSTITUTION=h1 FHIRSEAL_BOOTSTRAP=found \
    FHIRSEAL_CONSORTIUM_NAME=test FHIRSEAL_ADVERTISE="127.0.0.1:$gov1" \
    FHIRSEAL_JOIN_DESK="127.0.0.1:$desk" FHIRSEAL_LISTEN="127.0.0.1:$fhir1" \
    "$node" run >"$dir/h1.log" 2>&1 &
pids+=($!)
FHIRSEAL_CONFIG="$dir/h2.toml" FHIRSEAL_INSTITUTION=h2 FHIRSEAL_NODE_ID=2 FHIRSEAL_BOOTSTRAP=join \
    FHIRSEAL_JOIN_URL="https://localhost:$desk" FHIRSEAL_ADVERTISE="127.0.0.1:$gov2" \
    FHIRSEAL_LISTEN="127.0.0.1:$fhir2" \
    "$node" run >"$dir/h2.log" 2>&1 &
pids+=($!)

FHIRSEAL_CONFIG="$dir/h1.toml" FHIRSEAL_INSTITUTION=h1 timeout 120 "$node" registrar h2 >"$dir/registrar.log" 2>&1 ||
    fail "the registrar did not admit h2"
grep -q '^h2 .* active .* voter' "$dir/registrar.log" || fail "h2 is not an active voter in h1's view"

# Each node hears of the admission; h2's takes part once the link key has reached it.
for _ in $(seq 1 100); do
    if FHIRSEAL_CONFIG="$dir/h2.toml" "$FHIRSEAL_BIN" consortium status 2>/dev/null | grep -q '(h2, active)'; then
        break
    fi
    sleep 0.3
done
FHIRSEAL_CONFIG="$dir/h2.toml" "$FHIRSEAL_BIN" consortium status 2>/dev/null | grep -q '(h2, active)' ||
    fail "h2's node does not take part in the consortium"

# Started again, the entrypoint finds the data directories in the consortium and leaves them.
before=$(cat "$dir/h1/consortium/membership.toml" "$dir/h2/consortium/membership.toml" | sha256sum)
FHIRSEAL_CONFIG="$dir/h1.toml" FHIRSEAL_BOOTSTRAP=found FHIRSEAL_CONSORTIUM_NAME=other "$node" bootstrap ||
    fail "a second bootstrap of h1 failed"
FHIRSEAL_CONFIG="$dir/h2.toml" FHIRSEAL_BOOTSTRAP=join "$node" bootstrap || fail "a second bootstrap of h2 failed"
[[ "$(cat "$dir/h1/consortium/membership.toml" "$dir/h2/consortium/membership.toml" | sha256sum)" == "$before" ]] ||
    fail "a second bootstrap changed a membership"
again=$(FHIRSEAL_CONFIG="$dir/h1.toml" FHIRSEAL_INSTITUTION=h1 "$node" registrar h2 2>&1) ||
    fail "the registrar, run again, failed: $again"
grep -q 'h2 is a member already' <<<"$again" || fail "the registrar, run again, did not find h2 a member already"
echo "test-node.sh: h1 founded, h2 joined and was admitted as a voter through fhirseal-node.sh; a second bootstrap changed nothing"
