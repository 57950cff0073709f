#!/usr/bin/env bash
# Usage: bash launchers/test.sh [pytest args...]
#
# Sets up a fresh machine (launchers/setup.sh), starts the localhost Slurm cluster when it can,
# checks the code with ruff, and runs the test suite on TEST_WORKERS pytest-xdist workers.
# Extra arguments go to pytest:
#   bash launchers/test.sh                      # everything (what CI runs)
#   bash launchers/test.sh -m "not slow"        # the quick tier, for the edit-test loop
#   bash launchers/test.sh tests/test_blend.py  # one file
# Settings from the environment:
#   TEST_WORKERS  pytest-xdist workers (default: one more than the cores; 0 runs in this process).
#                 The extra worker fills the time the others spend waiting on Slurm and on the
#                 processes they start, and where something else holds a core, that core's share of
#                 the work is smaller (the README's Tests section has the times measured with it).
set -euo pipefail
cd "$(dirname "$0")/.."

bash launchers/setup.sh
source launchers/env.sh
if [ "$(id -u)" -eq 0 ] && command -v slurmctld >/dev/null; then
  eval "$(bash launchers/slurm-local.sh start)"
fi
ruff check .
# worksteal: a worker that runs out of tests takes half of a busy one's queue, so none finishes
# alone with a backlog (the slow tests run first: tests/conftest.py).
exec python -m pytest -n "${TEST_WORKERS:-$(( $(nproc) + 1 ))}" --dist worksteal "$@"
