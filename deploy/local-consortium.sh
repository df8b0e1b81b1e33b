#!/usr/bin/env bash
# A consortium of N governance nodes on loopback ports: the regulator (node 1) and N-1
# institutions (h2 … hN), each a `fhirseal consortium node` process with its own directory and
# keys. Ledger-only nodes: no FHIR server is needed.
#
#   deploy/local-consortium.sh start [N] [--voters K] [--dir DIR] [--port P]
#       founds the consortium in DIR (default ./consortium-data) on first start, or starts the
#       nodes already there; node i listens on 127.0.0.1:P+i (P defaults to 7100), the
#       regulator's join desk on 127.0.0.1:P+100. The first K nodes vote (default 3), the others
#       are learners.
#   deploy/local-consortium.sh status [--dir DIR]   every node's view (leader, term, members)
#   deploy/local-consortium.sh stop [--dir DIR]     stops the nodes (SIGTERM), keeping their data
#
# The binary is FHIRSEAL_BIN if set, else target/debug/fhirseal (built if missing).
set -euo pipefail

cd "$(dirname "$0")/.."
action="${1:-}"
shift || true
n=3
voters=3
dir="consortium-data"
port=7100
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then
    n="$1"
    shift
fi
while [[ $# -gt 0 ]]; do
    case "$1" in
        --voters) voters="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

bin="${FHIRSEAL_BIN:-target/debug/fhirseal}"
if [[ ! -x "$bin" ]]; then
    cargo build -p fhirseal-sidecar --bin fhirseal
fi
fhirseal() { "$bin" consortium "$@"; }

node_dirs() { find "$dir" -mindepth 2 -maxdepth 2 -name node.toml -printf '%h\n' 2>/dev/null | sort -V; }

start_node() {
    local d="$1"
    if [[ -f "$d/pid" ]] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then
        echo "$(basename "$d") is already running (pid $(cat "$d/pid"))"
        return
    fi
    "$bin" consortium node --dir "$d" >>"$d/node.log" 2>&1 &
    echo $! >"$d/pid"
    echo "$(basename "$d"): pid $!, log $d/node.log"
}

# Waits until the node of $1 answers its status and the output matches $2.
wait_for() {
    local d="$1" pattern="$2"
    for _ in $(seq 1 150); do
        if fhirseal status --dir "$d" 2>/dev/null | grep -q -- "$pattern"; then
            return 0
        fi
        sleep 0.2
    done
    echo "$(basename "$d") did not reach: $pattern (see $d/node.log)" >&2
    return 1
}

case "$action" in
    start)
        if [[ -f "$dir/node1/node.toml" ]]; then
            for d in $(node_dirs); do start_node "$d"; done
            wait_for "$dir/node1" "leader [0-9]"
            fhirseal status --dir "$dir/node1"
            exit 0
        fi
        if (( n < 1 || voters < 1 )); then
            echo "N and --voters must be at least 1" >&2
            exit 2
        fi
        mkdir -p "$dir"
        init_out=$(fhirseal init --dir "$dir/node1" --consortium local \
            --listen "127.0.0.1:$((port + 1))" --join-listen "127.0.0.1:$((port + 100))")
        pin=$(grep -o -- '--pin [0-9a-f]*' <<<"$init_out" | cut -d' ' -f2)
        start_node "$dir/node1"
        wait_for "$dir/node1" "consortium local:"
        for i in $(seq 2 "$n"); do
            # The regulator issues a one-time invite; the institution joins with it and tells
            # the regulator its certificate, which the regulator names when it admits it.
            token=$(fhirseal invite "h$i" --dir "$dir/node1" | grep -E '^[0-9a-f]{64}$')
            join_out=$(fhirseal join "https://127.0.0.1:$((port + 100))" --pin "$pin" \
                --invite "$token" --dir "$dir/node$i" \
                --member "h$i" --node-id "$i" --listen "127.0.0.1:$((port + i))")
            fp=$(grep -o -- '--fingerprint [0-9a-f]*' <<<"$join_out" | cut -d' ' -f2)
            start_node "$dir/node$i"
            if (( i <= voters )); then
                fhirseal admit "h$i" --dir "$dir/node1" --fingerprint "$fp" --voter
            else
                fhirseal admit "h$i" --dir "$dir/node1" --fingerprint "$fp"
            fi
        done
        if (( n > 1 )); then
            # Every node has applied the last admission.
            for i in $(seq 1 "$n"); do wait_for "$dir/node$i" "^h$n .* active"; done
        fi
        fhirseal status --dir "$dir/node1"
        ;;
    status)
        for d in $(node_dirs); do
            echo "== $(basename "$d")"
            fhirseal status --dir "$d" 2>&1 | head -3 || true
        done
        ;;
    stop)
        for d in $(node_dirs); do
            if [[ -f "$d/pid" ]]; then
                pid=$(cat "$d/pid")
                if kill -0 "$pid" 2>/dev/null; then
                    kill -TERM "$pid"
                    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                    echo "$(basename "$d") stopped"
                fi
                rm -f "$d/pid"
            fi
        done
        ;;
    *)
        sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
