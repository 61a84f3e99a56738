#!/usr/bin/env bash
# slurm-local.sh - a real one-node SLURM cluster on this machine, for hpo's tests and CI.
#
# Usage: scripts/slurm-local.sh [--partition NAME] up [--check] | down [--purge] | status | env
#        (--purge also deletes the state directory)
#
#   up      install the Debian packages when missing, write the config, start munged, a
#           private MariaDB, slurmdbd, slurmctld and slurmd, then run one job through sbatch
#           and wait until sacct reports it COMPLETED. Safe to repeat: what runs is kept;
#           when everything was running already, only the daemons are asked whether they
#           answer (no job, so a busy queue does not delay it) unless --check is given.
#   down    cancel all jobs and stop the daemons this script started, by their pid files.
#   status  one line per daemon; exit 0 when all of them run, 1 otherwise.
#   env     print `export SLURM_CONF=...`: eval "$(scripts/slurm-local.sh env)".
#
# Environment:
#   HPO_SLURM_ROOT       state, spool, logs, pid files (default /tmp/hpo-slurm)
#   HPO_SLURM_PARTITION  partition name when --partition is not given (default debug)
#   HPO_SLURM_DB_PORT    port of the private MariaDB on 127.0.0.1 (default 3307)
# SLURM itself listens on 6817 (slurmctld), 6818 (slurmd) and 6819 (slurmdbd).
#
# Needs root (slurmd runs jobs as their submitting user) and Debian 12 or alike with apt.
# No systemd needed: every daemon is started by hand.
set -euo pipefail

ROOT="${HPO_SLURM_ROOT:-/tmp/hpo-slurm}"
PARTITION="${HPO_SLURM_PARTITION:-debug}"
DB_PORT="${HPO_SLURM_DB_PORT:-3307}"
PURGE=0
FULL_CHECK=0
CMD=""

usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "slurm-local: $*" >&2; exit 1; }
say() { echo "[slurm-local $(date +%T)] $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    -p|--partition) [ $# -ge 2 ] || die "--partition needs a value, e.g. --partition debug."
                    PARTITION="$2"; shift 2 ;;
    --partition=*)  PARTITION="${1#*=}"; shift ;;
    --purge)        PURGE=1; shift ;;
    --check)        FULL_CHECK=1; shift ;;
    -h|--help)      usage; exit 0 ;;
    up|down|status|env)
                    [ -z "$CMD" ] || die "got two commands ('$CMD' and '$1'); give exactly one."
                    CMD="$1"; shift ;;
    *)              die "unknown argument '$1'; use up, down, status or env (see --help)." ;;
  esac
done
[ -n "$CMD" ] || { usage >&2; exit 2; }
[[ "$PARTITION" =~ ^[A-Za-z0-9_-]+$ ]] \
  || die "partition name '$PARTITION' is not valid; use letters, digits, '_' or '-'."
[[ "$DB_PORT" =~ ^[0-9]+$ ]] || die "HPO_SLURM_DB_PORT='$DB_PORT' is not a port number; use e.g. 3307."

export SLURM_CONF="$ROOT/etc/slurm.conf"
export DEBIAN_FRONTEND=noninteractive
RUN="$ROOT/run"
LOG="$ROOT/log"

# ------------------------------------------------------------------------------ helpers
# pid_of PIDFILE COMM: print the pid when it is a live (not zombie) process named COMM.
pid_of() {
  local p
  [ -s "$1" ] || return 1
  p=$(head -n1 "$1" 2>/dev/null | tr -dc 0-9)
  [ -n "$p" ] && [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ] || return 1
  grep -q '^State:[[:space:]]*Z' "/proc/$p/status" 2>/dev/null && return 1
  echo "$p"
}
running() { pid_of "$1" "$2" >/dev/null; }

