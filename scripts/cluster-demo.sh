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

# until SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds.
until_ok() {
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "$what: not after $seconds s"
}

# wait_for FILE LINE [COUNT]: until FILE holds LINE (a whole line) COUNT times.
has_line() { [[ $(grep -cxF -- "$2" "$1" 2>/dev/null) -ge ${3:-1} ]]; }
wait_for() { until_ok 10 "\"$2\" (x${3:-1}) in $(basename "$1")" has_line "$@"; }

# Free loopback ports: 3 NATS client ports and 3 route ports.
mapfile -t PORTS < <(python3 - <<'EOF'
import socket
held = []
for _ in range(6):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
    print(s.getsockname()[1])
EOF
)
ROUTES="nats-route://127.0.0.1:${PORTS[3]},nats-route://127.0.0.1:${PORTS[4]},nats-route://127.0.0.1:${PORTS[5]}"
URLS="nats://127.0.0.1:${PORTS[0]},nats://127.0.0.1:${PORTS[1]},nats://127.0.0.1:${PORTS[2]}"

# The engine: three JetStream servers, fsync on every write (with the
# default lazy fsync a power loss can lose acknowledged messages).
for i in 0 1 2; do
  name="nats$((i + 1))"
  mkdir -p "$WORK/$name"
  cat >"$WORK/$name.conf" <<EOF
server_name: $name
listen: 127.0.0.1:${PORTS[$i]}
jetstream { store_dir: "$WORK/$name", sync_interval: always }
cluster { name: chatd-demo, listen: 127.0.0.1:${PORTS[$((i + 3))]}, routes: [$ROUTES] }
EOF
  "$NATS_SERVER" -c "$WORK/$name.conf" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
done

# One token secret for the whole service.
head -c 48 /dev/urandom | base64 >"$WORK/jwt-secret"
chmod 600 "$WORK/jwt-secret"

# The three chatd nodes; each is ready once it has caught up with the log.
NODE_PORTS=()
for n in 1 2 3; do
  RUST_LOG=chatd=warn "$CHATD" run --listen 127.0.0.1:0 --data-dir "$WORK/node$n" \
    --jwt-secret "$WORK/jwt-secret" --cluster "$URLS" --node "node$n" \
    >"$WORK/node$n.log" 2>"$WORK/node$n.err" &
  PIDS+=("$!")
done
for n in 1 2 3; do
  until_ok 60 "node$n listening" grep -q '^Listening at ' "$WORK/node$n.log"
  NODE_PORTS+=("$(sed -n 's/^Listening at //p' "$WORK/node$n.log")")
  ready() { curl -sfk "https://127.0.0.1:$1/healthz"; }
  until_ok 60 "node$n ready (/healthz 200)" ready "${NODE_PORTS[$((n - 1))]}"
done

# chat USER PEER NODE: a `chatd chat` on node NODE, reading a fifo.
chat() {
  local user=$1 peer=$2 node=$3
  mkfifo "$WORK/$user.in"
  "$CHATD" chat --user "$user" --peer "$peer" --url "wss://127.0.0.1:${NODE_PORTS[$((node - 1))]}" \
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

for n in 1 2 3; do kill -TERM "${PIDS[$((n + 2))]}"; done
for n in 1 2 3; do wait "${PIDS[$((n + 2))]}" || fail "node$n did not exit cleanly"; done

for n in 1 2 3; do show "node$n" "$WORK/node$n.log"; done
show "Dummy-1 (node1)" "$WORK/Dummy-1.log"
show "Dummy-2 (node2)" "$WORK/Dummy-2.log"
show "operator" "$WORK/operator.log"
