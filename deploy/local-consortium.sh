#!/usr/bin/env bash
# A consortium of N institutions on loopback, to try one on a single machine. Each institution
# is one `fhirseal run` node (FHIR proxy, vault, ledger and consortium member in one process,
# one data directory); the first, h1, is the regulator, the others (h2 … hN) are invited,
# join and are admitted by the regulator.
#
#   deploy/local-consortium.sh start N [--hapi] [--voters K] [--delegates D] [--epoch-blocks E]
#                              [--max-terms M] [--port P] [--upstream URL]...
#       founds the consortium and starts its nodes; a second `start` starts the nodes already
#       there again. Member hI serves FHIR on 127.0.0.1:P+I (P defaults to 7100), its
#       governance listener (mutual TLS) is 127.0.0.1:P+100+I, the regulator's join desk
#       127.0.0.1:P+200. With --hapi each member stands in front of its own HAPI FHIR JPA
#       server on 127.0.0.1:P+300+I (deploy/hapi/hapi.sh; ~30 s and ~700 MB each); without
#       it, in front of the --upstream URLs given (member I takes the I-th, or the last), or of
#       http://127.0.0.1:8080/fhir. The first K members' nodes vote in Raft (default 3, or 1
#       when N is 2: a voter is removed by a joint consensus of the old voters and the new,
#       so one of two voters revoked would hold up the governance), the others are learners.
#       The shared ledger's delegates are the D members with the highest stake (all stakes
#       are equal here: the first D by name; default every member up to 4): its chain is
#       finalized by 2f+1 of them, and every member holds it. --epoch-blocks E (0, the default:
#       no election; else at least 3) and --max-terms M (default 2) are the DPoS election's
#       parameters, fixed when the consortium is founded (`consortium init`); with an election
#       every member is given a stake of 100 to stand with.
#   deploy/local-consortium.sh status          every member: its process and its node's view
#   deploy/local-consortium.sh stop            stops every node (SIGTERM) and the HAPIs started
#   deploy/local-consortium.sh kill NAME       SIGKILL one member's node (a crash); returns once it is gone
#   deploy/local-consortium.sh start-member NAME   starts one member's node again
#   deploy/local-consortium.sh add [--voter] [--upstream URL]
#       invites, joins and admits one more member, h(N+1) (a learner unless --voter), in
#       front of URL (default: the last member's upstream, or its own HAPI with --hapi);
#       its node syncs the shared chain from genesis
#
# Everything lives in $FHIRSEAL_CONSORTIUM_DIR (default ./local-consortium): per member hI its
# configuration (hI/fhirseal.toml), data directory (hI/data), log (hI/fhirseal.log) and pid,
# and consortium.json, which lists for each member its name, kind, FHIR base, HAPI base (with
# --hapi), upstream, ledger API base, governance address, configuration, data directory and
# API keys by role (clinician, researcher, auditor). `fhirseal consortium … --config
# hI/fhirseal.toml` governs a member through its own node.
#
# The binary is FHIRSEAL_BIN if set, else target/debug/fhirseal (built if missing).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${FHIRSEAL_CONSORTIUM_DIR:-local-consortium}
case "$dir" in /*) ;; *) dir="$PWD/$dir" ;; esac
action="${1:-}"
shift || true

bin="${FHIRSEAL_BIN:-$root/target/debug/fhirseal}"
hapi_sh="$root/deploy/hapi/hapi.sh"

usage() { sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "local-consortium.sh: $*" >&2; exit 1; }

ensure_bin() {
    if [[ ! -x "$bin" ]]; then
        (cd "$root" && cargo build -p fhirseal-sidecar --bin fhirseal)
    fi
}

# What `start` recorded: the members' names, in order, and the port base.
members() { cat "$dir/members" 2>/dev/null; }
setting() { sed -n "s/^$1=//p" "$dir/settings" 2>/dev/null; }
index_of() { echo "${1#h}"; }

member_dir() { echo "$dir/$1"; }
config_of() { echo "$dir/$1/fhirseal.toml"; }
consortium() { "$bin" consortium "$@"; }
status_of() { consortium status --config "$(config_of "$1")" 2>/dev/null; }

running() {
    local pidfile="$dir/$1/pid"
    [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# Waits until member $1's node answers its status and the status matches $2.
wait_for() {
    local name="$1" pattern="$2"
    for _ in $(seq 1 300); do
        if status_of "$name" | grep -q -- "$pattern"; then
            return 0
        fi
        if ! running "$name"; then
            tail -n 20 "$dir/$name/fhirseal.log" >&2 || true
            die "$name stopped (see $dir/$name/fhirseal.log)"
        fi
        sleep 0.2
    done
    tail -n 20 "$dir/$name/fhirseal.log" >&2 || true
    die "$name did not reach: $pattern (see $dir/$name/fhirseal.log)"
}

hapi_port() { echo $(( $(setting port) + 300 + $(index_of "$1") )); }

start_hapi() {
    local name="$1" port
    port=$(hapi_port "$name")
    if "$hapi_sh" status "$port" >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$dir/$name/hapi"
    "$hapi_sh" start "$port" "$dir/$name/hapi" >"$dir/$name/hapi-start.log" 2>&1 ||
        { cat "$dir/$name/hapi-start.log" >&2; die "the HAPI FHIR server of $name did not start"; }
}

start_node() {
    local name="$1"
    if running "$name"; then
        echo "$name is already running (pid $(cat "$dir/$name/pid"))"
        return 0
    fi
    if [[ "$(setting hapi)" == 1 ]]; then
        start_hapi "$name"
    fi
    "$bin" run --config "$(config_of "$name")" >>"$dir/$name/fhirseal.log" 2>&1 &
    echo $! >"$dir/$name/pid"
    echo "$name: pid $!, FHIR http://127.0.0.1:$(( $(setting port) + $(index_of "$name") ))/fhir, log $dir/$name/fhirseal.log"
}

random_key() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# Writes member $1's configuration: listeners, upstream, data directory, API keys.
write_config() {
    local name="$1" i="$2" port="$3" upstream="$4" desk="$5"
    local d="$dir/$name"
    mkdir -p "$d"
    {
        echo "data_dir = \"$d/data\""
        echo
        echo "[server]"
        echo "listen = \"127.0.0.1:$(( port + i ))\""
        echo
        echo "[upstream]"
        echo "url = \"$upstream\""
        echo
        echo "[seal]"
        echo "institution = \"$name\""
        echo "rsa_bits = 2048                 # quicker to make than the default 3072"
        echo
        if [[ -n "$desk" ]]; then
            echo "[consortium]"
            echo "join_listen = \"$desk\""
            echo
        fi
        for role in clinician researcher auditor; do
            echo "[[auth.api_keys]]"
            echo "name = \"$name-$role\""
            echo "role = \"$role\""
            echo "institution = \"$name\""
            echo "key = \"$(random_key)\""
            echo
        done
    } >"$d/fhirseal.toml"
    chmod 600 "$d/fhirseal.toml"
}

key_of() { # member, role
    awk -v role="$2" '
        /^role = / { r = $3; gsub(/"/, "", r) }
        /^key = / { k = $3; gsub(/"/, "", k); if (r == role) print k }
    ' "$(config_of "$1")"
}

# One member's entry of consortium.json.
member_json() {
    local name="$1" port="$2" hapi="$3" i fhir kind=hospital
    i=$(index_of "$name")
    fhir="http://127.0.0.1:$(( port + i ))"
    [[ "$name" == h1 ]] && kind=regulator
    echo "    {"
    echo "      \"name\": \"$name\","
    echo "      \"kind\": \"$kind\","
    echo "      \"fhir_base\": \"$fhir/fhir\","
    if [[ "$hapi" == 1 ]]; then
        echo "      \"hapi_base\": \"http://127.0.0.1:$(hapi_port "$name")/fhir\","
    fi
    echo "      \"upstream\": \"$(sed -n 's/^url = "\(.*\)"$/\1/p' "$(config_of "$name")")\","
    echo "      \"ledger_api\": \"$fhir/ledger\","
    echo "      \"consortium_address\": \"127.0.0.1:$(( port + 100 + i ))\","
    echo "      \"config\": \"$(config_of "$name")\","
    echo "      \"data_dir\": \"$dir/$name/data\","
    echo "      \"api_keys\": {"
    echo "        \"clinician\": \"$(key_of "$name" clinician)\","
    echo "        \"researcher\": \"$(key_of "$name" researcher)\","
    echo "        \"auditor\": \"$(key_of "$name" auditor)\""
    echo "      }"
    printf '    }'
}

write_json() {
    local port hapi separator=""
    port=$(setting port)
    hapi=$(setting hapi)
    {
        echo "{"
        echo "  \"consortium\": \"local\","
        echo "  \"regulator\": \"h1\","
        echo "  \"members\": ["
        for name in $(members); do
            printf '%s' "$separator"
            member_json "$name" "$port" "$hapi"
            separator=$',\n'
        done
        echo
        echo "  ]"
        echo "}"
    } >"$dir/consortium.json"
}

cmd_start() {
    local n=3 voters="" port=7100 hapi=0 delegates=4 epoch_blocks=0 max_terms=2
    local upstreams=()
    if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then
        n="$1"
        shift
    fi
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --hapi) hapi=1; shift ;;
            --voters) voters="$2"; shift 2 ;;
            --delegates) delegates="$2"; shift 2 ;;
            --epoch-blocks) epoch_blocks="$2"; shift 2 ;;
            --max-terms) max_terms="$2"; shift 2 ;;
            --port) port="$2"; shift 2 ;;
            --upstream) upstreams+=("$2"); shift 2 ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    ensure_bin
    if [[ -f "$dir/members" ]]; then
        # Started before: start its nodes again, as they were.
        for name in $(members); do start_node "$name"; done
        wait_for h1 "leader [0-9]"
        for name in $(members); do wait_for "$name" "^node "; done
        status_of h1
        return 0
    fi
    if [[ -z "$voters" ]]; then
        voters=$(( n == 2 ? 1 : 3 ))
    fi
    (( n >= 1 && voters >= 1 && delegates >= 1 )) || die "N, --voters and --delegates must be at least 1"
    [[ $hapi == 1 && ${#upstreams[@]} -gt 0 ]] && die "--hapi and --upstream exclude each other"
    mkdir -p "$dir"
    printf 'port=%s\nhapi=%s\n' "$port" "$hapi" >"$dir/settings"
    local desk="127.0.0.1:$(( port + 200 ))"
    for i in $(seq 1 "$n"); do
        local upstream
        if [[ $hapi == 1 ]]; then
            upstream="http://127.0.0.1:$(( port + 300 + i ))/fhir"
        elif [[ ${#upstreams[@]} -gt 0 ]]; then
            local u=$(( i <= ${#upstreams[@]} ? i - 1 : ${#upstreams[@]} - 1 ))
            upstream="${upstreams[$u]}"
        else
            upstream="http://127.0.0.1:8080/fhir"
        fi
        if [[ $i == 1 ]]; then
            write_config "h$i" "$i" "$port" "$upstream" "$desk"
        else
            write_config "h$i" "$i" "$port" "$upstream" ""
        fi
    done
    if [[ $hapi == 1 ]]; then
        # The HAPI servers start together (each takes ~30 s); the nodes wait for them.
        "$hapi_sh" build >/dev/null
        local pids=()
        for i in $(seq 1 "$n"); do
            start_hapi "h$i" &
            pids+=($!)
        done
        for pid in "${pids[@]}"; do wait "$pid"; done
    fi

    # The regulator founds the consortium, with its join desk.
    local init_out pin
    init_out=$(consortium init --config "$(config_of h1)" --consortium local --member h1 \
        --listen "127.0.0.1:$(( port + 101 ))" --delegates "$delegates" \
        --epoch-blocks "$epoch_blocks" --max-terms "$max_terms")
    pin=$(grep -o -- '--pin [0-9a-f]*' <<<"$init_out" | cut -d' ' -f2)
    echo "pin=$pin" >>"$dir/settings"
    echo h1 >"$dir/members"
    start_node h1
    wait_for h1 "(h1, active)"
    for i in $(seq 2 "$n"); do
        join_member "$i" $(( i <= voters ))
    done
    # Every node has applied the last admission and holds the link key.
    for name in $(members); do
        wait_for "$name" "^h$n .* active"
        wait_for "$name" "($name, active)"
    done
    # The election weighs stake: with one, every member gets an equal stake to stand with.
    if [[ "$epoch_blocks" != 0 ]]; then
        for name in $(members); do
            consortium stake "$name" 100 --config "$(config_of h1)" >/dev/null
        done
    fi
    write_json
    status_of h1
    echo "consortium.json: $dir/consortium.json"
}

# Member h$1 (its configuration written) joins: the regulator issues a one-time invite; the
# institution joins with it at the desk before its node's first start and tells the regulator
# its certificate, which the regulator names when it admits it (as a voter when $2 is 1).
join_member() {
    local i="$1" voter="$2" port pin token join_out fp
    port=$(setting port)
    pin=$(setting pin)
    [[ -n "$pin" ]] || die "no join desk pin in $dir/settings"
    token=$(consortium invite "h$i" --config "$(config_of h1)" | grep -E '^[0-9a-f]{64}$')
    join_out=$(consortium join "https://127.0.0.1:$(( port + 200 ))" --pin "$pin" \
        --invite "$token" --config "$(config_of "h$i")" --member "h$i" --node-id "$i" \
        --listen "127.0.0.1:$(( port + 100 + i ))")
    fp=$(grep -o -- '--fingerprint [0-9a-f]*' <<<"$join_out" | cut -d' ' -f2)
    echo "h$i" >>"$dir/members"
    start_node "h$i"
    if [[ "$voter" == 1 ]]; then
        consortium admit "h$i" --config "$(config_of h1)" --fingerprint "$fp" --voter
    else
        consortium admit "h$i" --config "$(config_of h1)" --fingerprint "$fp"
    fi
}

cmd_add() {
    local voter=0 upstream=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --voter) voter=1; shift ;;
            --upstream) upstream="$2"; shift 2 ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    [[ -f "$dir/members" ]] || die "no consortium in $dir: start one first"
    running h1 || die "the regulator's node (h1) is not running"
    ensure_bin
    local port i last
    port=$(setting port)
    i=$(( $(members | wc -l) + 1 ))
    last=$(members | tail -n 1)
    if [[ "$(setting hapi)" == 1 ]]; then
        [[ -z "$upstream" ]] || die "--upstream: this consortium's members run their own HAPI"
        upstream="http://127.0.0.1:$(( port + 300 + i ))/fhir"
    elif [[ -z "$upstream" ]]; then
        upstream=$(sed -n 's/^url = "\(.*\)"$/\1/p' "$(config_of "$last")")
    fi
    write_config "h$i" "$i" "$port" "$upstream" ""
    join_member "$i" "$voter"
    for name in $(members); do
        running "$name" || continue
        wait_for "$name" "^h$i .* active"
    done
    wait_for "h$i" "(h$i, active)"
    write_json
    status_of h1
}

cmd_status() {
    for name in $(members); do
        local state="stopped"
        if running "$name"; then state="pid $(cat "$dir/$name/pid")"; fi
        echo "== $name ($state)"
        status_of "$name" | head -3 || true
    done
}

# Waits (up to 20 s) until process $1 has exited: by then its files, and the locks its databases
# hold, are let go, so that a command run next on its data directory finds them free.
wait_gone() {
    for _ in $(seq 1 200); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
}

stop_node() {
    local name="$1" pidfile="$dir/$1/pid"
    if [[ -f "$pidfile" ]]; then
        local pid
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            wait_gone "$pid"
            echo "$name stopped"
        fi
        rm -f "$pidfile"
    fi
}

cmd_stop() {
    for name in $(members); do stop_node "$name"; done
    if [[ "$(setting hapi)" == 1 ]]; then
        for name in $(members); do
            "$hapi_sh" stop "$(hapi_port "$name")" "$dir/$name/hapi" >/dev/null 2>&1 || true
        done
    fi
}

cmd_kill() {
    local name="${1:-}"
    [[ -n "$name" ]] && grep -qx "$name" "$dir/members" 2>/dev/null || die "no member '$name'"
    if running "$name"; then
        local pid
        pid=$(cat "$dir/$name/pid")
        kill -KILL "$pid"
        wait_gone "$pid"
        echo "$name killed"
    fi
    rm -f "$dir/$name/pid"
}

cmd_start_member() {
    local name="${1:-}"
    [[ -n "$name" ]] && grep -qx "$name" "$dir/members" 2>/dev/null || die "no member '$name'"
    ensure_bin
    start_node "$name"
    wait_for "$name" "^node "
    status_of "$name" | head -3
}

case "$action" in
    start) cmd_start "$@" ;;
    status) cmd_status ;;
    stop) cmd_stop ;;
    kill) cmd_kill "$@" ;;
    start-member) cmd_start_member "$@" ;;
    add) cmd_add "$@" ;;
    *) usage ;;
esac
