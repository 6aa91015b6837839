#!/usr/bin/env bash
# The seed's story on a cluster: three NATS JetStream servers (the pinned
# nats-server from scripts/install-nats.sh) and three chatd nodes on
# loopback, Dummy-1 on node 1 and Dummy-2 on node 2 chatting with
# `chatd chat`, the operator asking node 3 who is online, and the three
# nodes' exports compared at the end. Then everything is stopped and each
# console printed.
#
# Steps wait for the line or state they depend on (polling, bounded), never
# for a fixed time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --quiet --bin chatd
CHATD="${CARGO_TARGET_DIR:-$PWD/target}/debug/chatd"
NATS_SERVER="${NATS_SERVER:-$(bash scripts/install-nats.sh)}"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  exec 3>&- 4>&- 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

show() { # show TITLE FILE: one console
  printf '\n===== %s =====\n' "$1"
  cat "$2"
}

fail() {
  echo "cluster-demo: $*" >&2
  for f in "$WORK"/*.log "$WORK"/*.err; do [[ -s $f ]] && show "$(basename "$f")" "$f" >&2; done
  exit 1
}

source scripts/lib/cluster.sh

# wait_for FILE LINE [COUNT]: until FILE holds LINE (a whole line) COUNT times.
has_line() { [[ $(grep -cxF -- "$2" "$1" 2>/dev/null) -ge ${3:-1} ]]; }
wait_for() { until_ok 10 "\"$2\" (x${3:-1}) in $(basename "$1")" has_line "$@"; }

start_engine

# One token secret for the whole service.
head -c 48 /dev/urandom | base64 >"$WORK/jwt-secret"
chmod 600 "$WORK/jwt-secret"

# The three chatd nodes; each is ready once it has caught up with the log.
for n in 1 2 3; do start_node "$n" --jwt-secret "$WORK/jwt-secret"; done

# chat USER PEER NODE: a `chatd chat` on node NODE, reading a fifo.
chat() {
  local user=$1 peer=$2 node=$3
  mkfifo "$WORK/$user.in"
  "$CHATD" chat --user "$user" --peer "$peer" --url "wss://127.0.0.1:${NODE_PORT[$node]}" \
    --token "$("$CHATD" token "$user" --jwt-secret "$WORK/jwt-secret")" \
    --data-dir "$WORK/node$node" \
    <"$WORK/$user.in" >"$WORK/$user.log" 2>"$WORK/$user.err" &
  PIDS+=("$!")
}

chat Dummy-1 Dummy-2 1
DUMMY1=$!
exec 3>"$WORK/Dummy-1.in"
wait_for "$WORK/Dummy-1.log" "online: [ 'Dummy-1' ]"
echo "Hello World! from Dummy-1 on node1" >&3
wait_for "$WORK/Dummy-1.log" "You : Hello World! from Dummy-1 on node1"

chat Dummy-2 Dummy-1 2
DUMMY2=$!
exec 4>"$WORK/Dummy-2.in"
wait_for "$WORK/Dummy-2.log" "Dummy-1 : Hello World! from Dummy-1 on node1"
wait_for "$WORK/Dummy-1.log" "online: [ 'Dummy-1', 'Dummy-2' ]"
echo "hello from Dummy-2 on node2" >&4
wait_for "$WORK/Dummy-1.log" "Dummy-2 : hello from Dummy-2 on node2"

# The operator asks node 3, where no one is connected.
: >"$WORK/operator.log"
operator() {
  local node=$1
  shift
  echo "\$ chatd $* --data-dir node$node" >>"$WORK/operator.log"
  "$CHATD" "$@" --data-dir "$WORK/node$node" >>"$WORK/operator.log" 2>&1 || fail "chatd $* on node$node failed"
}
operator 3 online

# Both leave; every node's copy of the history is the same.
exec 4>&-
wait "$DUMMY2" || fail "Dummy-2's chat failed"
exec 3>&-
wait "$DUMMY1" || fail "Dummy-1's chat failed"
same_exports() {
  for n in 1 2 3; do
    "$CHATD" export --all --data-dir "$WORK/node$n" >"$WORK/export$n.json" 2>/dev/null || return 1
  done
  cmp -s "$WORK/export1.json" "$WORK/export2.json" && cmp -s "$WORK/export1.json" "$WORK/export3.json"
}
until_ok 10 "the nodes' exports the same" same_exports
count="$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$WORK/export1.json")"
echo "\$ chatd export --all  (node1, node2 and node3 gave the same $count messages)" >>"$WORK/operator.log"
cat "$WORK/export3.json" >>"$WORK/operator.log"

for n in 1 2 3; do kill -TERM "${NODE_PID[$n]}"; done
for n in 1 2 3; do wait "${NODE_PID[$n]}" || fail "node$n did not exit cleanly"; done

for n in 1 2 3; do show "node$n" "$WORK/node$n.log"; done
show "Dummy-1 (node1)" "$WORK/Dummy-1.log"
show "Dummy-2 (node2)" "$WORK/Dummy-2.log"
show "operator" "$WORK/operator.log"
