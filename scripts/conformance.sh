#!/usr/bin/env bash
# Run the official Engine.IO v4 and Socket.IO v5 protocol test suites against
# chatd's conformance server (`cargo run --example conformance`).
#
# Usage:
#   scripts/conformance.sh [options] ENGINEIO_PROTOCOL_CHECKOUT SOCKETIO_PROTOCOL_CHECKOUT
#
# The two arguments are local clones (or extracts) of
#   https://github.com/socketio/engine.io-protocol
#   https://github.com/socketio/socket.io-protocol
# Either the repository root or its test-suite/ folder may be given. The
# checkouts are never modified: each test-suite/ folder is copied to a
# temporary directory, `npm ci` (or `npm install` without a lockfile) runs
# there, then the suite's own `npm test` (mocha test-suite.js).
#
# Both suites hard-code `http://localhost:3000` (the port is read from
# test-suite.js). The conformance server is started ONCE and must serve, on
# 127.0.0.1:<port>, plain HTTP + WebSocket:
#   /engine.io/  a bare Engine.IO v4 echo server   (engine.io-protocol suite)
#   /socket.io/  the Socket.IO v5 reference setup  (socket.io-protocol suite)
# both with pingInterval 300, pingTimeout 200, maxPayload 1000000 (and, for
# Socket.IO, connectTimeout 1000). It is started as
#   <conformance example binary> --port <port> $CONFORMANCE_SERVER_ARGS
#
# Options (each has an environment-variable equivalent):
#   --transport all|websocket|polling|upgrade   CONFORMANCE_TRANSPORT (default all)
#       websocket: only WebSocket-only cases (mocha --grep); the Socket.IO
#                  protocol section of the socket.io suite is WebSocket-only.
#       polling:   only HTTP long-polling-only cases.
#       upgrade:   only the polling -> WebSocket upgrade cases.
#   --websocket-only                            same as --transport websocket
#   --grep REGEX                                CONFORMANCE_GREP: custom mocha --grep
#                                               (overrides --transport)
#   --suite both|engineio|socketio              CONFORMANCE_SUITE (default both)
#   --no-server                                 CONFORMANCE_NO_SERVER=1: do not build
#       or start anything; test whatever listens on the port (or nothing).
#   --keep-tmp                                  CONFORMANCE_KEEP_TMP=1: keep the temp dir
# Other environment variables:
#   CONFORMANCE_SERVER_ARGS    extra arguments for the conformance server
#   CONFORMANCE_SERVER_CMD     replace the server command entirely (word-split;
#                              `--port <port>` is appended), e.g. to check the
#                              script against another implementation
#   CONFORMANCE_CARGO_FLAGS    extra flags for `cargo build` (e.g. --release)
#   CONFORMANCE_READY_TIMEOUT  seconds to wait for the port to open (default 30)
#   CONFORMANCE_SUITE_TIMEOUT  wall-clock limit per suite in seconds (default 300)
#
# Exit status: 0 when every selected case passed, 1 on test failures,
# 2 on usage or setup errors.

set -euo pipefail

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0" >&2
    exit 2
}

die() {
    echo "conformance: $*" >&2
    exit 2
}

transport="${CONFORMANCE_TRANSPORT:-all}"
grep_re="${CONFORMANCE_GREP:-}"
suite_sel="${CONFORMANCE_SUITE:-both}"
no_server="${CONFORMANCE_NO_SERVER:-0}"
keep_tmp="${CONFORMANCE_KEEP_TMP:-0}"
ready_timeout="${CONFORMANCE_READY_TIMEOUT:-30}"
suite_timeout="${CONFORMANCE_SUITE_TIMEOUT:-300}"

positional=()
while [ $# -gt 0 ]; do
    case "$1" in
        --transport) [ $# -ge 2 ] || usage; transport="$2"; shift 2 ;;
        --transport=*) transport="${1#*=}"; shift ;;
        --websocket-only) transport=websocket; shift ;;
        --grep) [ $# -ge 2 ] || usage; grep_re="$2"; shift 2 ;;
        --grep=*) grep_re="${1#*=}"; shift ;;
        --suite) [ $# -ge 2 ] || usage; suite_sel="$2"; shift 2 ;;
        --suite=*) suite_sel="${1#*=}"; shift ;;
        --no-server) no_server=1; shift ;;
        --keep-tmp) keep_tmp=1; shift ;;
        -h|--help) usage ;;
        --) shift; positional+=("$@"); break ;;
        -*) die "unknown option: $1 (see --help)" ;;
        *) positional+=("$1"); shift ;;
    esac
