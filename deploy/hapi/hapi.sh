#!/usr/bin/env bash
# Build, start and stop the fhirseal test HAPI FHIR R4 JPA server (H2 in memory).
#
#   hapi.sh build                 build target/fhirseal-hapi.jar if missing or older than
#                                 pom.xml / src/ (mvn -B -q package -DskipTests)
#   hapi.sh start PORT [DATA_DIR] build if needed, start on 127.0.0.1:PORT in the background,
#                                 wait until http://127.0.0.1:PORT/fhir/metadata answers 200
#   hapi.sh stop PORT [DATA_DIR]  stop the server started with the same PORT / DATA_DIR
#   hapi.sh status PORT           does http://127.0.0.1:PORT/fhir/metadata answer 200?
#
# DATA_DIR (default: ${TMPDIR:-/tmp}/fhirseal-hapi-PORT) holds hapi.pid and hapi.log.
# The FHIR base is http://127.0.0.1:PORT/fhir. The database is H2 in memory, so every
# start is an empty server; set HAPI_DB_FILE=/path/to/db to keep data on disk instead.
#
# Environment:
#   HAPI_START_TIMEOUT  seconds to wait for /fhir/metadata (default 300)
#   HAPI_JAVA_OPTS      JVM options (default: -Xms64m -Xmx1g -XX:+UseSerialGC; the H2
#                       database lives in this heap. For short test runs
#                       -XX:TieredStopAtLevel=1 lowers CPU and memory further)
#   HAPI_DB_FILE        optional H2 file path (without the .mv.db suffix)
#   JAVA                java binary (default: java on PATH)
#   MVN                 maven binary (default: mvn on PATH)
#
# Exit status: 0 on success, 1 on failure (start: the last 50 log lines are printed and
# a server that did not answer in time is stopped;
# status: 1 when down). smoke.sh PORT checks a running server end to end.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
JAR="$HERE/target/fhirseal-hapi.jar"
JAVA="${JAVA:-java}"
MVN="${MVN:-mvn}"

die() { echo "hapi.sh: $*" >&2; exit 1; }
usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

check_port() {
    [[ "${1:-}" =~ ^[0-9]+$ ]] && (( $1 > 0 && $1 < 65536 )) || die "bad or missing PORT: '${1:-}'"
}

data_dir() { echo "${2:-${TMPDIR:-/tmp}/fhirseal-hapi-$1}"; }

# HTTP status of GET /fhir/metadata on PORT; 000 when nothing answers
metadata_code() {
    curl -s -o /dev/null -m 5 -w '%{http_code}' "http://127.0.0.1:$1/fhir/metadata" 2>/dev/null || true
}

# 0 if /fhir/metadata on PORT answers 200
answers() { [[ "$(metadata_code "$1")" == 200 ]]; }

# 0 if the jar is missing or older than pom.xml or any file under src/
needs_build() {
    [[ -f "$JAR" ]] || return 0
    [[ "$HERE/pom.xml" -nt "$JAR" ]] && return 0
    [[ -n "$(find "$HERE/src" -newer "$JAR" -print -quit)" ]] && return 0
    return 1
}

# Builds (and copies, see run_jar) one at a time: two test runs may start servers at once.
lock() {
    exec 9>"${TMPDIR:-/tmp}/fhirseal-hapi-build.lock"
    flock 9
}
unlock() { exec 9>&-; }

cmd_build() {
    lock
    if ! needs_build; then
        echo "hapi.sh: $JAR is up to date"
        unlock
        return 0
    fi
    local t0; t0="$(now)"
    echo "hapi.sh: building $JAR ..."
    mkdir -p "$HERE/target"
    local blog="$HERE/target/build.log"
    if ! (cd "$HERE" && "$MVN" -B -q package -DskipTests) >"$blog" 2>&1; then
        tail -n 50 "$blog" >&2
        die "maven build failed (full output: $blog)"
    fi
    [[ -f "$JAR" ]] || die "build finished but $JAR is missing"
    # make sure the jar is newer than the sources even if the build did not rewrite it
    touch "$JAR"
    unlock
    echo "hapi.sh: built in $(since "$t0") s"
}

