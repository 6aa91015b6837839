#!/usr/bin/env bash
# chatd against two baselines doing the same contract's events with history
# in memory: the stock Node.js Socket.IO server (scripts/baseline) and
# socketioxide, the fastest Rust Socket.IO server
# (scripts/baseline/socketioxide). Every scenario runs RUNS times, the
# servers alternating within each run (the order rotates from run to run),
# so noise of the machine hits all of them alike; every figure is printed
# per run and as median [min-max] over the runs, and so are the ratios
# chatd/socketioxide and chatd/node, each taken within one run.
#
# Every server is fresh, on a fresh data directory, pinned to one core
# (taskset -c $SERVER_CORE); the load generator, `chatd bench`, runs pinned
# to the other ($BENCH_CORE). chatd runs with --rate-limit 0 and raised
# connection limits, durable as always (a message is acked after its
# commit's fsync), --no-tls and --no-auth where the scenario is plain.
#
#   closed   100 pairs, closed loop with ack, plain ws: server CPU per 100k
#            delivered messages, latency; chatd also over wss with tokens
#            (`chatd-wss`, its ratio taken against the plain baselines,
#            which have neither)
#   open     1000 pairs x 20 msgs/s open loop (40k msgs/s offered), plain
#            ws: end-to-end latency, losses, how busy the server's core was
#   idle     10,000 idle connections: RSS per connection, plain ws (all)
#            and TLS (`chatd-tls`)
#   connect  handshakes: TLS + JWT (chatd), plain without auth (all)
#   store    chatd bench store: durable inserts/s, export/s, bytes per
#            message (chatd only: the baselines keep history in memory)
#
# Beside each pairs figure the report shows what tells the server's cost
# from the machine's noise: the server's user/system split and context
# switches, how busy its core was with other processes, the hypervisor's
# steal time, how fast the core ran a fixed loop just before, and for chatd
# its group commits (messages per fsync'd commit, commit time) from its
# metrics.
#
# Usage: scripts/bench.sh
# Env: RUNS (5) SCENARIOS ("closed open idle connect store") SERVERS (all:
# "chatd node socketioxide chatd-wss chatd-tls"; others are skipped) DURATION (10)
# WARMUP (2) CLOSED_PAIRS (100) OPEN_PAIRS (1000) OPEN_RATE (20)
# IDLE_CONNECTIONS (10000) IDLE_HOLD (5) HANDSHAKES (2000)
# HANDSHAKE_CONCURRENCY (16) STORE_MESSAGES (200000) STORE_ROOMS (1000)
# SERVER_CORE (0) BENCH_CORE (1) CARGO_TARGET_DIR; KEEP=DIR keeps every
# run's JSON report (and chatd's metrics) in DIR.
set -euo pipefail

cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
SCENARIOS=${SCENARIOS:-closed open idle connect store}
SERVERS=${SERVERS:-chatd node socketioxide chatd-wss chatd-tls}
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
KEEP=${KEEP:-}
# Above every scenario's connection count: the limits are not what is measured.
MAX_CONNECTIONS=$((IDLE_CONNECTIONS + HANDSHAKES + 2 * OPEN_PAIRS + 1000))
SX_DIR=scripts/baseline/socketioxide

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "bench: RUNS must be a positive number" >&2; exit 1; }
for tool in taskset jq node npm curl cargo; do
    command -v "$tool" > /dev/null || { echo "bench: $tool is needed" >&2; exit 1; }
done

echo "== building chatd (release)" >&2
cargo build --release --bin chatd >&2
CHATD="$TARGET_DIR/release/chatd"
echo "== building the socketioxide baseline (release, its own lock file)" >&2
cargo build --release --locked --manifest-path "$SX_DIR/Cargo.toml" --target-dir "$SX_DIR/target" >&2
SX="$SX_DIR/target/release/chatd-baseline-socketioxide"
if [[ ! -d scripts/baseline/node_modules ]]; then
    echo "== installing the Node baseline's dependencies (npm ci)" >&2
    (cd scripts/baseline && npm ci --silent) >&2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chatd-bench.XXXXXX")