done
[ ${#positional[@]} -eq 2 ] || usage

# mocha --grep matches the full title ("<describe> <describe> ... <it>").
# Test titles put the transport in a `describe` ("WebSocket" /
# "HTTP long-polling"); the upgrade cases mention both, so they are excluded
# from the single-transport selections with a negative lookahead.
if [ -z "$grep_re" ]; then
    case "$transport" in
        all) ;;
        websocket|ws) grep_re='^(?!.* upgrade ).*(WebSocket|Socket\.IO protocol)' ;;
        polling) grep_re='^(?!.* upgrade ).*HTTP long-polling' ;;
        upgrade) grep_re=' upgrade ' ;;
        *) die "--transport must be all, websocket, polling or upgrade" ;;
    esac
fi
case "$suite_sel" in
    both|engineio|socketio) ;;
    *) die "--suite must be both, engineio or socketio" ;;
esac

resolve_suite() { # checkout -> absolute path of its test-suite folder
    local d="$1"
    [ -d "$d" ] || die "not a directory: $d"
    if [ -f "$d/test-suite/test-suite.js" ]; then
        d="$d/test-suite"
    elif [ ! -f "$d/test-suite.js" ]; then
        die "no test-suite/test-suite.js under $d"
    fi
    (cd "$d" && pwd)
}

eio_suite="$(resolve_suite "${positional[0]}")"
sio_suite="$(resolve_suite "${positional[1]}")"

command -v node >/dev/null || die "node is required (Node.js >= 16; the suites use ESM and top-level await)"
command -v npm >/dev/null || die "npm is required"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 16 ] || die "Node.js >= 16 required, found $(node --version)"

suite_port() { # read the hard-coded port from `const URL = "http://localhost:3000";`
    sed -n 's|^const URL = "http://localhost:\([0-9][0-9]*\)".*|\1|p' "$1/test-suite.js" | head -n1
}
eio_port="$(suite_port "$eio_suite")"
sio_port="$(suite_port "$sio_suite")"
[ -n "$eio_port" ] || die "cannot find the server URL in $eio_suite/test-suite.js"
[ -n "$sio_port" ] || die "cannot find the server URL in $sio_suite/test-suite.js"
[ "$eio_port" = "$sio_port" ] || die "the suites expect different ports ($eio_port, $sio_port); one server cannot serve both"
port="$eio_port"

# The suites connect to "localhost"; the server listens on 127.0.0.1. Make
# Node resolve localhost to IPv4 first wherever ::1 would come first.
export NODE_OPTIONS="${NODE_OPTIONS:+$NODE_OPTIONS }--dns-result-order=ipv4first"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/chatd-conformance.XXXXXX")"
server_pid=""

