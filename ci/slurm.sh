#!/usr/bin/env bash
# A single-node Slurm cluster on localhost, without systemd, for the `slurm` test tier and for
# developers:   ci/slurm.sh {install|up|down|status}   (as root; every verb is idempotent)
#
# Daemons: munged (as user munge), MariaDB (127.0.0.1 only) + slurmdbd so that `sacct` works
# (Snakemake's slurm executor needs it), slurmctld and `slurmd -N localhost`.
# State, spool, logs and pid files live under $BREED_SLURM_DIR (default /tmp/breed-slurm);
# slurm.conf and slurmdbd.conf are written to /etc/slurm (where every Slurm command looks) and
# carry a marker line: a slurm.conf without it (a real cluster's) is never overwritten.
#
# Environment: BREED_SLURM_DIR, BREED_SLURM_ACCOUNTING=0 (no slurmdbd/MariaDB: sacct disabled),
# BREED_SLURM_CPUS (CPUs the node advertises; default max(8, real): the end-to-end tests run a
# run job plus 2-rank client jobs at once, which must fit on a 2-core CI machine),
# BREED_SLURM_DB_PORT (default 3306).
set -euo pipefail

STATE=${BREED_SLURM_DIR:-/tmp/breed-slurm}
ACCOUNTING=${BREED_SLURM_ACCOUNTING:-1}
DB_PORT=${BREED_SLURM_DB_PORT:-3306}
CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by breed ci/slurm.sh"