STARTED=()
cleanup() {
    # Only what this script started, by pid.
    for pid in "${STARTED[@]}"; do
        kill -KILL "$pid" 2> /dev/null || true
    done
    if [[ -n $KEEP ]]; then
        mkdir -p "$KEEP"
        cp "$WORK"/*.json "$WORK"/*.metrics "$KEEP"/ 2> /dev/null || true
    fi
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
        # The file may not exist yet: the shell creates it as the server starts.
        PORT=$(sed -n 's/^Listening at \([0-9]*\)$/\1/p' "$WORK/$name.out" 2> /dev/null || true)
        [[ -n $PORT ]] && return 0
        kill -0 "$PID" 2> /dev/null || break
        sleep 0.1
    done
    echo "bench: $name did not start:" >&2
    cat "$WORK/$name.err" >&2
    exit 1
}

# start_server SERVER NAME: starts one of the servers compared, and sets
# URL and BENCH_ARGS (how `chatd bench` reaches it) besides PID and PORT.
#   chatd      plain ws, no auth      chatd-tls  wss, no auth
#   chatd-wss  wss with tokens        node, socketioxide  plain ws, no auth
start_server() {
    local server=$1 name=$2 data="$WORK/$2.data"
    local chatd=("$CHATD" run --listen 127.0.0.1:0 --data-dir "$data" --rate-limit 0
        --max-connections "$MAX_CONNECTIONS" --max-connections-per-ip "$MAX_CONNECTIONS"
        --metrics-listen 127.0.0.1:0)
    case $server in
        chatd)
            start "$name" "${chatd[@]}" --no-tls --no-auth
            URL="ws://127.0.0.1:$PORT" BENCH_ARGS=(--no-auth) ;;
        chatd-tls)
            start "$name" "${chatd[@]}" --no-auth
            URL="wss://127.0.0.1:$PORT" BENCH_ARGS=(--no-auth --ca "$data/tls/cert.pem") ;;
        chatd-wss)
            start "$name" "${chatd[@]}"
            URL="wss://127.0.0.1:$PORT"
            BENCH_ARGS=(--token-secret "$data/jwt-secret" --ca "$data/tls/cert.pem") ;;
        node)
            start "$name" node scripts/baseline/server.mjs --port 0
            URL="ws://127.0.0.1:$PORT" BENCH_ARGS=(--no-auth) ;;
        socketioxide)
            start "$name" "$SX" --port 0
            URL="ws://127.0.0.1:$PORT" BENCH_ARGS=(--no-auth) ;;
        *) echo "bench: unknown server $server" >&2; exit 1 ;;
    esac
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

# scrape NAME: chatd's metrics into $WORK/NAME.metrics (nothing for the
# baselines, which have none).
scrape() {
    local url
    url=$(grep -aho 'http://127\.0\.0\.1:[0-9]*/metrics' "$WORK/$1.out" "$WORK/$1.err" | head -1) || true
    [[ -n $url ]] && curl -sf "$url" > "$WORK/$1.metrics" || true
}

# metric NAME SERIES: one value of a scraped series, empty if absent.
metric() {
    awk -v series="$2" '$1 == series { print $2 }' "$WORK/$1.metrics" 2> /dev/null || true
}

# bench NAME SCENARIO ARGS...: `chatd bench SCENARIO ARGS... --json` on the
# bench core against the running server, into $WORK/NAME.json (`{}` if it
# failed, so the tables show n/a); for chatd, its group commits go in too.
bench() {
    local name=$1
    shift
    echo "   $name" >&2
    if ! taskset -c "$BENCH_CORE" "$CHATD" bench "$@" --json \
        > "$WORK/$name.json" 2> "$WORK/$name.log"; then
        echo "bench: $name failed:" >&2
        tail -5 "$WORK/$name.log" >&2
        echo '{}' > "$WORK/$name.json"
    fi
    jq --argjson ms "${CALIBRATION:-null}" '. + {core_loop_ms: $ms}' "$WORK/$name.json" \
        > "$WORK/$name.tmp" && mv "$WORK/$name.tmp" "$WORK/$name.json"
    scrape "$name"
    local batches messages commit_s
    batches=$(metric "$name" chatd_commit_batch_messages_count)
    messages=$(metric "$name" chatd_commit_batch_messages_sum)
    commit_s=$(metric "$name" chatd_commit_duration_seconds_sum)
    if [[ -n $batches && $batches != 0 ]]; then
        jq --argjson b "$batches" --argjson m "$messages" --argjson s "$commit_s" \
            '. + {commits: $b, messages_per_commit: ($m / $b), commit_mean_ms: ($s * 1000 / $b)}' \
            "$WORK/$name.json" > "$WORK/$name.tmp" && mv "$WORK/$name.tmp" "$WORK/$name.json"
    fi
}

