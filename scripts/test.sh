#!/usr/bin/env bash
# Builds chatd and runs every test: the Rust tests, then the Node.js
# integration suite (tests/node) against the built binary with the stock
# socket.io-client, then the python-socketio client suite (tests/python),
# then the operations checks: the static release binary and the systemd
# unit. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "==> cargo build --bins --examples"
cargo build --bins --examples

# Install the Node test dependencies from the committed lock file when they
# are missing or older than the lock file.
if [[ ! -d tests/node/node_modules || tests/node/package-lock.json -nt tests/node/node_modules ]]; then
  echo "==> npm ci (tests/node)"
  (cd tests/node && npm ci --no-audit --no-fund)
  touch tests/node/node_modules
fi

# The python-socketio suite's pinned packages, in a venv of their own.
venv=tests/python/.venv
if [[ ! -x $venv/bin/python || tests/python/requirements.txt -nt $venv/installed ]]; then
  echo "==> pip install (tests/python)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  touch "$venv/installed"
fi

# The pinned nats-server the cluster tests start (a 3-server JetStream cluster).
echo "==> scripts/install-nats.sh"
NATS_SERVER="$(bash scripts/install-nats.sh)"
export NATS_SERVER

echo "==> cargo test --all-targets"
cargo test --all-targets

echo "==> node --test tests/node/"
CHATD_BIN="${CHATD_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/chatd}" \
  node --test --test-concurrency=2 tests/node/

echo "==> python-socketio client (tests/python)"
CHATD_BIN="${CHATD_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/chatd}" \
  "$venv/bin/python" tests/python/test_python_client.py

echo "==> scripts/build-static.sh"
bash scripts/build-static.sh dist/chatd

echo "==> scripts/check-unit.sh"
bash scripts/check-unit.sh dist/chatd

echo "==> all tests passed"
