#!/usr/bin/env bash
# chromium-local.sh - make sure a headless-capable Chromium is installed; print its path.
#
# Usage: scripts/chromium-local.sh        (stdout: the path only; progress goes to stderr)
#
# Uses an existing `chromium` (or $HPO_CHROMIUM when set); otherwise installs Debian's
# `chromium` package with apt (a few hundred MB, needs root). Running it as root needs
#   --headless --no-sandbox --disable-gpu --user-data-dir=<a fresh temporary directory>
# and, offline, --disable-quic --no-first-run --disable-background-networking
# --disable-component-update --disable-sync.
set -euo pipefail

die() { echo "chromium-local: $*" >&2; exit 1; }
say() { echo "[chromium-local $(date +%T)] $*" >&2; }

case "${1:-}" in
  "") ;;
  -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument '$1'; this script takes none (see --help)." ;;
esac

find_chromium() {
  local c
  if [ -n "${HPO_CHROMIUM:-}" ]; then
    [ -x "$HPO_CHROMIUM" ] || die "HPO_CHROMIUM='$HPO_CHROMIUM' is not an executable file; unset it or fix the path."
    echo "$HPO_CHROMIUM"; return 0
  fi
  for c in chromium chromium-browser; do
    command -v "$c" 2>/dev/null && return 0
  done
  return 1
}

if ! path=$(find_chromium); then
  [ "$(id -u)" = 0 ] || die "chromium is not installed; install it as root: apt-get install chromium."
  command -v apt-get >/dev/null || die "chromium is not installed and there is no apt-get; install it by hand."
  export DEBIAN_FRONTEND=noninteractive
  apt=(apt-get -y -q -o DPkg::Lock::Timeout=600)
  log=$(mktemp /tmp/chromium-apt.XXXXXX.log)
  # Fresh images often ship without package lists: refresh them only when needed.
  if ! [[ "$(apt-cache policy chromium 2>/dev/null)" =~ Candidate:\ [0-9] ]]; then
    say "apt-get update"
    "${apt[@]}" update >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "apt-get update failed."; }
  fi
  say "installing chromium (log: $log)"
  if ! "${apt[@]}" install --no-install-recommends chromium >>"$log" 2>&1; then
    "${apt[@]}" update >>"$log" 2>&1 || true
    "${apt[@]}" install --no-install-recommends chromium >>"$log" 2>&1 \
      || { tail -n 20 "$log" >&2; die "apt-get install chromium failed."; }
  fi
  rm -f "$log"
  path=$(find_chromium) || die "chromium was installed but is not on PATH."
fi

# It must at least start: a broken install fails here rather than in a test.
version=$("$path" --version 2>/dev/null) || die "'$path --version' failed; reinstall chromium."
say "$version"
echo "$path"
