#!/usr/bin/env bash
# pg-local.sh - a private PostgreSQL server on 127.0.0.1, for hpo's tests and CI.
#
# Usage: scripts/pg-local.sh up|down|status|url
#        scripts/pg-local.sh down --purge      (also deletes the state directory)
#
#   up      install Debian's `postgresql` when no server binaries are found, create a
#           cluster of our own (initdb) on first use, start it, and create the role and
#           database `hpo`. Safe to repeat: a running server is kept.
#   down    stop the server (pg_ctl -m fast, through its pid file).
#   status  exit 0 when the server runs and answers, 1 otherwise.
#   url     print the connection URL: postgresql://hpo@127.0.0.1:55432/hpo (psql, libpq).
#           With --sqlalchemy: postgresql+psycopg2://..., the form for Optuna storage URLs:
#           SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which hpo does not install.
#
# Environment:
#   HPO_PG_ROOT  cluster, socket, log (default /tmp/hpo-pg)
#   HPO_PG_PORT  TCP port on 127.0.0.1 (default 55432)
#
# The server listens on 127.0.0.1 only and trusts the role `hpo` there without a password
# (it may create databases). Durability is switched off (fsync=off): it holds test data only.
# As root the server runs as the `postgres` user (initdb refuses root); otherwise as you.
set -euo pipefail

ROOT="${HPO_PG_ROOT:-/tmp/hpo-pg}"
PORT="${HPO_PG_PORT:-55432}"
PURGE=0
SQLALCHEMY=0
CMD=""

usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "pg-local: $*" >&2; exit 1; }
say() { echo "[pg-local $(date +%T)] $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --purge)   PURGE=1; shift ;;
    --sqlalchemy) SQLALCHEMY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    up|down|status|url)
               [ -z "$CMD" ] || die "got two commands ('$CMD' and '$1'); give exactly one."
               CMD="$1"; shift ;;
    *)         die "unknown argument '$1'; use up, down, status or url (see --help)." ;;
  esac
