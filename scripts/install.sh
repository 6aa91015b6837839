#!/usr/bin/env bash
# Installs chatd as a systemd service: the static binary as
# /usr/local/bin/chatd, the unit as /etc/systemd/system/chatd.service and the
# README as /usr/local/share/doc/chatd/README.md, then prints what to do next.
#
#   scripts/install.sh [--dry-run] [--binary PATH]
#
#   --binary PATH  the chatd to install (default: dist/chatd, made by
#                  scripts/build-static.sh)
#   --dry-run      print what would be done, change nothing
#   DESTDIR=DIR    install under DIR (packaging, tests); systemctl is not run
#
# Upgrading is the same command followed by `systemctl restart chatd`; the
# data directory is left alone.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

binary=dist/chatd
dry_run=false
while (($#)); do
  case "$1" in
    --dry-run) dry_run=true ;;
    --binary) binary="${2:?--binary needs a path}"; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
destdir="${DESTDIR:-}"

if [[ ! -x "$binary" ]]; then
  echo "no chatd binary at $binary: run scripts/build-static.sh first, or pass --binary PATH" >&2
  exit 1
fi
if ! $dry_run && [[ -z "$destdir" && $EUID -ne 0 ]]; then
  echo "installing into /usr/local and /etc needs root: run with sudo (or try --dry-run)" >&2
  exit 1
fi

run() {
  if $dry_run; then echo "+ $*"; else "$@"; fi
}

run install -D -m 0755 "$binary" "$destdir/usr/local/bin/chatd"
run install -D -m 0644 systemd/chatd.service "$destdir/etc/systemd/system/chatd.service"
run install -D -m 0644 README.md "$destdir/usr/local/share/doc/chatd/README.md"
# Only on a live system managed by systemd: tell it about the new unit.
if [[ -z "$destdir" && -d /run/systemd/system ]]; then
  run systemctl daemon-reload
fi

if $dry_run; then
  echo "(dry run: nothing was changed)"
else
  echo "chatd is installed."
fi
cat <<'NEXT'

Next steps:

  systemctl enable --now chatd         # start now and at boot (wss://0.0.0.0:5000)
  systemctl status chatd               # "active (running)" once it listens
  journalctl -u chatd -f               # its console lines and logs
  chatd token Dummy-1                  # a token for a user (as root, once the
                                       # service has created its secret)

  Data, token secret and the generated certificate live in /var/lib/chatd
  (clients must trust /var/lib/chatd/tls/cert.pem, or give your own pair).
  Flags such as --tls-cert/--tls-key or --metrics-listen 127.0.0.1:9500 go
  in a drop-in: `systemctl edit chatd` (see the comments in the unit).
  After renewing a certificate: systemctl reload chatd
  After upgrading the binary:   systemctl restart chatd
NEXT
