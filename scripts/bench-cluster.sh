#!/usr/bin/env bash
# chatd in cluster mode against one node, in the same run: three NATS
# JetStream servers and three chatd nodes on loopback (all six processes on
# this machine), and beside them one chatd running alone. `chatd bench pairs`
# runs against each in turn, RUNS times alternating, open loop at RATE
# messages per second per side; on the cluster a pair's two users are on
# different nodes (--url once per node). Prints each run and the median and
# range of delivered msgs/s and end-to-end / ack p50 and p99.
#
#   scripts/bench-cluster.sh                 # 125 pairs x 20 msgs/s = 5,000 msgs/s offered
#   RUNS=5 PAIRS=250 RATE=20 DURATION=15 scripts/bench-cluster.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS="${RUNS:-3}"
PAIRS="${PAIRS:-125}"
RATE="${RATE:-20}"
DURATION="${DURATION:-10}"

command -v jq >/dev/null || { echo "bench-cluster: jq is needed (apt-get install jq)" >&2; exit 1; }
cargo build --quiet --release --bin chatd
CHATD="${CARGO_TARGET_DIR:-$PWD/target}/release/chatd"
NATS_SERVER="${NATS_SERVER:-$(bash scripts/install-nats.sh)}"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() {
  echo "bench-cluster: $*" >&2
  for f in "$WORK"/*.err; do [[ -s $f ]] && { echo "--- $f" >&2; tail -20 "$f" >&2; }; done
  exit 1
}
source scripts/lib/cluster.sh

SERVER_ARGS=(--no-tls --no-auth --rate-limit 0)
start_engine
for n in 1 2 3; do start_node "$n" "${SERVER_ARGS[@]}"; done
CLUSTER_URLS=()
for n in 1 2 3; do CLUSTER_URLS+=(--url "ws://127.0.0.1:${NODE_PORT[$n]}"); done

# The single node, outside the cluster.
RUST_LOG=chatd=warn "$CHATD" run --listen 127.0.0.1:0 --data-dir "$WORK/alone" "${SERVER_ARGS[@]}" \
  >"$WORK/alone.log" 2>"$WORK/alone.err" &
PIDS+=("$!")
until_ok 30 "the single node listening" grep -q '^Listening at ' "$WORK/alone.log"
ALONE_URL="ws://127.0.0.1:$(sed -n 's/^Listening at //p' "$WORK/alone.log")"

FIELDS='[.delivered_per_sec, .e2e_p50_ms, .e2e_p99_ms, .ack_p50_ms, .ack_p99_ms, .lost, .duplicates] | @tsv'
bench() { # bench NAME URL-ARGS...: one run, its figures appended to $WORK/NAME.tsv
  local name=$1
  shift
  "$CHATD" bench pairs "$@" --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" --no-auth --json \
    >"$WORK/run.json" 2>"$WORK/bench.err" || fail "chatd bench pairs against $name failed"
  jq -r "$FIELDS" "$WORK/run.json" | tee -a "$WORK/$name.tsv" | sed "s/^/$name\t/"
}

echo "offered: $PAIRS pairs x 2 sides x $RATE msgs/s = $((PAIRS * 2 * RATE)) msgs/s, $DURATION s measured, $RUNS runs"
printf 'server\tdelivered/s\te2e p50\te2e p99\tack p50\tack p99\tlost\tduplicates\n'
for run in $(seq "$RUNS"); do
  bench cluster "${CLUSTER_URLS[@]}"
  bench alone --url "$ALONE_URL"
done

summary() { # summary NAME: median [min-max] of each column
  python3 - "$WORK/$1.tsv" "$1" <<'PY'
import statistics, sys
rows = [[float(x) for x in line.split("\t")] for line in open(sys.argv[1]) if line.strip()]
names = ["delivered/s", "e2e p50 ms", "e2e p99 ms", "ack p50 ms", "ack p99 ms", "lost", "duplicates"]
parts = []
for i, name in enumerate(names):
    col = [r[i] for r in rows]
    parts.append(f"{name} {statistics.median(col):.1f} [{min(col):.1f}-{max(col):.1f}]")
print(f"{sys.argv[2]}: " + ", ".join(parts))
PY
}
echo
summary cluster
summary alone