cleanup() {
    local status=$?
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        # Give it a moment to exit on SIGTERM, then insist (same PID only).
        for _ in $(seq 1 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ "$keep_tmp" = 1 ]; then
        echo "conformance: temporary files kept in $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

if [ "$no_server" != 1 ]; then
    if port_open "$port"; then
        die "something already listens on 127.0.0.1:$port; stop it, or use --no-server to test it"
    fi
    server_log="$tmp/server.log"
    if [ -n "${CONFORMANCE_SERVER_CMD:-}" ]; then
        # shellcheck disable=SC2206 # word splitting is intended
        server_cmd=($CONFORMANCE_SERVER_CMD)
    else
        echo "conformance: building the conformance example" >&2
        build_json="$tmp/build.json"
        # shellcheck disable=SC2086 # flags are word-split on purpose
        (cd "$repo_root" && cargo build --example conformance ${CONFORMANCE_CARGO_FLAGS:-} \
            --message-format=json-render-diagnostics >"$build_json") \
            || die "cargo build --example conformance failed"
        server_bin="$(grep '"reason":"compiler-artifact"' "$build_json" \
            | grep '"name":"conformance"' \
            | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n1)"
        [ -n "$server_bin" ] && [ -x "$server_bin" ] || die "cannot locate the built conformance binary"
        server_cmd=("$server_bin")
    fi
    # shellcheck disable=SC2206
    server_cmd+=(--port "$port" ${CONFORMANCE_SERVER_ARGS:-})
    echo "conformance: starting: ${server_cmd[*]} (log: $server_log)" >&2
    # Run the binary itself (not through cargo) so $server_pid is the server.
    (cd "$repo_root" && exec "${server_cmd[@]}") >"$server_log" 2>&1 &
    server_pid=$!

    # Bounded readiness loop: poll the port, bail out if the server dies.
    deadline=$((SECONDS + ready_timeout))
    until port_open "$port"; do
        if ! kill -0 "$server_pid" 2>/dev/null; then
            wait "$server_pid" 2>/dev/null && rc=0 || rc=$?
            server_pid=""
            echo "conformance: the server exited (status $rc) before listening on port $port; its log:" >&2
            sed 's/^/  | /' "$server_log" >&2 || true
            exit 2
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "conformance: the server did not open 127.0.0.1:$port within ${ready_timeout}s; its log:" >&2
            sed 's/^/  | /' "$server_log" >&2 || true
            exit 2
        fi
        sleep 0.1
    done
    echo "conformance: server (pid $server_pid) listening on 127.0.0.1:$port" >&2
else
    echo "conformance: --no-server: testing whatever listens on port $port" >&2
fi

have_timeout=0
command -v timeout >/dev/null && have_timeout=1

total_pass=0
total_fail=0
total_pend=0
summary=()
overall=0

run_suite() { # name, test-suite folder
    local name="$1" src="$2" dir="$tmp/$1" log="$tmp/$1.log" rc=0
    mkdir -p "$dir"
    # Copy without any node_modules the checkout may contain.
    (cd "$src" && tar -cf - --exclude=./node_modules .) | (cd "$dir" && tar -xf -)
    echo "conformance: [$name] installing test dependencies in $dir" >&2
    if [ -f "$dir/package-lock.json" ]; then
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) >"$log.npm" 2>&1 \
            || (cd "$dir" && npm install --no-audit --no-fund --loglevel=error) >>"$log.npm" 2>&1 \
            || { cat "$log.npm" >&2; die "[$name] npm install failed"; }
    else
        (cd "$dir" && npm install --no-audit --no-fund --loglevel=error) >"$log.npm" 2>&1 \
            || { cat "$log.npm" >&2; die "[$name] npm install failed"; }
    fi
    # The suites' own command (`npm test` = `mocha test-suite.js`), plus
    # --exit so sockets the tests leave open cannot keep mocha alive.
    local args=(--exit)
    [ -n "$grep_re" ] && args+=(--grep "$grep_re")
    echo "conformance: [$name] npm test -- ${args[*]}" >&2
    local runner=()
    [ "$have_timeout" = 1 ] && runner=(timeout --kill-after=10 "$suite_timeout")
    (cd "$dir" && "${runner[@]}" npm test --silent -- "${args[@]}") 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        echo "conformance: [$name] timed out after ${suite_timeout}s" >&2
    fi
    local pass fail pend
    pass="$(sed -n 's/^ *\([0-9][0-9]*\) passing.*/\1/p' "$log" | tail -n1)"
    fail="$(sed -n 's/^ *\([0-9][0-9]*\) failing.*/\1/p' "$log" | tail -n1)"
    pend="$(sed -n 's/^ *\([0-9][0-9]*\) pending.*/\1/p' "$log" | tail -n1)"
    pass="${pass:-0}" fail="${fail:-0}" pend="${pend:-0}"
    total_pass=$((total_pass + pass))
    total_fail=$((total_fail + fail))
    total_pend=$((total_pend + pend))
    local verdict=PASS
    if [ "$rc" != 0 ] || [ "$fail" != 0 ]; then
        verdict=FAIL
        overall=1
        # mocha reports nothing countable if it crashed before running.
        [ "$fail" = 0 ] && fail="? (mocha exit status $rc)"
    fi
    summary+=("$(printf '%-10s %s  passing %s, failing %s, pending %s' "$name" "$verdict" "$pass" "$fail" "$pend")")
}

case "$suite_sel" in
    both) run_suite engineio "$eio_suite"; run_suite socketio "$sio_suite" ;;
    engineio) run_suite engineio "$eio_suite" ;;
    socketio) run_suite socketio "$sio_suite" ;;
esac

if [ -n "$server_pid" ] && ! kill -0 "$server_pid" 2>/dev/null; then
    echo "conformance: warning: the server exited during the run; its log tail:" >&2
    tail -n 40 "$server_log" | sed 's/^/  | /' >&2 || true
    overall=1
fi

echo
echo "=== conformance summary${grep_re:+ (grep: $grep_re)} ==="
for line in "${summary[@]}"; do echo "$line"; done
echo "total      passing $total_pass, failing $total_fail, pending $total_pend"
exit "$overall"
