#!/usr/bin/env bash
# A single-node OAR 2.5 cluster on localhost, without systemd, for the `oar` test tier and for
# developers:   ci/oar.sh {install|up|down|status}   (as root; every verb is idempotent)
#
# Debian's OAR 2.5.9 with the PostgreSQL backend (its MySQL schema fails on MariaDB 10.11):
# PostgreSQL started with pg_ctlcluster, the OAR database made by `oar-database --create`,
# the node's dedicated sshd (port 6667, 127.0.0.1 only), the server (Almighty), and one node
# `localhost` with $BREED_OAR_CORES core resources (default max(8, real): the end-to-end tests
# run a run job plus 2-rank clients at once on a 2-core CI machine).
# OAR refuses jobs from root (admission rule): jobs are submitted by the user $BREED_OAR_USER
# (default breedoar, created here); the breed OAR backend runs oarsub as that user when it runs
# as root and `launcher.oar.submit_user` (or BREED_OAR_SUBMIT_USER) names it.
# /etc/oar/oar.conf is edited in place (a copy of the original is kept as oar.conf.breed-orig):
# DB passwords, cpusets off (no cgroups here), scheduler run on every submission (otherwise a
# job submitted within 5 s of the last scheduling waits ~10 s for the next one).
# Pid files and logs: $BREED_OAR_DIR (default /tmp/breed-oar); OAR's own log: /var/log/oar.log.
# BREED_OAR_SHARE: colon-separated paths the job user must reach (e.g. the venv's python, which
# pyenv keeps under /root): each directory above them gets an ACL granting that user traverse
# (x) only.
set -euo pipefail

STATE=${BREED_OAR_DIR:-/tmp/breed-oar}
JOB_USER=${BREED_OAR_USER:-breedoar}
OAR_CONF=/etc/oar/oar.conf
MARK="# edited by breed ci/oar.sh"

