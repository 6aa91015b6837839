#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ briefly from its checked-in seeds, so
# a decoder that panics on simple input is caught on every CI run. The run is
# deterministic (a fixed seed and FUZZ_RUNS inputs per target, default
# 200000; FUZZ_SECONDS caps each, default 120): the same tree gives the same
# verdict. Open-ended local runs: `cargo fuzz run TARGET`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
seconds="${FUZZ_SECONDS:-120}"
runs="${FUZZ_RUNS:-200000}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> cargo install cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz needs nightly-only sanitizer flags; the machine has one stable
# toolchain, which accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1

targets=$(cargo fuzz list)
failed=0
for target in $targets; do
  echo "==> fuzz $target ($runs runs)"
  # Work on a scratch copy so runs never add generated inputs to the repo.
  corpus=$(mktemp -d)
  cp corpus/"$target"/seed-* "$corpus"/ 2>/dev/null || true
  if ! cargo fuzz run "$target" "$corpus" -- -seed=1 -runs="$runs" -max_total_time="$seconds" -rss_limit_mb=1024 \
      > "$corpus.log" 2>&1; then
    echo "fuzz target $target FAILED:" >&2
    tail -40 "$corpus.log" >&2
    failed=$((failed + 1))
  else
    grep -E "^Done|stat::number_of_executed_units" "$corpus.log" | tail -1 || true
  fi
  rm -rf "$corpus" "$corpus.log"
done
count=$(echo "$targets" | wc -w)
echo "fuzz smoke: $((count - failed)) passed, $failed failed"
(( failed == 0 ))
