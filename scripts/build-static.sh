#!/usr/bin/env bash
# Builds chatd as one fully static x86-64 Linux executable, checks that it is
# static and that it runs, and copies it to OUT (default: dist/chatd).
#
#   scripts/build-static.sh [OUT]
#
# Prefers musl (target x86_64-unknown-linux-musl, added with rustup when the
# network allows, C parts compiled with musl-gcc from Debian's musl-tools).
# Without them it falls back to glibc linked statically (+crt-static), which
# Debian's libc6-dev supports. Set CHATD_STATIC_TARGET to force one.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

out="${1:-dist/chatd}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
musl=x86_64-unknown-linux-musl
gnu=x86_64-unknown-linux-gnu

musl_usable() {
  command -v musl-gcc >/dev/null || { echo "musl-gcc not found (apt-get install musl-tools)"; return 1; }
  rustup target list --installed 2>/dev/null | grep -qx "$musl" && return 0
  echo "==> rustup target add $musl"
  timeout 300 rustup target add "$musl"
}

target="${CHATD_STATIC_TARGET:-}"
if [[ -z "$target" ]]; then
  if musl_usable; then target=$musl; else
    echo "==> musl unavailable: falling back to static glibc"
    target=$gnu
  fi
fi

case "$target" in
  "$musl")
    # ring compiles C and assembly: it needs a compiler targeting musl.
    export CC_x86_64_unknown_linux_musl="${CC_x86_64_unknown_linux_musl:-musl-gcc}"
    flags="" ;;
  "$gnu")
    # With an explicit --target, RUSTFLAGS reach only the target's crates,
    # not build scripts or proc macros, which stay ordinary host programs.
    flags="-C target-feature=+crt-static" ;;
  *) echo "unsupported CHATD_STATIC_TARGET=$target (use $musl or $gnu)" >&2; exit 2 ;;
esac

echo "==> cargo build --release --target $target"
RUSTFLAGS="${RUSTFLAGS:-} $flags" cargo build --release --locked --bin chatd --target "$target"
bin="$target_dir/$target/release/chatd"

echo "==> checking $bin"
file_says="$(file -b "$bin")"
ldd_says="$(ldd "$bin" 2>&1 || true)"
echo "file: $file_says"
echo "ldd:  $ldd_says"
if ! grep -Eq 'statically linked|static-pie linked' <<<"$file_says"; then
  echo "not a static executable (file: $file_says)" >&2; exit 1
fi
if ! grep -Eq 'not a dynamic executable|statically linked' <<<"$ldd_says"; then
  echo "the executable needs shared libraries (ldd: $ldd_says)" >&2; exit 1
fi

"$bin" --help >/dev/null
# Start it for real: generate a certificate (exercises ring), listen, answer
# /healthz over TLS, stop gracefully on SIGTERM with exit status 0.
scratch="$(mktemp -d)"
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$scratch"' EXIT
"$bin" run --listen 127.0.0.1:0 --data-dir "$scratch/data" >"$scratch/stdout" 2>"$scratch/stderr" &
pid=$!
for _ in $(seq 100); do
  grep -q '^Listening at ' "$scratch/stdout" && break
  kill -0 "$pid" 2>/dev/null || { cat "$scratch/stderr" >&2; echo "chatd exited at start" >&2; exit 1; }
  sleep 0.1
done
port="$(sed -n 's/^Listening at //p' "$scratch/stdout")"
[[ -n "$port" ]] || { cat "$scratch/stderr" >&2; echo "chatd did not announce its port" >&2; exit 1; }
health="$(curl -sS --cacert "$scratch/data/tls/cert.pem" "https://localhost:$port/healthz")"
[[ "$health" == ok ]] || { echo "/healthz answered: $health" >&2; exit 1; }
kill -TERM "$pid"
status=0; wait "$pid" || status=$?
[[ $status -eq 0 ]] || { cat "$scratch/stderr" >&2; echo "chatd exited $status on SIGTERM" >&2; exit 1; }
echo "runs: --help, run (Listening at $port, /healthz ok over TLS), SIGTERM -> exit 0"

mkdir -p "$(dirname "$out")"
cp "$bin" "$out"
echo "==> static chatd for $target: $out ($(du -h "$out" | cut -f1))"