log() { echo "slurm.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

alive() { # alive PIDFILE: the pid in the file is a running process
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.2 s
  local limit=$1 what=$2 i
  shift 2
  for ((i = 0; i < limit * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "timed out after ${limit}s waiting for $what (logs: $STATE/log)"
}

stop_pid() { # stop_pid PIDFILE NAME: TERM, wait up to 15 s, then KILL
  local pidfile=$1 name=$2 pid i
  if ! alive "$pidfile"; then rm -f "$pidfile"; return 0; fi
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 75; i++)); do
    kill -0 "$pid" 2>/dev/null || { log "stopped $name ($pid)"; rm -f "$pidfile"; return 0; }
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null || true
  log "killed $name ($pid)"
  rm -f "$pidfile"
}

install() {
  local need=0 b
  for b in sbatch slurmctld slurmd slurmdbd munged mariadbd; do
    command -v "$b" >/dev/null || need=1
  done
  [ "$need" = 0 ] && { log "packages already installed"; return 0; }
  [ "$(id -u)" = 0 ] || die "install needs root"
  # Package scripts must not start daemons of their own (MariaDB on 3306 would clash with ours).
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q slurm-wlm munge slurmdbd mariadb-server
  [ "$made_policy" = 1 ] && rm -f "$policy"
  log "installed $(dpkg-query -W -f '${Version}' slurmctld)"
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge
  runuser -u munge -- /usr/sbin/munged --force
  touch "$STATE/run/munged.ours" # `down` stops munged only if we started it
  wait_for 10 munged sh -c 'munge -n </dev/null | unmunge'
}

start_mariadb() {
  # MariaDB drops to user mysql before it opens its socket, pid and log files: give it a dir
  local data=$STATE/mysql run=$STATE/mysqld sock=$STATE/mysqld/mysql.sock
  mkdir -p "$run" && chown mysql:mysql "$run"
  if ! alive "$run/mysql.pid"; then
    if [ ! -d "$data/mysql" ]; then
      mkdir -p "$data" && chown mysql:mysql "$data"
      mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=socket \
        --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1
    fi
    setsid mariadbd --user=mysql --datadir="$data" --bind-address=127.0.0.1 --port="$DB_PORT" \
      --socket="$sock" --pid-file="$run/mysql.pid" --skip-name-resolve \
      --log-error="$run/mariadb.log" </dev/null >/dev/null 2>&1 &
    wait_for 60 MariaDB mariadb --socket="$sock" -u root -e "SELECT 1"
  fi
  if [ ! -s "$STATE/db.password" ]; then
    (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$STATE/db.password")
  fi
  local pw
  pw=$(cat "$STATE/db.password")
  mariadb --socket="$sock" -u root <<SQL
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pw';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
SQL
}

write_dbd_conf() {
  (
    umask 077
    cat >"$DBD_CONF" <<EOF
$MARK
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(cat "$STATE/db.password")
StorageLoc=slurm_acct_db
EOF
  )
  chmod 600 "$DBD_CONF"
}

write_conf() {
  local cpus mem real acct
  real=$(nproc)
  cpus=${BREED_SLURM_CPUS:-$((real > 8 ? real : 8))}
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  if [ "$ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
  else
    acct="AccountingStorageType=accounting_storage/none"
  fi
  cat >"$CONF" <<EOF
$MARK
ClusterName=breed
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no cgroups without systemd: track processes through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# CPUs only: memory as a consumable would give each job the whole node by default
SelectTypeParameters=CR_CPU
# the node may advertise more CPUs than it has (see BREED_SLURM_CPUS)
SlurmdParameters=config_overrides
# by default pending batch jobs wait up to 3 s (batch_sched_delay) and scheduling runs at most
# every 2 s: a one-node test cluster can afford to start jobs at once
SchedulerParameters=sched_min_interval=200000,batch_sched_delay=0
MpiDefault=none
ReturnToService=2
KillWait=5
InactiveLimit=0
$acct
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

node_idle() { sinfo -h -N -o %t | grep -qx 'idle\|mix\|alloc'; }

up() {
  [ "$(id -u)" = 0 ] || die "up needs root"
  install
  local f
  for f in "$CONF" "$DBD_CONF"; do
    if [ -e "$f" ] && ! grep -qxF "$MARK" "$f"; then
      die "$f exists and was not written by this script: not touching it"
    fi
  done
  mkdir -p "$STATE"/{spool/ctld,spool/d,log,run}
  chmod 755 "$STATE"
  start_munge
  if [ "$ACCOUNTING" = 1 ]; then
    start_mariadb
    write_dbd_conf
  fi
  write_conf
  if [ "$ACCOUNTING" = 1 ] && ! alive "$STATE/run/slurmdbd.pid"; then
    slurmdbd
    wait_for 30 slurmdbd sacctmgr -n show cluster
    sacctmgr -i add cluster breed >/dev/null 2>&1 || true
  fi
  if ! alive "$STATE/run/slurmctld.pid"; then
    slurmctld
  fi
  wait_for 30 slurmctld scontrol ping
  if ! alive "$STATE/run/slurmd.pid"; then
    slurmd -N localhost
  fi
  if ! (wait_for 20 "node localhost idle" node_idle 2>/dev/null); then
    # a node left DOWN by an unclean stop of an earlier cluster
    scontrol update nodename=localhost state=resume || true
    wait_for 20 "node localhost idle" node_idle
  fi
  log "up: $(sinfo -h -N -o '%N %t cpus=%c') (state in $STATE)"
}

down() {
  if [ -d "$STATE/run" ]; then
    if alive "$STATE/run/slurmctld.pid"; then
      # jobs' processes would outlive slurmd (linuxproc tracking, no cgroups)
      timeout 20 scancel --state=PENDING,RUNNING,SUSPENDED --full -u root 2>/dev/null || true
      local ids
      ids=$(timeout 10 squeue -h -o %i 2>/dev/null || true)
      [ -n "$ids" ] && { timeout 20 scancel --full $ids 2>/dev/null || true; sleep 1; }
    fi
    stop_pid "$STATE/run/slurmd.pid" slurmd
    stop_pid "$STATE/run/slurmctld.pid" slurmctld
    stop_pid "$STATE/run/slurmdbd.pid" slurmdbd
    stop_pid "$STATE/mysqld/mysql.pid" mariadbd
    if [ -e "$STATE/run/munged.ours" ]; then
      stop_pid /run/munge/munged.pid munged
      rm -f "$STATE/run/munged.ours"
    fi
  fi
  log "down"
}

status() {
  local rc=0 f
  for f in run/slurmctld run/slurmd run/slurmdbd mysqld/mysql; do
    if alive "$STATE/$f.pid"; then
      echo "${f#*/}: running ($(cat "$STATE/$f.pid"))"
    else
      echo "${f#*/}: stopped"
      [ "$f" = run/slurmdbd ] || [ "$f" = mysqld/mysql ] || rc=1
    fi
  done
  [ "$rc" = 0 ] && sinfo -N -o '%N %t %c'
  return "$rc"
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 {install|up|down|status}" >&2; exit 2 ;;
esac
