#!/usr/bin/env bash
# The seed's story, end to end, on a fresh checkout: builds chatd, starts a
# server on a temporary data directory (loopback, a free port), lets Dummy-1
# and Dummy-2 chat with `chatd chat` through pipes, asks the operator
# commands what happened (when this build has them), stops the server with
# SIGTERM, and prints each console.
#
# Steps wait for the line they depend on (polling a log, bounded), never for
# a fixed time.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --quiet --bin chatd
CHATD="${CARGO_TARGET_DIR:-$PWD/target}/debug/chatd"

WORK="$(mktemp -d)"
DATA="$WORK/data"
PIDS=()
cleanup() {
  exec 3>&- 4>&- 2>/dev/null || true
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

show() { # show TITLE FILE: one console
  printf '\n===== %s =====\n' "$1"
  cat "$2"
}

fail() {
  echo "demo: $*" >&2
  for f in "$WORK"/*.log "$WORK"/*.err; do [[ -s $f ]] && show "$(basename "$f")" "$f" >&2; done
  exit 1
}

# wait_for FILE LINE [COUNT]: until FILE holds LINE (a whole line) COUNT times.
wait_for() {
  local file=$1 line=$2 count=${3:-1}
  for _ in $(seq 200); do
    if [[ $(grep -cxF -- "$line" "$file" 2>/dev/null) -ge $count ]]; then return 0; fi
    sleep 0.05
  done
  fail "no \"$line\" (x$count) in $(basename "$file") after 10 s"
}

# The server: TLS with the self-signed certificate it generates, auth on.
RUST_LOG=chatd=warn "$CHATD" run --listen 127.0.0.1:0 --data-dir "$DATA" \
  >"$WORK/server.log" 2>"$WORK/server.err" &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 200); do
  grep -q '^Listening at ' "$WORK/server.log" 2>/dev/null && break
  kill -0 "$SERVER" 2>/dev/null || fail "the server exited"
  sleep 0.05
done
PORT="$(sed -n 's/^Listening at //p' "$WORK/server.log")"
[[ -n $PORT ]] || fail "the server did not say where it listens"
URL="wss://127.0.0.1:$PORT"

# chat USER PEER FD: a `chatd chat` reading the fifo that FD writes to. With
# --data-dir it mints its own token and trusts the generated certificate.
chat() {
  local user=$1 peer=$2
  mkfifo "$WORK/$user.in"
  "$CHATD" chat --user "$user" --peer "$peer" --url "$URL" --data-dir "$DATA" \
    <"$WORK/$user.in" >"$WORK/$user.log" 2>"$WORK/$user.err" &
  PIDS+=("$!")
}

chat Dummy-1 Dummy-2
DUMMY1=$!
exec 3>"$WORK/Dummy-1.in"
wait_for "$WORK/Dummy-1.log" "online: [ 'Dummy-1' ]"
echo "Hello World! from Dummy-1" >&3
wait_for "$WORK/Dummy-1.log" "You : Hello World! from Dummy-1"

chat Dummy-2 Dummy-1
DUMMY2=$!
exec 4>"$WORK/Dummy-2.in"
wait_for "$WORK/Dummy-2.log" "online: [ 'Dummy-1', 'Dummy-2' ]"
wait_for "$WORK/Dummy-1.log" "online: [ 'Dummy-1', 'Dummy-2' ]"
echo "hello from Dummy-2" >&4
wait_for "$WORK/Dummy-1.log" "Dummy-2 : hello from Dummy-2"
echo "   " >&4
wait_for "$WORK/Dummy-2.log" "You : Message is not accepted (empty)"

# The operator's view, mid-conversation and at the end.
: >"$WORK/operator.log"
operator() {
  echo "\$ chatd $*" >>"$WORK/operator.log"
  "$CHATD" "$@" --data-dir "$DATA" >>"$WORK/operator.log" 2>&1 || fail "chatd $* failed"
}
operator online

# Dummy-2 leaves (end of its input), then Dummy-1.
exec 4>&-
wait "$DUMMY2" || fail "Dummy-2's chat failed"
wait_for "$WORK/Dummy-1.log" "online: [ 'Dummy-1' ]" 2
exec 3>&-
wait "$DUMMY1" || fail "Dummy-1's chat failed"
wait_for "$WORK/server.log" "No one is Online"

operator export --room dm:Dummy-1_Dummy-2

kill -TERM "$SERVER"
wait "$SERVER" || fail "the server did not exit cleanly"

show "server" "$WORK/server.log"
show "Dummy-1" "$WORK/Dummy-1.log"
show "Dummy-2" "$WORK/Dummy-2.log"
show "operator" "$WORK/operator.log"
