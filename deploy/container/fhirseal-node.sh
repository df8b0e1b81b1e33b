#!/usr/bin/env bash
# The container image's entrypoint: brings a node's data directory into its consortium before
# the node's first start, then runs the node. The Compose file and the Kubernetes StatefulSet in
# deploy/ use it; it works the same on any machine (deploy/validate-manifests.sh runs it on
# loopback with the real binary).
#
#   fhirseal-node.sh run [ARGS]     bootstrap (below), then `exec fhirseal run ARGS`
#   fhirseal-node.sh bootstrap      bootstrap only (a Kubernetes init container)
#   fhirseal-node.sh registrar MEMBER...
#       at the regulator: for each MEMBER not yet in the consortium, issue an invite into the
#       exchange directory, wait for the member's certificate fingerprint there, and admit it
#       as a voter. The Compose consortium profile runs it beside the regulator; elsewhere the
#       regulator runs `fhirseal consortium invite` and `admit` by hand.
#   fhirseal-node.sh ARGS           `exec fhirseal ARGS` (e.g. `consortium status`)
#
# Bootstrap does nothing when the data directory already belongs to a consortium
# (DATA/consortium/membership.toml). Otherwise FHIRSEAL_BOOTSTRAP says what to do:
#   default      nothing: the node's first start founds a consortium of one (the embedded
#                default, as `fhirseal run` does anywhere)
#   found        `fhirseal consortium init`: this member founds FHIRSEAL_CONSORTIUM_NAME as its
#                regulator, with its join desk on FHIRSEAL_JOIN_DESK (default 0.0.0.0:7300);
#                the desk's certificate pin is written to EXCHANGE/pin
#   join         `fhirseal consortium join FHIRSEAL_JOIN_URL`: waits for EXCHANGE/pin (or
#                FHIRSEAL_JOIN_PIN) and EXCHANGE/MEMBER.invite (or FHIRSEAL_INVITE), joins, and
#                writes its certificate's fingerprint to EXCHANGE/MEMBER.fingerprint when
#                EXCHANGE is writable (it is printed either way)
#   statefulset  found on ordinal 0 of a StatefulSet (the host name's -N suffix), join on the
#                others; the member id is the host name unless FHIRSEAL_MEMBER says otherwise,
#                and the Raft node id is the ordinal + 1
#
# Other settings: FHIRSEAL_MEMBER (default FHIRSEAL_INSTITUTION, else the host name), the member
# id, which is also the node's institution; FHIRSEAL_NODE_ID; FHIRSEAL_ADVERTISE, the IP:port
# the other members reach this node's governance listener at (recorded in the consortium), or
# FHIRSEAL_ADVERTISE_SERVICE=PREFIX to take it from the Kubernetes service variables
# PREFIX_N_SERVICE_HOST and PREFIX_N_SERVICE_PORT of the pod's ordinal N; FHIRSEAL_EXCHANGE_DIR
# (default /run/fhirseal/exchange); FHIRSEAL_BOOTSTRAP_WAIT, seconds to wait for the invite
# (default 0: as long as it takes). fhirseal itself reads FHIRSEAL_CONFIG, FHIRSEAL_DATA_DIR and
# the other FHIRSEAL_* variables its README lists. FHIRSEAL_BIN is the binary (default fhirseal
# on PATH).
set -euo pipefail

bin=${FHIRSEAL_BIN:-fhirseal}
exchange=${FHIRSEAL_EXCHANGE_DIR:-/run/fhirseal/exchange}

say() { echo "fhirseal-node: $*" >&2; }
die() { say "$*"; exit 1; }

# The data directory the node uses: FHIRSEAL_DATA_DIR, which wins over the configuration
# file, else what `fhirseal config` resolves.
data_dir() {
    if [[ -n "${FHIRSEAL_DATA_DIR:-}" ]]; then
        echo "$FHIRSEAL_DATA_DIR"
        return
    fi
    "$bin" config | sed -n 's/^    data_dir: "\(.*\)",$/\1/p'
}

ordinal() {
    local host=${HOSTNAME:-$(hostname)}
    [[ "$host" =~ -([0-9]+)$ ]] || die "host name $host has no StatefulSet ordinal (-N)"
    echo "${BASH_REMATCH[1]}"
}

member_id() {
    echo "${FHIRSEAL_MEMBER:-${FHIRSEAL_INSTITUTION:-${HOSTNAME:-$(hostname)}}}"
}

advertised() {
    if [[ -n "${FHIRSEAL_ADVERTISE:-}" ]]; then
        echo "$FHIRSEAL_ADVERTISE"
        return
    fi
    local prefix=${FHIRSEAL_ADVERTISE_SERVICE:-}
    [[ -n "$prefix" ]] || die "set FHIRSEAL_ADVERTISE (IP:port) or FHIRSEAL_ADVERTISE_SERVICE"
    local n host_var port_var
    n=$(ordinal)
    host_var="${prefix}_${n}_SERVICE_HOST"
    port_var="${prefix}_${n}_SERVICE_PORT"
    [[ -n "${!host_var:-}" && -n "${!port_var:-}" ]] ||
        die "$host_var / $port_var are not set: create the Service of ordinal $n before the pod"
    echo "${!host_var}:${!port_var}"
}