# retry N CMD...: run CMD every 0.25 s until it succeeds, at most N times.
retry() {
  local n=$1 i; shift
  for ((i = 0; i < n; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  return 1
}

# stop_pid PIDFILE COMM: SIGTERM, wait up to 30 s (a zombie counts as gone), then SIGKILL.
stop_pid() {
  local p i
  p=$(pid_of "$1" "$2") || return 0
  say "stopping $2 (pid $p)"
  kill -TERM "$p" 2>/dev/null || return 0
  for ((i = 0; i < 120; i++)); do running "$1" "$2" || return 0; sleep 0.25; done
  say "$2 (pid $p) ignored SIGTERM for 30 s, sending SIGKILL"
  kill -KILL "$p" 2>/dev/null || true
}

need_root() {
  [ "$(id -u)" = 0 ] || die "'$CMD' must run as root (slurmd and munged need it); run it with sudo."
}

# Serialise concurrent callers (two test sessions, CI steps) on one lock file. Daemons are
# started with fd 9 closed (9>&-) so that none of them keeps holding the lock.
take_lock() {
  mkdir -p "$ROOT"
  exec 9>"$ROOT/.lock"
  flock -w 900 9 || die "another slurm-local.sh held $ROOT/.lock for 15 min; check it or remove it."
}

show_tail() { [ -f "$1" ] && { echo "--- last lines of $1:" >&2; tail -n 25 "$1" >&2; }; return 0; }

# ------------------------------------------------------------------------------ packages
PACKAGES="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"

install_packages() {
  local missing="" p policy_tmp=0 apt_log="$LOG/apt.log"
  for p in $PACKAGES; do
    [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" == *"ok installed" ]] || missing="$missing $p"
  done
  [ -n "$missing" ] || return 0
  command -v apt-get >/dev/null || die "packages$missing are missing and there is no apt-get; install them by hand."
  say "installing$missing (log: $apt_log)"
  # Keep package scripts from starting daemons with Debian's default config: we start ours.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d
    policy_tmp=1
  fi
  local apt=(apt-get -y -q -o DPkg::Lock::Timeout=600)
  # shellcheck disable=SC2086
  if ! "${apt[@]}" install --no-install-recommends $missing >"$apt_log" 2>&1; then
    # Usually stale or absent package lists: refresh them once and try again.
    "${apt[@]}" update >>"$apt_log" 2>&1 || true
    # shellcheck disable=SC2086
    "${apt[@]}" install --no-install-recommends $missing >>"$apt_log" 2>&1 || {
      [ "$policy_tmp" = 1 ] && rm -f /usr/sbin/policy-rc.d
      show_tail "$apt_log"; die "apt-get install$missing failed."; }
  fi
  [ "$policy_tmp" = 1 ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

# ------------------------------------------------------------------------------ config
CONF_CHANGED=0
STARTED=0   # set when 'up' started any daemon

write_if_changed() {  # write_if_changed FILE CONTENT -> returns 0 when the file changed
  if [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; then return 1; fi
  printf '%s\n' "$2" >"$1"
}

write_config() {
  local host node acct_conf
  host=$(hostname -s)
  # First line of `slurmd -C` describes this machine: NodeName=vm CPUs=2 ... RealMemory=24105
  node=$(slurmd -C | head -n1)
  [[ "$node" == NodeName=* ]] || die "'slurmd -C' printed '$node' instead of a node line."

  local conf
  conf=$(cat <<EOF
# Written by scripts/slurm-local.sh; edits are overwritten on the next 'up'.
ClusterName=hpolocal
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job may start again only after the credential expires (default 120 s).
AuthInfo=cred_expire=10
MpiDefault=none
# No cgroups here: track processes through /proc and bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$ROOT/state
SlurmdSpoolDir=$ROOT/spool
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SchedulerType=sched/backfill
# The defaults (30 s / 60 s) delay requeued and held jobs far beyond a test's patience.
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# A job without --mem would otherwise take all of the node's memory: jobs would run one by one.
DefMemPerCPU=1024
# Refuse at submit time what the node can never give, instead of pending forever.
EnforcePartLimits=ALL
MailProg=/bin/true
# slurmd listens on NodeAddr (127.0.0.1) only; munge authenticates every message anyway.
CommunicationParameters=NoInAddrAny
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
MinJobAge=300
KillWait=10
InactiveLimit=0
Waittime=0
${node} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=${PARTITION} Nodes=${host} Default=YES MaxTime=INFINITE State=UP
EOF
)
  write_if_changed "$SLURM_CONF" "$conf" && CONF_CHANGED=1

  # Throwaway password of the loopback-only accounting database, made once per state dir.
  if [ ! -s "$ROOT/etc/db.pass" ]; then
    (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$ROOT/etc/db.pass")
  fi
  # slurmdbd reads slurmdbd.conf next to $SLURM_CONF and refuses it unless it is mode 0600.
  acct_conf=$(cat <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$ROOT/etc/db.pass")
StorageLoc=slurm_acct_db
EOF
)
  (umask 077; write_if_changed "$ROOT/etc/slurmdbd.conf" "$acct_conf") || true
  chmod 600 "$ROOT/etc/slurmdbd.conf"
}

# ------------------------------------------------------------------------------ daemons
munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    mungekey --create --keyfile /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  # Without systemd nobody creates munged's runtime directory.
  install -d -o munge -g munge -m 0755 /run/munge
  munge_ok && return 0
  say "starting munged"; STARTED=1
  # munged refuses to run as root with a key owned by munge: run it as its own user.
  runuser -u munge -- /usr/sbin/munged 9>&-
  retry 80 munge_ok || die "munged did not answer within 20 s (see /var/log/munge/munged.log)."
  # Remember that this script started it, so that 'down' stops only a munged of its own.
  pid_of /run/munge/munged.pid munged >"$RUN/munged.ours" || true
}

db_cli() { mariadb --no-defaults -S "$RUN/mysqld.sock" -u root "$@"; }

start_mariadb() {
  if [ ! -d "$ROOT/mysql/mysql" ]; then
    say "creating the accounting database in $ROOT/mysql"
    mkdir -p "$ROOT/mysql"
    mariadb-install-db --no-defaults --datadir="$ROOT/mysql" --user=root --skip-test-db \
      --auth-root-authentication-method=socket >"$LOG/mariadb-install-db.log" 2>&1 \
      || { show_tail "$LOG/mariadb-install-db.log"; die "mariadb-install-db failed."; }
  fi
  if ! running "$RUN/mysqld.pid" mariadbd; then
    say "starting mariadbd on 127.0.0.1:$DB_PORT"; STARTED=1
    setsid /usr/sbin/mariadbd --no-defaults --datadir="$ROOT/mysql" --user=root \
      --socket="$RUN/mysqld.sock" --pid-file="$RUN/mysqld.pid" \
      --bind-address=127.0.0.1 --port="$DB_PORT" --log-error="$LOG/mariadb.err" \
      --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
      </dev/null >/dev/null 2>&1 9>&- &
    retry 240 mariadb-admin --no-defaults -S "$RUN/mysqld.sock" -u root ping \
      || { show_tail "$LOG/mariadb.err"; die "mariadbd did not answer within 60 s."; }
  fi
  local pw
  pw=$(cat "$ROOT/etc/db.pass")
  db_cli -e "
    CREATE USER IF NOT EXISTS 'slurm'@'localhost';
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1';
    ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pw';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    FLUSH PRIVILEGES;"
}

start_slurmdbd() {
  running "$RUN/slurmdbd.pid" slurmdbd && return 0
  say "starting slurmdbd"; STARTED=1
  slurmdbd 9>&-
  retry 240 sacctmgr -n show cluster \
    || { show_tail "$LOG/slurmdbd.log"; die "slurmdbd did not answer within 60 s."; }
}

node_ready() { [[ "$(sinfo -h -N -o '%T')" =~ ^(idle|mixed|allocated|completing) ]]; }

start_slurm() {
  if ! running "$RUN/slurmctld.pid" slurmctld; then
    say "starting slurmctld"; STARTED=1
    slurmctld 9>&-  # forks into the background; registers the cluster with slurmdbd
  elif [ "$CONF_CHANGED" = 1 ]; then
    say "configuration changed: scontrol reconfigure"
    scontrol reconfigure
  fi
  retry 240 scontrol ping \
    || { show_tail "$LOG/slurmctld.log"; die "slurmctld did not answer within 60 s."; }
  if ! running "$RUN/slurmd.pid" slurmd; then
    say "starting slurmd"; STARTED=1
    slurmd 9>&-
  fi
  if ! retry 120 node_ready; then
    # A node that went away uncleanly may come back DOWN or DRAINED: resume it once.
    scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true
    retry 80 node_ready || { sinfo -N -l >&2; show_tail "$LOG/slurmd.log"
                             die "node $(hostname -s) is not ready after 50 s."; }
  fi
}

health_check() {
  local jid state="" i
  jid=$(timeout 120 sbatch --parsable --wait -p "$PARTITION" -D "$ROOT" -J hpo-health \
          -o /dev/null -e /dev/null --wrap 'srun true') \
    || die "the health-check job did not finish within 120 s (squeue: $(squeue -h 2>&1 | head -3))."
  jid=${jid%%;*}
  for ((i = 0; i < 80; i++)); do
    state=$(sacct -n -X -P -j "$jid" -o State 2>/dev/null | head -n1)
    [ "$state" = COMPLETED ] && break
    sleep 0.25
  done
  [ "$state" = COMPLETED ] || die "sacct shows job $jid as '${state:-nothing}', not COMPLETED."
  say "health check: job $jid COMPLETED"
}

# ------------------------------------------------------------------------------ commands
cmd_up() {
  need_root
  take_lock
  mkdir -p "$ROOT"/{etc,state,spool} "$RUN" "$LOG"
  install_packages
  write_config
  start_munge
  start_mariadb
  start_slurmdbd
  start_slurm
  if [ "$STARTED$CONF_CHANGED$FULL_CHECK" = 000 ]; then
    sacctmgr -n show cluster >/dev/null || die "slurmdbd does not answer (see $LOG/slurmdbd.log)."
    say "all daemons were running and answer"
  else
    health_check
  fi
  say "SLURM is up (partition '$PARTITION'). Use: eval \"\$($0 env)\""
}

cmd_down() {
  need_root
  [ -d "$ROOT" ] || { say "nothing to stop: $ROOT does not exist"; return 0; }
  take_lock
  local ids i
  if running "$RUN/slurmctld.pid" slurmctld && scontrol ping >/dev/null 2>&1; then
    # Cancel jobs first so that no slurmstepd or job process outlives the cluster.
    ids=$(squeue -h -o %A 2>/dev/null || true)
    if [ -n "$ids" ]; then
      say "cancelling jobs: $(echo "$ids" | tr '\n' ' ')"
      # shellcheck disable=SC2086
      scancel $ids || true
      for ((i = 0; i < 120; i++)); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.25; done
    fi
  fi
  stop_pid "$RUN/slurmd.pid" slurmd
  stop_pid "$RUN/slurmctld.pid" slurmctld
  stop_pid "$RUN/slurmdbd.pid" slurmdbd
  stop_pid "$RUN/mysqld.pid" mariadbd
  local ours
  if ours=$(cat "$RUN/munged.ours" 2>/dev/null) && [ -n "$ours" ] \
     && [ "$(pid_of /run/munge/munged.pid munged || true)" = "$ours" ]; then
    stop_pid /run/munge/munged.pid munged
  fi
  rm -f "$RUN/munged.ours"
  if [ "$PURGE" = 1 ]; then
    say "removing $ROOT"
    rm -rf "$ROOT"
  fi
  say "stopped"
}

cmd_status() {
  local all=0 pair name file p
  for pair in munged:/run/munge/munged.pid mariadbd:$RUN/mysqld.pid slurmdbd:$RUN/slurmdbd.pid \
              slurmctld:$RUN/slurmctld.pid slurmd:$RUN/slurmd.pid; do
    name=${pair%%:*}; file=${pair#*:}
    if p=$(pid_of "$file" "$name"); then
      printf '%-10s running (pid %s)\n' "$name" "$p"
    else
      printf '%-10s stopped\n' "$name"; all=1
    fi
  done
  if [ "$all" = 0 ]; then
    sinfo -h -o 'partition %P: %D node(s) %t' 2>/dev/null || all=1
  fi
  return "$all"
}

case "$CMD" in
  up)     cmd_up ;;
  down)   cmd_down ;;
  status) cmd_status ;;
  env)    printf 'export SLURM_CONF=%s\n' "$SLURM_CONF" ;;
esac