done
[ -n "$CMD" ] || { usage >&2; exit 2; }
[[ "$PORT" =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] \
  || die "HPO_PG_PORT='$PORT' is not a TCP port; use a number such as 55432."

DATA="$ROOT/data"
SOCK="$ROOT/run"
LOGFILE="$ROOT/log/postgres.log"
URL="postgresql://hpo@127.0.0.1:$PORT/hpo"

if [ "$CMD" = url ]; then
  if [ "$SQLALCHEMY" = 1 ]; then echo "${URL/#postgresql:/postgresql+psycopg2:}"; else echo "$URL"; fi
  exit 0
fi

# ------------------------------------------------------------------------------ helpers
if [ "$(id -u)" = 0 ]; then
  PGUSER_OS=postgres
  as_server() { runuser -u postgres -- "$@"; }
else
  PGUSER_OS=$(id -un)
  as_server() { "$@"; }
fi
export DEBIAN_FRONTEND=noninteractive

find_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

install_postgres() {
  [ "$(id -u)" = 0 ] || die "no PostgreSQL server found under /usr/lib/postgresql; install 'postgresql' (as root: apt-get install postgresql)."
  command -v apt-get >/dev/null || die "no PostgreSQL server found and no apt-get; install PostgreSQL by hand."
  mkdir -p "$ROOT/log"
  local apt_log="$ROOT/log/apt.log" policy_tmp=0
  local apt=(apt-get -y -q -o DPkg::Lock::Timeout=600)
  say "installing postgresql (log: $apt_log)"
  # Keep the package from starting Debian's own cluster: we run a private one.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    policy_tmp=1
  fi
  if ! "${apt[@]}" install --no-install-recommends postgresql >"$apt_log" 2>&1; then
    "${apt[@]}" update >>"$apt_log" 2>&1 || true
    "${apt[@]}" install --no-install-recommends postgresql >>"$apt_log" 2>&1 || {
      [ "$policy_tmp" = 1 ] && rm -f /usr/sbin/policy-rc.d
      tail -n 25 "$apt_log" >&2; die "apt-get install postgresql failed."; }
  fi
  [ "$policy_tmp" = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

# live_pid LOCKFILE: print the pid on the file's first line when it is a live (not zombie)
# postgres process.
live_pid() {
  local p
  [ -s "$1" ] || return 1
  p=$(head -n1 "$1" | tr -dc 0-9)
  [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = postgres ] || return 1
  grep -q '^State:[[:space:]]*Z' "/proc/$p/status" 2>/dev/null && return 1
  echo "$p"
}
server_pid() { live_pid "$DATA/postmaster.pid"; }

psql_admin() {
  as_server "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p "$PORT" -U postgres -d postgres "$@"
}

take_lock() {
  exec 9>"$ROOT/.lock"
  flock -w 600 9 || die "another pg-local.sh held $ROOT/.lock for 10 min; check it or remove it."
}

# ------------------------------------------------------------------------------ commands
CONF_CHANGED=0

write_config() {  # sets CONF_CHANGED=1 when hpo.conf (settings that need a restart) changed
  local conf changed=1
  conf=$(cat <<EOF
# Written by scripts/pg-local.sh; edits are overwritten on the next 'up'.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$SOCK'
max_connections = 200
shared_buffers = 128MB
# Test data only: trade durability for speed.
fsync = off
synchronous_commit = off
full_page_writes = off
log_min_messages = warning
log_line_prefix = '%m [%p] %u@%d '
EOF
)
  if [ -f "$DATA/hpo.conf" ] && [ "$(cat "$DATA/hpo.conf")" = "$conf" ]; then changed=0; fi
  if [ "$changed" = 1 ]; then
    printf '%s\n' "$conf" | as_server tee "$DATA/hpo.conf" >/dev/null
  fi
  grep -q "^include 'hpo.conf'" "$DATA/postgresql.conf" \
    || echo "include 'hpo.conf'" | as_server tee -a "$DATA/postgresql.conf" >/dev/null
  # Unix socket: anyone who can reach the private socket directory. TCP: role hpo, loopback.
  printf '%s\n' "# Written by scripts/pg-local.sh." \
    "local all all trust" \
    "host  all hpo 127.0.0.1/32 trust" | as_server tee "$DATA/pg_hba.conf" >/dev/null
  CONF_CHANGED=$changed
}

cmd_up() {
  if ! BIN=$(find_bindir); then
    install_postgres
    BIN=$(find_bindir) || die "PostgreSQL was installed but no initdb is under /usr/lib/postgresql."
  fi
  mkdir -p "$ROOT"
  take_lock
  mkdir -p "$SOCK" "$ROOT/log"
  [ "$(id -u)" = 0 ] && chown "$PGUSER_OS:" "$ROOT" "$SOCK" "$ROOT/log"
  chmod 0755 "$ROOT"
  chmod 0700 "$SOCK"
  if [ ! -s "$DATA/PG_VERSION" ]; then
    say "initdb $DATA (as $PGUSER_OS)"
    rm -rf "$DATA"
    as_server "$BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 --no-sync \
      >"$ROOT/log/initdb.log" 2>&1 || { tail -n 25 "$ROOT/log/initdb.log" >&2; die "initdb failed."; }
  fi
  write_config
  local pid
  if pid=$(server_pid); then
    if [ "$CONF_CHANGED" = 1 ]; then
      say "configuration changed: restarting the server (pid $pid)"
      as_server "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null
    else
      as_server "$BIN/pg_ctl" -D "$DATA" reload >/dev/null   # pg_hba.conf is rewritten each time
    fi
  fi
  if ! server_pid >/dev/null; then
    # Lock files left by a killed server block the start: PostgreSQL takes a zombie (no init
    # reaps here) or a reused pid for a live server.
    local f
    for f in "$DATA/postmaster.pid" "$SOCK/.s.PGSQL.$PORT.lock"; do
      if [ -e "$f" ] && ! live_pid "$f" >/dev/null; then say "removing stale $f"; rm -f "$f"; fi
    done
    say "starting PostgreSQL on 127.0.0.1:$PORT"
    as_server "$BIN/pg_ctl" -D "$DATA" -l "$LOGFILE" -w -t 60 start >/dev/null 9>&- \
      || { tail -n 25 "$LOGFILE" >&2; die "the server did not start (is port $PORT taken? set HPO_PG_PORT)."; }
  fi
  psql_admin <<'EOF'
SELECT 'CREATE ROLE hpo LOGIN CREATEDB' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'hpo')
\gexec
SELECT 'CREATE DATABASE hpo OWNER hpo' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'hpo')
\gexec
EOF
  "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -U hpo -d hpo \
    || die "the server runs but does not answer on 127.0.0.1:$PORT."
  say "PostgreSQL is up: $URL"
}

cmd_down() {
  [ -d "$ROOT" ] || { say "nothing to stop: $ROOT does not exist"; return 0; }
  take_lock
  local pid
  if pid=$(server_pid); then
    BIN=$(find_bindir) || die "the server runs (pid $pid) but pg_ctl is not under /usr/lib/postgresql."
    say "stopping PostgreSQL (pid $pid)"
    as_server "$BIN/pg_ctl" -D "$DATA" -m fast -w -t 60 stop >/dev/null
  fi
  if [ "$PURGE" = 1 ]; then
    say "removing $ROOT"
    rm -rf "$ROOT"
  fi
  say "stopped"
}

cmd_status() {
  local pid
  if pid=$(server_pid); then
    echo "postgres   running (pid $pid) $URL"
    BIN=$(find_bindir) && "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" -d hpo -U hpo
  else
    echo "postgres   stopped"
    return 1
  fi
}

case "$CMD" in
  up)     cmd_up ;;
  down)   cmd_down ;;
  status) cmd_status ;;
esac
