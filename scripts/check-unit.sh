#!/usr/bin/env bash
# Checks systemd/chatd.service: `systemd-analyze verify` (with ExecStart
# pointing at BINARY, since /usr/local/bin/chatd is not installed here) and
# `systemd-analyze security --offline`, which must rate it 2.0 or lower.
#
#   scripts/check-unit.sh BINARY
#
# Skips, successfully, when systemd-analyze is not installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
binary="$(realpath "${1:?usage: scripts/check-unit.sh BINARY}")"
unit=systemd/chatd.service

if ! command -v systemd-analyze >/dev/null; then
  echo "systemd-analyze not found: unit checks skipped (apt-get install systemd)"
  exit 0
fi

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
sed "s|/usr/local/bin/chatd|$binary|g" "$unit" >"$scratch/chatd.service"
echo "==> systemd-analyze verify $unit"
systemd-analyze verify "$scratch/chatd.service"

echo "==> systemd-analyze security --offline=true $unit"
report="$(systemd-analyze security --offline=true "$unit" 2>&1)" || true
# Unknown or misspelled settings are only warnings to systemd: fail on them.
if grep -E 'Unknown (key|section)|Failed to parse' <<<"$report"; then
  exit 1
fi
grep 'Overall exposure level' <<<"$report"
# --threshold counts in tenths: 20 is an exposure level of 2.0.
systemd-analyze security --offline=true --threshold=20 "$unit" >/dev/null 2>&1 || {
  echo "$report" >&2
  echo "the unit's exposure level is above 2.0" >&2
  exit 1
}