# calibrate: CPU milliseconds a fixed loop takes on the server core, into
# CALIBRATION. Taken before each server starts: when it moves, the core got
# slower or faster (a busy hyperthread sibling, the host's clock), not the
# server.
calibrate() {
    CALIBRATION=$(taskset -c "$SERVER_CORE" node -e '
        const start = process.cpuUsage();
        let x = 0;
        for (let i = 0; i < 1e8; i++) x += i & 7;
        const spent = process.cpuUsage(start);
        console.log(x > 0 ? (spent.user + spent.system) / 1000 : 0);')
}

# rotate N WORDS...: WORDS starting at the N-th (0-based), wrapping.
rotate() {
    local n=$1
    shift
    local words=("$@")
    local count=${#words[@]} i
    for ((i = 0; i < count; i++)); do
        printf '%s ' "${words[(n + i) % count]}"
    done
}

# scenario SCEN "SERVERS" RUNS BENCH_SCENARIO ARGS...: RUNS runs, each one
# of every server in rotating order, each on a fresh server.
scenario() {
    local scen=$1 servers=$2 runs=$3
    shift 3
    local run server
    servers=$(for server in $servers; do
        if [[ " $SERVERS " == *" $server "* ]]; then printf '%s ' "$server"; fi
    done)
    for ((run = 1; run <= runs; run++)); do
        echo "== $scen, run $run of $runs" >&2
        # shellcheck disable=SC2086 # a list of words
        for server in $(rotate $((run - 1)) $servers); do
            calibrate
            start_server "$server" "$scen-$server-$run"
            bench "$scen-$server-$run" "$1" --url "$URL" --server-pid "$PID" \
                "${BENCH_ARGS[@]}" "${@:2}"
            stop
        done
    done
}

# figure NAME EXPR: a jq expression over NAME's report, `n/a` if absent.
figure() {
    jq -r "($2) // \"n/a\"" "$WORK/$1.json" 2> /dev/null || echo n/a
}

# table LABEL SCEN "SERVERS" RUNS "RATIOS" EXPR: one figure of a scenario,
# a line per run (a column per server, then each ratio A/B of RATIOS taken
# within the run), then its median and range over the runs.
table() {
    local label=$1 scen=$2 servers=$3 runs=$4 ratios=$5 expr=$6 run server
    for ((run = 1; run <= runs; run++)); do
        for server in $servers; do
            printf '%s %s %s\n' "$run" "$server" "$(figure "$scen-$server-$run" "$expr")"
        done
    done | awk -v label="$label" -v servers="$servers" -v ratios="$ratios" -v runs="$runs" '
        function num(v) { return v ~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/ }
        function show(v,    x) {
            if (!num(v)) return v
            x = v + 0
            if (x == int(x) && (x >= 100 || x == 0)) return sprintf("%d", x)
            return sprintf(x < 10 ? "%.3f" : (x < 1000 ? "%.1f" : "%.0f"), x)
        }
        # median and range of column c over the runs, into med and rng
        function stats(c,    n, i, j, t, xs) {
            n = 0
            for (i = 1; i <= runs; i++) if (num(cell[i, c])) xs[++n] = cell[i, c] + 0
            for (i = 2; i <= n; i++) for (j = i; j > 1 && xs[j - 1] > xs[j]; j--) {
                t = xs[j]; xs[j] = xs[j - 1]; xs[j - 1] = t
            }
            if (n == 0) { med = "n/a"; rng = "n/a"; return }
            med = n % 2 ? xs[(n + 1) / 2] : (xs[n / 2] + xs[n / 2 + 1]) / 2
            rng = show(xs[1]) "-" show(xs[n])
        }
        { value[$1, $2] = $3 }
        END {
            ns = split(servers, name, " ")
            nr = split(ratios, ratio, " ")
            columns = ns + nr
            for (c = 1; c <= ns; c++) head[c] = name[c]
            for (c = 1; c <= nr; c++) head[ns + c] = ratio[c]
            for (i = 1; i <= runs; i++) {
                for (c = 1; c <= ns; c++) cell[i, c] = value[i, name[c]]
                for (c = 1; c <= nr; c++) {
                    split(ratio[c], ab, "/")
                    a = value[i, ab[1]]; b = value[i, ab[2]]
                    cell[i, ns + c] = (num(a) && num(b) && b + 0 != 0) ? sprintf("%.3f", a / b) : "n/a"
                }
            }
            for (c = 1; c <= columns; c++) width[c] = length(head[c]) > 12 ? length(head[c]) : 12
            printf "  %s\n    %-7s", label, "run"
            for (c = 1; c <= columns; c++) printf " %*s", width[c], head[c]
            printf "\n"
            for (i = 1; i <= runs; i++) {
                printf "    %-7s", i
                for (c = 1; c <= columns; c++) printf " %*s", width[c], show(cell[i, c])
                printf "\n"
            }
            printf "    %-7s", "median"
            for (c = 1; c <= columns; c++) { stats(c); printf " %*s", width[c], show(med) }
            printf "\n    %-7s", "range"
            for (c = 1; c <= columns; c++) { stats(c); printf " %*s", width[c], rng }
            printf "\n"
        }'
}

wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }

PAIRS_ARGS=(--duration "$DURATION" --warmup "$WARMUP")
CLOSED_SERVERS="chatd node socketioxide chatd-wss"
CLOSED_RATIOS="chatd/socketioxide chatd/node chatd-wss/socketioxide"
OPEN_SERVERS="chatd node socketioxide"
OPEN_RATIOS="chatd/socketioxide chatd/node"
IDLE_SERVERS="chatd node socketioxide chatd-tls"
IDLE_RATIOS="chatd/socketioxide chatd/node"
CONNECT_SERVERS="chatd node socketioxide chatd-wss"

wants closed && scenario closed "$CLOSED_SERVERS" "$RUNS" pairs \
    --pairs "$CLOSED_PAIRS" --closed-loop "${PAIRS_ARGS[@]}"
wants open && scenario open "$OPEN_SERVERS" "$RUNS" pairs \
    --pairs "$OPEN_PAIRS" --rate "$OPEN_RATE" "${PAIRS_ARGS[@]}"
wants idle && scenario idle "$IDLE_SERVERS" "$RUNS" idle \
    --connections "$IDLE_CONNECTIONS" --duration "$IDLE_HOLD"
wants connect && scenario connect "$CONNECT_SERVERS" 1 connect \
    --connections "$HANDSHAKES" --concurrency "$HANDSHAKE_CONCURRENCY"
if wants store; then
    echo "== store: $STORE_MESSAGES messages over $STORE_ROOMS rooms" >&2
    echo "   store-chatd-1" >&2
    taskset -c "$SERVER_CORE" "$CHATD" bench store --messages "$STORE_MESSAGES" \
        --rooms "$STORE_ROOMS" --json > "$WORK/store-chatd-1.json" 2> "$WORK/store.log" ||
        { tail -5 "$WORK/store.log" >&2; echo '{}' > "$WORK/store-chatd-1.json"; }
fi

cpu=$(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)
echo "chatd $(git describe --always --dirty); Node $(node --version) with socket.io $(jq -r .version scripts/baseline/node_modules/socket.io/package.json); socketioxide $(awk '/^name = "socketioxide"$/ { getline; gsub(/[^0-9.]/, ""); print }' "$SX_DIR/Cargo.lock")"
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores ($cpu); servers on core $SERVER_CORE, load generator on core $BENCH_CORE"
echo "$RUNS runs, the servers alternating within each; pairs measured ${DURATION}s after ${WARMUP}s of warm-up; ratios taken within each run"

if wants closed; then
    printf "\n(1) %s pairs, closed loop with ack; plain ws, chatd-wss: TLS + JWT (durable: acked after fsync)\n" "$CLOSED_PAIRS"
    t() { table "$1" closed "$CLOSED_SERVERS" "$RUNS" "${3-$CLOSED_RATIOS}" "$2"; }
    t "server CPU s per 100k delivered (lower is better)" .server_cpu_s_per_100k_delivered
    t "delivered msgs/s" .delivered_per_sec
    t "end-to-end latency p50 (ms)" .e2e_p50_ms
    t "end-to-end latency p99 (ms)" .e2e_p99_ms
    t "messages lost (acked, never delivered)" .lost ""
    t "server user CPU s" .server_user_s ""
    t "server system CPU s" .server_system_s ""
    t "server voluntary context switches" .server_voluntary_switches ""
    t "server core: busy with other processes (%)" .server_core_others_percent ""
    t "server core: stolen by the hypervisor (%)" .server_core_steal_percent ""
    t "load generator CPU (%; 100 = saturated)" .bench_cpu_percent ""
    t "server core speed: CPU ms of a fixed loop just before (lower = faster)" .core_loop_ms ""
    table "chatd: messages per commit (one fsync each)" closed "chatd chatd-wss" "$RUNS" "" .messages_per_commit
    table "chatd: mean commit time (ms)" closed "chatd chatd-wss" "$RUNS" "" .commit_mean_ms
fi

if wants open; then
    printf "\n(2) %s pairs x %s msgs/s open loop (%s msgs/s offered), plain ws\n" \
        "$OPEN_PAIRS" "$OPEN_RATE" "$(figure open-chatd-1 .offered_per_sec)"
    t() { table "$1" open "$OPEN_SERVERS" "$RUNS" "${3-$OPEN_RATIOS}" "$2"; }
    t "end-to-end latency p50 (ms)" .e2e_p50_ms
    t "end-to-end latency p99 (ms)" .e2e_p99_ms
    t "delivered msgs/s" .delivered_per_sec
    t "messages lost (acked, never delivered)" .lost ""
    t "refusals + errors" '([.refusals[]?, .errors[]?] | add) // 0' ""
    t "server CPU busy (% of its core)" .server_cpu_percent
    t "server CPU s per 100k delivered" .server_cpu_s_per_100k_delivered
    t "server core: busy with other processes (%)" .server_core_others_percent ""
    t "server core: stolen by the hypervisor (%)" .server_core_steal_percent ""
    t "load generator CPU (%; 100 = saturated)" .bench_cpu_percent ""
    t "server core speed: CPU ms of a fixed loop just before (lower = faster)" .core_loop_ms ""
    table "chatd: messages per commit (one fsync each)" open chatd "$RUNS" "" .messages_per_commit
fi

if wants idle; then
    printf "\n(3) %s idle connections, held %ss; chatd-tls: wss\n" "$IDLE_CONNECTIONS" "$IDLE_HOLD"
    t() { table "$1" idle "$IDLE_SERVERS" "$RUNS" "${3-$IDLE_RATIOS}" "$2"; }
    t "RSS per connection (KiB)" .rss_per_connection_kib
    t "server RSS before connecting (MiB)" '.server_rss_baseline_kib / 1024' ""
    t "server RSS, all connected (MiB)" '.server_rss_kib / 1024' ""
    t "connections dropped" .dropped ""
fi

if wants connect; then
    printf "\n(4) %s handshakes, %s at a time; chatd-wss: TLS + JWT, the others plain without auth\n" \
        "$HANDSHAKES" "$HANDSHAKE_CONCURRENCY"
    t() { table "$1" connect "$CONNECT_SERVERS" 1 "chatd/socketioxide chatd/node" "$2"; }
    t "server CPU ms per handshake" .server_cpu_ms_per_handshake
    t "handshakes/s" .handshakes_per_sec
    t "handshake latency p50 (ms)" .handshake_p50_ms
    t "handshake latency p99 (ms)" .handshake_p99_ms
    t "failed handshakes" '[.errors[]?] | add // 0'
fi

if wants store; then
    printf "\n(5) store on one core, %s messages over %s rooms (the baselines keep history in memory)\n" \
        "$STORE_MESSAGES" "$STORE_ROOMS"
    t() { table "$1" store chatd 1 "" "$2"; }
    t "durable inserts/s (group commit)" .inserts_per_sec
    t "messages per commit" .messages_per_batch
    t "bytes on disk per message (allocated)" .bytes_per_message
    t "export msgs/s" .export_per_sec
    t "peak RSS (MiB)" '.peak_rss_kib / 1024'
fi