log() { echo "oar.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...: poll every 0.2 s
  local limit=$1 what=$2 i
  shift 2
  for ((i = 0; i < limit * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  die "timed out after ${limit}s waiting for $what (logs: $STATE, /var/log/oar.log)"
}

stop_pid() { # stop_pid PIDFILE NAME [group]: TERM (the process group with "group"), then KILL
  local pidfile=$1 name=$2 target pid i
  if ! alive "$pidfile"; then rm -f "$pidfile"; return 0; fi
  pid=$(cat "$pidfile")
  target=$pid
  if [ "${3:-}" = group ]; then target=-$(ps -o pgid= -p "$pid" | tr -d ' '); fi
  kill -- "$target" 2>/dev/null || true
  for ((i = 0; i < 75; i++)); do
    kill -0 "$pid" 2>/dev/null || { log "stopped $name ($pid)"; rm -f "$pidfile"; return 0; }
    sleep 0.2
  done
  kill -9 -- "$target" 2>/dev/null || true
  log "killed $name ($pid)"
  rm -f "$pidfile"
}

pg_version() { pg_lsclusters -h 2>/dev/null | awk 'NR == 1 {print $1}'; }

install() {
  if command -v oarsub >/dev/null && command -v Almighty >/dev/null &&
    command -v pg_ctlcluster >/dev/null && command -v setfacl >/dev/null; then
    log "packages already installed"
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "install needs root"
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then # package scripts must not start daemons themselves
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q acl postgresql oar-server oar-server-pgsql oar-node oar-user oar-user-pgsql
  [ "$made_policy" = 1 ] && rm -f "$policy"
  log "installed oar-server $(dpkg-query -W -f '${Version}' oar-server)"
}

set_conf() { # set_conf KEY VALUE: set (or add) KEY="VALUE" in oar.conf
  if grep -q "^$1=" "$OAR_CONF"; then
    sed -i "s|^$1=.*|$1=\"$2\"|" "$OAR_CONF"
  else
    echo "$1=\"$2\"" >>"$OAR_CONF"
  fi
}

configure() {
  if ! grep -qxF "$MARK" "$OAR_CONF" && ! grep -q '^DB_BASE_PASSWD=""' "$OAR_CONF"; then
    die "$OAR_CONF is configured already (not by this script): not touching it"
  fi
  [ -e "$OAR_CONF.breed-orig" ] || cp -p "$OAR_CONF" "$OAR_CONF.breed-orig"
  grep -qxF "$MARK" "$OAR_CONF" || echo "$MARK" >>"$OAR_CONF"
  local key
  for key in DB_BASE_PASSWD DB_BASE_PASSWD_RO; do # the pg_hba default wants passwords on TCP
    if grep -q "^$key=\"\"" "$OAR_CONF"; then
      set_conf "$key" "$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
    fi
  done
  # no cgroups without systemd: no cpusets (the job resource manager still cleans up jobs)
  sed -i 's/^CPUSET_PATH=/#CPUSET_PATH=/' "$OAR_CONF"
  set_conf SCHEDULER_MIN_TIME_BETWEEN_2_CALLS 0
}

start_postgres() {
  local v
  v=$(pg_version)
  if [ -z "$v" ]; then
    v=$(ls /usr/lib/postgresql | sort -n | tail -1)
    pg_createcluster "$v" main >/dev/null
  fi
  if ! pg_lsclusters -h | awk -v v="$v" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
    pg_ctlcluster "$v" main start
    touch "$STATE/postgres.ours" # `down` stops PostgreSQL only if we started it
  fi
  wait_for 30 PostgreSQL runuser -u postgres -- psql -qAtc 'SELECT 1'
}

add_resources() {
  oarnodes -l 2>/dev/null | grep -qx localhost && return 0
  local cores i
  cores=${BREED_OAR_CORES:-$(($(nproc) > 8 ? $(nproc) : 8))}
  oarproperty -a cpu >/dev/null 2>&1 || true
  oarproperty -a core >/dev/null 2>&1 || true
  for ((i = 0; i < cores; i++)); do
    oarnodesetting -a -h localhost -p cpu=0 -p core="$i" -p cpuset="$i" >/dev/null
  done
}

share_paths() { # let the job user traverse the directories above each path of BREED_OAR_SHARE
  local path dir sub
  local IFS=:
  for path in ${BREED_OAR_SHARE:-}; do
    [ -e "$path" ] || continue
    dir=$(dirname "$(readlink -f "$path")")
    sub=""
    IFS=/
    for part in ${dir#/}; do # top down: once /root is open, what is below needs nothing
      sub="$sub/$part"
      if ! runuser -u "$JOB_USER" -- test -x "$sub"; then
        setfacl -m "u:$JOB_USER:x" "$sub"
        log "granted $JOB_USER traverse (x) on $sub"
      fi
    done
    IFS=:
  done
}

node_alive() { oarnodes -s localhost | grep -q Alive; }

up() {
  [ "$(id -u)" = 0 ] || die "up needs root"
  install
  mkdir -p "$STATE"
  chmod 755 "$STATE"
  configure
  start_postgres
  if ! oar-database --check >/dev/null 2>&1; then
    oar-database --create --db-is-local -y >"$STATE/oar-database.log" 2>&1 ||
      die "oar-database --create failed: see $STATE/oar-database.log"
  fi
  id "$JOB_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$JOB_USER"
  share_paths
  if ! alive "$STATE/node-sshd.pid"; then
    mkdir -p /run/sshd
    /usr/sbin/sshd -f /etc/oar/sshd_config -o PidFile="$STATE/node-sshd.pid" \
      -o ListenAddress=127.0.0.1 -E "$STATE/node-sshd.log"
  fi
  # oar-server writes this pid file itself; Almighty leads the process group of its helpers
  if ! alive /var/run/oar-server.pid; then
    /usr/sbin/oar-server
  fi
  wait_for 20 "OAR server" sh -c 'ss -ltn | grep -q ":6666 "'
  add_resources
  wait_for 20 "node localhost Alive" node_alive
  log "up: $(oarnodes -s localhost | grep -c Alive) cores Alive on localhost," \
    "jobs run as $JOB_USER (state in $STATE)"
}

down() {
  if alive /var/run/oar-server.pid; then
    # jobs' processes outlive the server: delete them first and give OAR time to kill them
    local ids i
    ids=$(oarstat -J 2>/dev/null | python3 -c 'import json,sys; print(*json.load(sys.stdin))' \
      2>/dev/null || true)
    if [ -n "$ids" ]; then
      # shellcheck disable=SC2086
      oardel $ids >/dev/null 2>&1 || true
      for ((i = 0; i < 75; i++)); do
        [ -z "$(oarstat -J 2>/dev/null | python3 -c 'import json,sys; print(*json.load(sys.stdin))' \
          2>/dev/null)" ] && break
        sleep 0.2
      done
    fi
    stop_pid /var/run/oar-server.pid "oar-server (Almighty)" group
  fi
  stop_pid "$STATE/node-sshd.pid" "oar-node sshd"
  if [ -e "$STATE/postgres.ours" ]; then
    pg_ctlcluster "$(pg_version)" main stop || true
    rm -f "$STATE/postgres.ours"
    log "stopped PostgreSQL"
  fi
  log "down"
}

status() {
  local rc=0
  if alive /var/run/oar-server.pid; then
    echo "oar-server: running ($(cat /var/run/oar-server.pid))"
  else
    echo "oar-server: stopped"
    rc=1
  fi
  if alive "$STATE/node-sshd.pid"; then
    echo "oar-node sshd: running ($(cat "$STATE/node-sshd.pid"))"
  else
    echo "oar-node sshd: stopped"
    rc=1
  fi
  pg_lsclusters -h 2>/dev/null | awk '{print "postgresql " $1 "/" $2 ": " $4}'
  [ "$rc" = 0 ] && oarnodes -s
  return "$rc"
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 {install|up|down|status}" >&2; exit 2 ;;
esac
