# Sourced by scripts/cluster-demo.sh and scripts/bench-cluster.sh: a
# three-server NATS JetStream cluster and chatd nodes on loopback, in $WORK.
# The caller defines fail MESSAGE (exits) and PIDS (an array), and sets
# CHATD and NATS_SERVER.

# until_ok SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it
# succeeds, or fails with WHAT.
until_ok() {
  local seconds=$1 what=$2
  shift 2
  for _ in $(seq $((seconds * 10))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "$what: not after $seconds s"
}

# free_ports N: N loopback ports nothing listens on, one per line.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
held = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
    print(s.getsockname()[1])
PY
}

# start_engine: three JetStream servers with fsync on every write (with the
# default lazy fsync a power loss can lose acknowledged messages); sets
# NATS_URLS to their client URLs, comma-separated.
start_engine() {
  local ports routes i name
  mapfile -t ports < <(free_ports 6)
  routes="nats-route://127.0.0.1:${ports[3]},nats-route://127.0.0.1:${ports[4]},nats-route://127.0.0.1:${ports[5]}"
  NATS_URLS="nats://127.0.0.1:${ports[0]},nats://127.0.0.1:${ports[1]},nats://127.0.0.1:${ports[2]}"
  for i in 0 1 2; do
    name="nats$((i + 1))"
    mkdir -p "$WORK/$name"
    cat >"$WORK/$name.conf" <<CONF
server_name: $name
listen: 127.0.0.1:${ports[$i]}
jetstream { store_dir: "$WORK/$name", sync_interval: always }
cluster { name: chatd, listen: 127.0.0.1:${ports[$((i + 3))]}, routes: [$routes] }
CONF
    ${NATS_PREFIX:-} "$NATS_SERVER" -c "$WORK/$name.conf" >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
  done
}

# start_node N ARGS...: chatd node N (data in $WORK/nodeN, console in
# $WORK/nodeN.log) on the engine, with ARGS; waits until it listens and has
# caught up (/healthz 200) and sets NODE_PORT[N]. $CHATD_PREFIX (e.g.
# `taskset -c 0`) goes before the command.
declare -A NODE_PORT NODE_PID
start_node() {
  local n=$1 scheme port
  shift
  RUST_LOG=chatd=warn ${CHATD_PREFIX:-} "$CHATD" run --listen 127.0.0.1:0 --data-dir "$WORK/node$n" \
    --cluster "$NATS_URLS" --node "node$n" "$@" \
    >"$WORK/node$n.log" 2>"$WORK/node$n.err" &
  NODE_PID[$n]=$!
  PIDS+=("$!")
  until_ok 60 "node$n listening" grep -q '^Listening at ' "$WORK/node$n.log"
  port="$(sed -n 's/^Listening at //p' "$WORK/node$n.log")"
  NODE_PORT[$n]=$port
  scheme=https
  [[ " $* " == *" --no-tls "* ]] && scheme=http
  until_ok 60 "node$n ready (/healthz 200)" curl -sfk "$scheme://127.0.0.1:$port/healthz"
}
