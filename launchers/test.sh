#!/usr/bin/env bash
# Usage: bash launchers/test.sh [pytest args...]
#
# Sets up a fresh machine (launchers/setup.sh), starts the localhost Slurm cluster when it can,
# and runs the whole test suite. Extra arguments go to pytest (e.g. `-m "not slow"`, `-k blend`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash launchers/setup.sh
source launchers/env.sh
if [ "$(id -u)" -eq 0 ] && command -v slurmctld >/dev/null; then
  eval "$(bash launchers/slurm-local.sh start)"
fi
exec python -m pytest "$@"
