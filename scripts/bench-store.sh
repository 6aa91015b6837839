#!/usr/bin/env bash
# Store benchmark: fills a temporary data directory with MESSAGES messages
# over ROOMS rooms (default 1,000,000 over 1,000) through the library's
# applier, lets the server settle it, then measures
#
#   bytes on disk per message (allocated blocks of chatd.redb)
#   chatd run: time from start to "Listening at", resident memory when idle
#   chatd export --all --out FILE             (server stopped: direct mode)
#   chatd export --all --out FILE             (through a running server)
#   chatd purge --all --before <now> --yes    (server stopped: direct mode)
#
# and prints wall time, messages/s and peak RSS (from /usr/bin/time -v) of
# each. Usage: scripts/bench-store.sh   (env: MESSAGES, ROOMS, CARGO_TARGET_DIR)
set -euo pipefail

cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-1000000}
ROOMS=${ROOMS:-1000}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

if [[ ! -x /usr/bin/time ]]; then
    echo "bench-store: /usr/bin/time is needed for peak RSS (apt-get install time)" >&2
    exit 1
fi

echo "== building (release)"
cargo build --release --bin chatd --example fill_store
CHATD="$TARGET_DIR/release/chatd"
FILL="$TARGET_DIR/release/examples/fill_store"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/chatd-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DATA="$WORK/data"

echo "== filling $MESSAGES messages over $ROOMS rooms"
"$FILL" "$DATA" "$MESSAGES" "$ROOMS"

# start_server: starts chatd run on $DATA in the background ($SERVER), waits
# for "Listening at" and sets $STARTUP to how long that took.
start_server() {
    local start
    start=$(date +%s.%N)
    "$CHATD" run --no-tls --no-auth --listen 127.0.0.1:0 --data-dir "$DATA" \
        > "$WORK/server.out" 2> "$WORK/server.err" &
    SERVER=$!
    for _ in $(seq 1 3000); do
        grep -q '^Listening at' "$WORK/server.out" && break
        kill -0 "$SERVER" 2> /dev/null || { cat "$WORK/server.err" >&2; exit 1; }
        sleep 0.01
    done
    STARTUP=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }')
}

echo "== chatd run on the filled store: startup, idle memory"
for run in 1 2 3; do
    start_server
    # Idle for a while: the applier folds what the fill left staged, then waits.
    sleep 5
    echo "run $run: ${STARTUP}s to 'Listening at'; idle RSS: $(awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$SERVER/status")"
    kill -TERM "$SERVER"
    wait "$SERVER"
done
blocks=$(( $(stat -c '%b' "$DATA/chatd.redb") * $(stat -c '%B' "$DATA/chatd.redb") ))
echo "store file: $(( blocks / 1048576 )) MiB allocated ($(du -h --apparent-size "$DATA/chatd.redb" | cut -f1) apparent), $(( blocks / MESSAGES )) bytes per message"

# timed LABEL COMMAND...: runs COMMAND under /usr/bin/time -v and reports.
timed() {
    local label=$1
    shift
    local start end
    start=$(date +%s.%N)
    /usr/bin/time -v "$@" 2> "$WORK/$label.time" > "$WORK/$label.out" || {
        cat "$WORK/$label.time" >&2
        exit 1
    }
    end=$(date +%s.%N)
    local rss
    rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$WORK/$label.time")
    awk -v label="$label" -v s="$start" -v e="$end" -v n="$MESSAGES" -v rss="$rss" 'BEGIN {
        t = e - s
        printf "%-8s %8.2f s  %10.0f messages/s  peak RSS %6.1f MiB\n", label, t, n / t, rss / 1024
    }'
}

echo "== export --all --out FILE"
timed export "$CHATD" export --all --out "$WORK/export.json" --data-dir "$DATA"
exported=$(( $(wc -l < "$WORK/export.json") - 2 ))
echo "export file: $(du -h "$WORK/export.json" | cut -f1), $exported messages"
if [[ $exported -ne $MESSAGES ]]; then
    echo "bench-store: exported $exported messages, expected $MESSAGES" >&2
    exit 1
fi

echo "== export --all --out FILE through a running server (admin socket)"
start_server
timed via-srv "$CHATD" export --all --out "$WORK/export-srv.json" --data-dir "$DATA"
echo "server peak RSS: $(awk '/VmHWM/ {printf "%.1f MiB", $2 / 1024}' "/proc/$SERVER/status")"
kill -TERM "$SERVER"
wait "$SERVER"
cmp -s "$WORK/export.json" "$WORK/export-srv.json" \
    || { echo "bench-store: the two exports differ" >&2; exit 1; }
rm -f "$WORK/export-srv.json"

echo "== purge --all --before now --yes"
timed purge "$CHATD" purge --all --before 0s --yes --data-dir "$DATA"
cat "$WORK/purge.out"