# Waits for the first line of file $1 (or returns the value $2 when given) and prints it.
wait_value() {
    local file="$1" given="${2:-}" limit=${FHIRSEAL_BOOTSTRAP_WAIT:-0} waited=0
    if [[ -n "$given" ]]; then
        echo "$given"
        return
    fi
    until [[ -s "$file" ]]; do
        if (( waited == 0 )); then say "waiting for $file"; fi
        if (( limit > 0 && waited >= limit )); then die "$file did not arrive in $limit s"; fi
        sleep 2
        waited=$(( waited + 2 ))
    done
    head -n 1 "$file" | tr -d '[:space:]'
}

found() {
    local member listen desk out pin
    member=$(member_id)
    listen=$(advertised)
    desk=${FHIRSEAL_JOIN_DESK:-0.0.0.0:7300}
    [[ -n "${FHIRSEAL_CONSORTIUM_NAME:-}" ]] || die "FHIRSEAL_CONSORTIUM_NAME is not set"
    say "founding consortium $FHIRSEAL_CONSORTIUM_NAME as $member, governance at $listen, join desk $desk"
    out=$(FHIRSEAL_INSTITUTION="$member" "$bin" consortium init --consortium "$FHIRSEAL_CONSORTIUM_NAME" \
        --member "$member" --node-id "${FHIRSEAL_NODE_ID:-1}" --listen "$listen" --join-listen "$desk")
    echo "$out"
    pin=$(grep -o -- '--pin [0-9a-f]*' <<<"$out" | head -n 1 | cut -d' ' -f2)
    [[ -n "$pin" ]] || die "consortium init printed no join desk pin"
    if mkdir -p "$exchange" 2>/dev/null && [[ -w "$exchange" ]]; then
        echo "$pin" >"$exchange/pin"
    fi
}

join() {
    local member listen pin invite out fp node_args=()
    member=$(member_id)
    listen=$(advertised)
    [[ -n "${FHIRSEAL_JOIN_URL:-}" ]] || die "FHIRSEAL_JOIN_URL (https://regulator:7300) is not set"
    pin=$(wait_value "$exchange/pin" "${FHIRSEAL_JOIN_PIN:-}")
    invite=$(wait_value "$exchange/$member.invite" "${FHIRSEAL_INVITE:-}")
    if [[ -n "${FHIRSEAL_NODE_ID:-}" ]]; then node_args=(--node-id "$FHIRSEAL_NODE_ID"); fi
    say "joining at $FHIRSEAL_JOIN_URL as $member, governance at $listen"
    out=$(FHIRSEAL_INSTITUTION="$member" "$bin" consortium join "$FHIRSEAL_JOIN_URL" --pin "$pin" \
        --invite "$invite" --member "$member" --listen "$listen" "${node_args[@]}")
    echo "$out"
    fp=$(grep -o -- '--fingerprint [0-9a-f]*' <<<"$out" | head -n 1 | cut -d' ' -f2)
    [[ -n "$fp" ]] || die "consortium join printed no certificate fingerprint"
    if [[ -w "$exchange" ]]; then
        echo "$fp" >"$exchange/$member.fingerprint"
    fi
    say "certificate fingerprint of $member: $fp (the regulator admits it with: fhirseal consortium admit $member --fingerprint $fp --voter)"
}

bootstrap() {
    local dir mode=${FHIRSEAL_BOOTSTRAP:-default}
    dir=$(data_dir)
    [[ -n "$dir" ]] || die "fhirseal config printed no data_dir"
    if [[ -f "$dir/consortium/membership.toml" ]]; then
        return 0
    fi
    if [[ "$mode" == statefulset ]]; then
        local n
        n=$(ordinal)
        export FHIRSEAL_NODE_ID=${FHIRSEAL_NODE_ID:-$(( n + 1 ))}
        if (( n == 0 )); then mode=found; else mode=join; fi
    fi
    case "$mode" in
        default) ;;
        found) found ;;
        join) join ;;
        *) die "FHIRSEAL_BOOTSTRAP=$mode: expected default, found, join or statefulset" ;;
    esac
}

# Admits each member named as it joins, through the regulator's running node.
registrar() {
    (( $# > 0 )) || die "registrar: name the members to admit"
    mkdir -p "$exchange"
    local tries=0
    until "$bin" consortium status >/dev/null 2>&1; do
        tries=$(( tries + 1 ))
        (( tries < 300 )) || die "the regulator's node does not answer"
        sleep 2
    done
    for member in "$@"; do
        if "$bin" consortium status | grep -q "^$member .* active"; then
            say "$member is a member already"
            continue
        fi
        rm -f "$exchange/$member.fingerprint"
        "$bin" consortium invite "$member" | grep -E '^[0-9a-f]{64}$' >"$exchange/$member.invite.tmp"
        mv "$exchange/$member.invite.tmp" "$exchange/$member.invite"
        say "invited $member"
        local fp
        fp=$(wait_value "$exchange/$member.fingerprint")
        "$bin" consortium admit "$member" --fingerprint "$fp" --voter
        rm -f "$exchange/$member.invite"
    done
    "$bin" consortium status
}

case "${1:-run}" in
    run)
        shift || true
        bootstrap
        exec "$bin" run "$@"
        ;;
    bootstrap) bootstrap ;;
    registrar) shift; registrar "$@" ;;
    *) exec "$bin" "$@" ;;
esac