# Prints the jar a server should run. Maven rewrites target/fhirseal-hapi.jar in place,
# which breaks a server still running from it (NoClassDefFoundError), so servers run
# from a copy per build under target/run/ that no build touches.
run_jar() {
    lock
    local dst; dst="$HERE/target/run/fhirseal-hapi-$(stat -c '%Y-%s' "$JAR").jar"
    if [[ ! -f "$dst" ]]; then
        mkdir -p "$HERE/target/run"
        cp "$JAR" "$dst.tmp" && mv -f "$dst.tmp" "$dst"
        # drop older copies; a server still running from one keeps its open file
        find "$HERE/target/run" -name 'fhirseal-hapi-*.jar' ! -path "$dst" -delete
    fi
    unlock
    echo "$dst"
}

cmd_start() {
    local port="${1:-}"; check_port "$port"
    local dir; dir="$(data_dir "$port" "${2:-}")"
    local code; code="$(metadata_code "$port")"
    if [[ "$code" == 200 ]]; then
        echo "hapi.sh: a server already answers on http://127.0.0.1:$port/fhir"
        return 0
    elif [[ "$code" != 000 ]]; then
        die "port $port is taken by something else (GET /fhir/metadata gave HTTP $code)"
    fi
    cmd_build
    local jar; jar="$(run_jar)"
    mkdir -p "$dir"
    local pidf="$dir/hapi.pid" log="$dir/hapi.log"
    if [[ -f "$pidf" ]] && kill -0 "$(cat "$pidf")" 2>/dev/null; then
        die "pid $(cat "$pidf") from $pidf is running but does not answer on port $port; run: $0 stop $port $dir"
    fi
    local args=(--server.port="$port" --server.address=127.0.0.1)
    [[ -n "${HAPI_DB_FILE:-}" ]] && args+=(--hapi.db.file="$HAPI_DB_FILE")
    local t0; t0="$(now)"
    # shellcheck disable=SC2086  # HAPI_JAVA_OPTS is a list of options
    nohup "$JAVA" ${HAPI_JAVA_OPTS:--Xms64m -Xmx1g -XX:+UseSerialGC} -jar "$jar" "${args[@]}" </dev/null >"$log" 2>&1 &
    local pid=$!
    echo "$pid" >"$pidf"
    local timeout="${HAPI_START_TIMEOUT:-300}"
    echo "hapi.sh: started pid $pid on 127.0.0.1:$port (log $log), waiting up to ${timeout} s"
    while :; do
        if answers "$port"; then
            echo "hapi.sh: http://127.0.0.1:$port/fhir answers after $(since "$t0") s"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "hapi.sh: server process $pid exited; last 50 lines of $log:" >&2
            tail -n 50 "$log" >&2 || true
            rm -f "$pidf"
            exit 1
        fi
        if awk -v a="$t0" -v b="$(now)" -v t="$timeout" 'BEGIN { exit !(b - a > t) }'; then
            echo "hapi.sh: no answer after ${timeout} s; last 50 lines of $log:" >&2
            tail -n 50 "$log" >&2 || true
            terminate "$pid"
            rm -f "$pidf"
            exit 1
        fi
        sleep 1
    done
}

# TERM, then KILL if the JVM has not exited after 10 s
terminate() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 20); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "hapi.sh: pid $pid still alive after TERM, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "hapi.sh: stopped pid $pid"
}

cmd_stop() {
    local port="${1:-}"; check_port "$port"
    local dir; dir="$(data_dir "$port" "${2:-}")"
    local pidf="$dir/hapi.pid"
    if [[ ! -f "$pidf" ]]; then
        echo "hapi.sh: no pid file $pidf, nothing to stop"
        return 0
    fi
    local pid; pid="$(cat "$pidf")"
    if kill -0 "$pid" 2>/dev/null; then
        terminate "$pid"
    else
        echo "hapi.sh: pid $pid was not running"
    fi
    rm -f "$pidf"
}

cmd_status() {
    local port="${1:-}"; check_port "$port"
    if answers "$port"; then
        echo "hapi.sh: up: http://127.0.0.1:$port/fhir/metadata answers 200"
    else
        echo "hapi.sh: down: http://127.0.0.1:$port/fhir/metadata does not answer 200"
        return 1
    fi
}

case "${1:-}" in
    build) shift; cmd_build "$@" ;;
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    status) shift; cmd_status "$@" ;;
    *) usage ;;
esac
