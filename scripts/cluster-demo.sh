#!/usr/bin/env bash
# The seed's story on a cluster: builds chatd, installs the pinned
# nats-server (scripts/install-nats.sh), starts three NATS JetStream servers
# and three chatd nodes on loopback (free ports, temporary directories, one
# token secret for all), lets Dummy-1 on node 1 and Dummy-2 on node 2 chat
# with `chatd chat`, asks node 3 who is online and what was said, stops
# everything, and prints each console.
#
# Steps wait for the line they depend on (polling, bounded), never for a
# fixed time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --quiet --bin chatd
CHATD="${CARGO_TARGET_DIR:-$PWD/target}/debug/chatd"
NATS="${NATS_SERVER:-$(bash scripts/install-nats.sh)}"

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

# wait_for FILE LINE [COUNT]: until FILE holds LINE (a whole line) COUNT times.
wait_for() {
  local file=$1 line=$2 count=${3:-1}
  for _ in $(seq 400); do
    if [[ $(grep -cxF -- "$line" "$file" 2>/dev/null) -ge $count ]]; then return 0; fi
    sleep 0.05
  done
  fail "no \"$line\" (x$count) in $(basename "$file") after 20 s"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Three NATS servers, JetStream on, every write synced (`sync_interval:
# always`), routed to each other as one cluster.
CLIENT_PORTS=() ROUTE_PORTS=()
for i in 1 2 3; do
  CLIENT_PORTS+=("$(free_port)")
  ROUTE_PORTS+=("$(free_port)")
done
ROUTES=""
for p in "${ROUTE_PORTS[@]}"; do ROUTES+="nats-route://127.0.0.1:$p, "; done
URLS=""
for i in 0 1 2; do
  n=$((i + 1))
  cat >"$WORK/nats$n.conf" <<EOF
server_name: nats$n
listen: 127.0.0.1:${CLIENT_PORTS[$i]}
jetstream { store_dir: "$WORK/nats$n", sync_interval: always }
cluster { name: chatd-demo, listen: 127.0.0.1:${ROUTE_PORTS[$i]}, routes: [${ROUTES%, }] }
EOF
  "$NATS" -c "$WORK/nats$n.conf" >"$WORK/nats$n.err" 2>&1 &
  PIDS+=("$!")
  URLS+="nats://127.0.0.1:${CLIENT_PORTS[$i]},"
done
URLS="${URLS%,}"

# Three chatd nodes, TLS (each its own generated certificate) and auth (one
# secret for the service).
head -c 48 /dev/urandom | base64 >"$WORK/jwt-secret"
chmod 600 "$WORK/jwt-secret"
NODE_PIDS=() PORTS=()
for n in 1 2 3; do
  RUST_LOG=chatd=warn "$CHATD" run --listen 127.0.0.1:0 --data-dir "$WORK/node$n" \
    --jwt-secret "$WORK/jwt-secret" --cluster "$URLS" --node "node$n" \
    >"$WORK/node$n.log" 2>"$WORK/node$n.err" &
  NODE_PIDS+=("$!")
  PIDS+=("$!")
done
for n in 1 2 3; do
  for _ in $(seq 400); do
    grep -q '^Listening at ' "$WORK/node$n.log" 2>/dev/null && break
    kill -0 "${NODE_PIDS[$((n - 1))]}" 2>/dev/null || fail "node $n exited"
    sleep 0.05
  done
  port="$(sed -n 's/^Listening at //p' "$WORK/node$n.log")"
  [[ -n $port ]] || fail "node $n did not say where it listens"
  PORTS+=("$port")
  # Ready once it has caught up with the cluster's log.
  for _ in $(seq 400); do
    curl -sfk "https://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.05
  done
  curl -sfk "https://127.0.0.1:$port/healthz" >/dev/null || fail "node $n is not ready"
done

# chat USER PEER NODE: a `chatd chat` on node NODE, reading a fifo.
chat() {
  local user=$1 peer=$2 n=$3
  mkfifo "$WORK/$user.in"
  "$CHATD" chat --user "$user" --peer "$peer" --url "wss://127.0.0.1:${PORTS[$((n - 1))]}" \
    --ca "$WORK/node$n/tls/cert.pem" \
    --token "$("$CHATD" token "$user" --jwt-secret "$WORK/jwt-secret" --data-dir "$WORK/node$n")" \
    <"$WORK/$user.in" >"$WORK/$user.log" 2>"$WORK/$user.err" &
  PIDS+=("$!")
}

chat Dummy-1 Dummy-2 1
DUMMY1=$!
exec 3>"$WORK/Dummy-1.in"
wait_for "$WORK/Dummy-1.log" "online: [ 'Dummy-1' ]"
echo "Hello World! from Dummy-1" >&3
wait_for "$WORK/Dummy-1.log" "You : Hello World! from Dummy-1"

chat Dummy-2 Dummy-1 2
DUMMY2=$!
exec 4>"$WORK/Dummy-2.in"
wait_for "$WORK/Dummy-2.log" "online: [ 'Dummy-1', 'Dummy-2' ]"
wait_for "$WORK/Dummy-1.log" "online: [ 'Dummy-1', 'Dummy-2' ]"
echo "hello from Dummy-2" >&4
wait_for "$WORK/Dummy-1.log" "Dummy-2 : hello from Dummy-2"

# The operator's view, from the third node.
: >"$WORK/operator.log"
operator() {
  echo "\$ chatd $* (node 3)" >>"$WORK/operator.log"
  "$CHATD" "$@" --data-dir "$WORK/node3" >>"$WORK/operator.log" 2>&1 || fail "chatd $* failed"
}
operator online

exec 4>&-
wait "$DUMMY2" || fail "Dummy-2's chat failed"
wait_for "$WORK/Dummy-1.log" "online: [ 'Dummy-1' ]" 2
exec 3>&-
wait "$DUMMY1" || fail "Dummy-1's chat failed"

operator export --room dm:Dummy-1_Dummy-2

for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid"; done
for pid in "${NODE_PIDS[@]}"; do wait "$pid" || fail "a node did not exit cleanly"; done

show "node 1" "$WORK/node1.log"
show "node 2" "$WORK/node2.log"
show "node 3" "$WORK/node3.log"
show "Dummy-1 (on node 1)" "$WORK/Dummy-1.log"
show "Dummy-2 (on node 2)" "$WORK/Dummy-2.log"
show "operator" "$WORK/operator.log"
