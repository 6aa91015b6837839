#!/usr/bin/env bash
# chatd against the baseline (the stock Node.js Socket.IO server in
# scripts/baseline, same events, history in memory) in ONE run.
#
# Every scenario gets a fresh server on a fresh data directory, pinned to
# one core (taskset -c $SERVER_CORE); the load generator, `chatd bench`,
# runs pinned to the other ($BENCH_CORE). chatd runs with --rate-limit 0 and
# raised connection limits, --no-tls for the plain scenarios and --no-auth
# wherever the scenario does not measure auth. Every figure is printed as
# chatd, baseline, and chatd/baseline.
#
#   (1) 100 pairs, closed loop, plain ws: server CPU per 100k delivered messages
#   (2) 1000 pairs x 20 msgs/s open loop (40k msgs/s offered), plain ws:
#       delivered rate, end-to-end p99, lost messages
#   (3) 10,000 idle connections, plain ws (both) and TLS (chatd only: the
#       baseline has no TLS): RSS per connection
#   (4) TLS + JWT handshakes (chatd only: the baseline has neither), then
#       plain handshakes without auth on both, which are comparable
#   (5) chatd bench store: durable inserts/s and export/s (no baseline: it
#       keeps history in memory)
#
# Usage: scripts/bench.sh
# Env (defaults give a run of a few minutes): DURATION WARMUP CLOSED_PAIRS
# OPEN_PAIRS OPEN_RATE IDLE_CONNECTIONS IDLE_HOLD HANDSHAKES
# HANDSHAKE_CONCURRENCY STORE_MESSAGES STORE_ROOMS SERVER_CORE BENCH_CORE
# CARGO_TARGET_DIR.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CLOSED_PAIRS=${CLOSED_PAIRS:-100}
OPEN_PAIRS=${OPEN_PAIRS:-1000}
OPEN_RATE=${OPEN_RATE:-20}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
IDLE_HOLD=${IDLE_HOLD:-5}
HANDSHAKES=${HANDSHAKES:-2000}
HANDSHAKE_CONCURRENCY=${HANDSHAKE_CONCURRENCY:-16}
STORE_MESSAGES=${STORE_MESSAGES:-200000}
STORE_ROOMS=${STORE_ROOMS:-1000}
SERVER_CORE=${SERVER_CORE:-0}
BENCH_CORE=${BENCH_CORE:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
# Above every scenario's connection count: the limits are not what is measured.
MAX_CONNECTIONS=$((IDLE_CONNECTIONS + HANDSHAKES + 1000))

for tool in taskset jq node npm; do
    command -v "$tool" > /dev/null || { echo "bench: $tool is needed" >&2; exit 1; }
done

echo "== building chatd (release)" >&2
cargo build --release --bin chatd >&2
CHATD="$TARGET_DIR/release/chatd"
if [[ ! -d scripts/baseline/node_modules ]]; then
    echo "== installing the baseline's dependencies (npm ci)" >&2
    (cd scripts/baseline && npm ci --silent) >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chatd-bench.XXXXXX")
STARTED=()
cleanup() {
    # Only what this script started, by pid.
    for pid in "${STARTED[@]}"; do
        kill -KILL "$pid" 2> /dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

# start NAME COMMAND...: starts a server pinned to the server core, waits for
# its `Listening at N`, and sets PID and PORT.
start() {
    local name=$1
    shift
    taskset -c "$SERVER_CORE" "$@" > "$WORK/$name.out" 2> "$WORK/$name.err" &
    PID=$!
    STARTED+=("$PID")
    for _ in $(seq 1 300); do
        PORT=$(sed -n 's/^Listening at \([0-9]*\)$/\1/p' "$WORK/$name.out")
        [[ -n $PORT ]] && return 0
        kill -0 "$PID" 2> /dev/null || break
        sleep 0.1
    done
    echo "bench: $name did not start:" >&2
    cat "$WORK/$name.err" >&2
    exit 1
}

# start_chatd NAME ARGS...: chatd on a fresh data directory.
start_chatd() {
    local name=$1
    shift
    start "$name" "$CHATD" run --listen 127.0.0.1:0 --data-dir "$WORK/$name.data" \
        --rate-limit 0 --max-connections "$MAX_CONNECTIONS" \
        --max-connections-per-ip "$MAX_CONNECTIONS" "$@"
}

start_baseline() {
    start "$1" node scripts/baseline/server.mjs --port 0
}

# stop: SIGTERM to the last server started, SIGKILL if it lingers.
stop() {
    kill -TERM "$PID" 2> /dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$PID" 2> /dev/null || break
        sleep 0.1
    done
    kill -KILL "$PID" 2> /dev/null || true
    wait "$PID" 2> /dev/null || true
}

# run NAME ARGS...: `chatd bench ARGS... --json` on the bench core, into
# $WORK/NAME.json (`{}` if it failed, so the table shows n/a).
run() {
    local name=$1
    shift
    echo "   $name" >&2
    if ! taskset -c "$BENCH_CORE" "$CHATD" bench "$@" --json \
        > "$WORK/$name.json" 2> "$WORK/$name.log"; then
        echo "bench: $name failed:" >&2
        tail -5 "$WORK/$name.log" >&2
        echo '{}' > "$WORK/$name.json"
    fi
}

# figure NAME EXPR: a jq expression over NAME's report, `n/a` if absent.
figure() {
    jq -r "($2) // \"n/a\"" "$WORK/$1.json" 2> /dev/null || echo n/a
}

# row LABEL BETTER EXPR CHATD_RUN BASELINE_RUN: one line of the table.
# BASELINE_RUN may be `-` for a figure the baseline has no counterpart for.
row() {
    local label=$1 better=$2 expr=$3 ours theirs=n/a
    ours=$(figure "$4" "$expr")
    [[ $5 != - ]] && theirs=$(figure "$5" "$expr")
    awk -v label="$label" -v better="$better" -v a="$ours" -v b="$theirs" '
        function show(v) {
            if (v !~ /^-?[0-9.e+-]+$/) return v
            if (v == int(v)) return sprintf("%d", v)
            return sprintf(v < 10 ? "%.3f" : (v < 1000 ? "%.1f" : "%.0f"), v)
        }
        BEGIN {
            ratio = "-"
            if (a ~ /^-?[0-9.e+-]+$/ && b ~ /^-?[0-9.e+-]+$/ && b + 0 != 0) ratio = sprintf("%.2f", a / b)
            printf "  %-46s %12s %12s %8s   %s\n", label, show(a), show(b), ratio, better
        }'
}

header() {
    printf "\n%s\n" "$1"
    printf "  %-46s %12s %12s %8s   %s\n" "" chatd baseline ratio better
}

# The figures every pairs run shows.
pairs_rows() {
    row "delivered msgs/s" higher .delivered_per_sec "$1" "$2"
    row "end-to-end latency p50 (ms)" lower .e2e_p50_ms "$1" "$2"
    row "end-to-end latency p90 (ms)" lower .e2e_p90_ms "$1" "$2"
    row "end-to-end latency p99 (ms)" lower .e2e_p99_ms "$1" "$2"
    row "end-to-end latency max (ms)" lower .e2e_max_ms "$1" "$2"
    row "ack latency p50 (ms)" lower .ack_p50_ms "$1" "$2"
    row "ack latency p99 (ms)" lower .ack_p99_ms "$1" "$2"
    row "server CPU s per 100k delivered" lower .server_cpu_s_per_100k_delivered "$1" "$2"
    row "messages sent" - .sent "$1" "$2"
    row "messages lost (acked, never delivered)" lower .lost "$1" "$2"
    row "refusals + errors" lower '([.refusals[]?, .errors[]?] | add) // 0' "$1" "$2"
    row "bench CPU % (100 = load generator saturated)" - .bench_cpu_percent "$1" "$2"
}

PAIRS_ARGS=(--no-auth --duration "$DURATION" --warmup "$WARMUP")

echo "== (1) $CLOSED_PAIRS pairs, closed loop, plain ws" >&2
start_chatd closed-chatd --no-tls --no-auth
run closed-chatd pairs --url "ws://127.0.0.1:$PORT" --server-pid "$PID" \
    --pairs "$CLOSED_PAIRS" --closed-loop "${PAIRS_ARGS[@]}"
stop
start_baseline closed-baseline
run closed-baseline pairs --url "ws://127.0.0.1:$PORT" --server-pid "$PID" \
    --pairs "$CLOSED_PAIRS" --closed-loop "${PAIRS_ARGS[@]}"
stop

echo "== (2) $OPEN_PAIRS pairs x $OPEN_RATE msgs/s, open loop, plain ws" >&2
start_chatd open-chatd --no-tls --no-auth
run open-chatd pairs --url "ws://127.0.0.1:$PORT" --server-pid "$PID" \
    --pairs "$OPEN_PAIRS" --rate "$OPEN_RATE" "${PAIRS_ARGS[@]}"
stop
start_baseline open-baseline
run open-baseline pairs --url "ws://127.0.0.1:$PORT" --server-pid "$PID" \
    --pairs "$OPEN_PAIRS" --rate "$OPEN_RATE" "${PAIRS_ARGS[@]}"
stop

echo "== (3) $IDLE_CONNECTIONS idle connections" >&2
IDLE_ARGS=(--no-auth --connections "$IDLE_CONNECTIONS" --duration "$IDLE_HOLD")
start_chatd idle-chatd --no-tls --no-auth
run idle-chatd idle --url "ws://127.0.0.1:$PORT" --server-pid "$PID" "${IDLE_ARGS[@]}"
stop
start_baseline idle-baseline
run idle-baseline idle --url "ws://127.0.0.1:$PORT" --server-pid "$PID" "${IDLE_ARGS[@]}"
stop
start_chatd idle-tls-chatd --no-auth
run idle-tls-chatd idle --url "wss://127.0.0.1:$PORT" --server-pid "$PID" \
    --ca "$WORK/idle-tls-chatd.data/tls/cert.pem" "${IDLE_ARGS[@]}"
stop

echo "== (4) $HANDSHAKES handshakes, $HANDSHAKE_CONCURRENCY at a time" >&2
CONNECT_ARGS=(--connections "$HANDSHAKES" --concurrency "$HANDSHAKE_CONCURRENCY")
start_chatd connect-tls-chatd
run connect-tls-chatd connect --url "wss://127.0.0.1:$PORT" --server-pid "$PID" \
    --ca "$WORK/connect-tls-chatd.data/tls/cert.pem" \
    --token-secret "$WORK/connect-tls-chatd.data/jwt-secret" "${CONNECT_ARGS[@]}"
stop
start_chatd connect-plain-chatd --no-tls --no-auth
run connect-plain-chatd connect --url "ws://127.0.0.1:$PORT" --server-pid "$PID" \
    --no-auth "${CONNECT_ARGS[@]}"
stop
start_baseline connect-plain-baseline
run connect-plain-baseline connect --url "ws://127.0.0.1:$PORT" --server-pid "$PID" \
    --no-auth "${CONNECT_ARGS[@]}"
stop

echo "== (5) store: $STORE_MESSAGES messages over $STORE_ROOMS rooms" >&2
run store-chatd store --messages "$STORE_MESSAGES" --rooms "$STORE_ROOMS"

cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
echo "chatd $(git describe --always --dirty) vs baseline (Node $(node --version), socket.io $(jq -r .version scripts/baseline/node_modules/socket.io/package.json))"
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($cpu); servers on core $SERVER_CORE, load generator on core $BENCH_CORE"
echo "ratio = chatd / baseline; measured ${DURATION}s after ${WARMUP}s of warm-up"

header "(1) $CLOSED_PAIRS pairs, closed loop, plain ws"
pairs_rows closed-chatd closed-baseline

header "(2) $OPEN_PAIRS pairs x $OPEN_RATE msgs/s open loop ($(figure open-chatd .offered_per_sec) msgs/s offered), plain ws"
pairs_rows open-chatd open-baseline

header "(3) $IDLE_CONNECTIONS idle connections, held ${IDLE_HOLD}s"
row "plain ws: RSS per connection (KiB)" lower .rss_per_connection_kib idle-chatd idle-baseline
row "plain ws: server RSS before (MiB)" lower '.server_rss_baseline_kib / 1024' idle-chatd idle-baseline
row "plain ws: server RSS, all connected (MiB)" lower '.server_rss_kib / 1024' idle-chatd idle-baseline
row "plain ws: connections dropped" lower .dropped idle-chatd idle-baseline
row "TLS: RSS per connection (KiB; no TLS baseline)" lower .rss_per_connection_kib idle-tls-chatd -
row "TLS: connections dropped" lower .dropped idle-tls-chatd -

header "(4) $HANDSHAKES handshakes, $HANDSHAKE_CONCURRENCY at a time"
# The baseline has neither TLS nor JWT: its plain figure is shown beside
# chatd's TLS + JWT one for scale only.
row "TLS + JWT: server CPU ms per handshake" lower .server_cpu_ms_per_handshake connect-tls-chatd -
row "  (baseline plain, no auth: NOT comparable)" lower .server_cpu_ms_per_handshake connect-tls-chatd connect-plain-baseline
row "TLS + JWT: handshakes/s" higher .handshakes_per_sec connect-tls-chatd -
row "TLS + JWT: handshake latency p50 (ms)" lower .handshake_p50_ms connect-tls-chatd -
row "TLS + JWT: handshake latency p99 (ms)" lower .handshake_p99_ms connect-tls-chatd -
row "TLS + JWT: failed handshakes" lower '[.errors[]?] | add // 0' connect-tls-chatd -
row "plain, no auth: server CPU ms per handshake" lower .server_cpu_ms_per_handshake connect-plain-chatd connect-plain-baseline
row "plain, no auth: handshakes/s" higher .handshakes_per_sec connect-plain-chatd connect-plain-baseline
row "plain, no auth: handshake latency p50 (ms)" lower .handshake_p50_ms connect-plain-chatd connect-plain-baseline
row "plain, no auth: handshake latency p99 (ms)" lower .handshake_p99_ms connect-plain-chatd connect-plain-baseline
row "plain, no auth: failed handshakes" lower '[.errors[]?] | add // 0' connect-plain-chatd connect-plain-baseline

header "(5) store on one core, $STORE_MESSAGES messages over $STORE_ROOMS rooms (the baseline keeps history in memory: n/a)"
row "durable inserts/s (group commit)" higher .inserts_per_sec store-chatd -
row "messages per commit" - .messages_per_batch store-chatd -
row "export msgs/s" higher .export_per_sec store-chatd -
row "peak RSS (MiB)" lower '.peak_rss_kib / 1024' store-chatd -
