#!/usr/bin/env bash
# Cluster tier of CI (called by .ci/run; also how a developer runs it, as root on Debian 12):
# install and start a local Slurm and OAR, run the tests marked `slurm` or `oar`, and stop the
# daemons whatever happens (test failure, error, Ctrl-C). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "cluster-tests.sh: needs root (it starts daemons)" >&2; exit 1; }
[ -x .venv/bin/python ] || { echo "cluster-tests.sh: no .venv: see the README" >&2; exit 1; }

stop_all() {
  local rc=$?
  trap - EXIT
  ci/oar.sh down || rc=1
  ci/slurm.sh down || rc=1
  exit "$rc"
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$(date +%s)
ci/slurm.sh up
# OAR jobs run as an unprivileged user: it must reach the venv's interpreter (pyenv keeps it
# under /root)
BREED_OAR_SHARE="$PWD/.venv/bin/python" ci/oar.sh up
echo "cluster-tests.sh: daemons up in $(($(date +%s) - start)) s"

.venv/bin/python -m pytest -m "slurm or oar" "$@"
