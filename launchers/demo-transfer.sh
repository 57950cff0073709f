#!/usr/bin/env bash
# Usage: bash launchers/demo-transfer.sh [DEMO_DIR]
#
# The transfer check on the demo, after `bash launchers/demo.sh`: does the ranking of the demo's
# proxies (preset demo, 213k parameters) hold for proxies about 8 times larger (preset
# proxy-1m, the same 65,536 tokens)? `regmix-ds transfer` picks 16 swarm mixtures spread over
# the fit's predicted range plus the chosen and the natural mixture (the transfer tier), they
# train like any proxies, and a second `regmix-ds transfer` compares the two sizes' rankings.
# Finished proxies are reused, so a second run only recomputes the verdict.
#   DEMO_DIR    the demo's directory               (default demo/, or the first argument)
#   DEMO_JOBS   proxy processes at once            (default: the number of cores)
set -euo pipefail
cd "$(dirname "$0")/.."

source launchers/env.sh
DIR=${1:-${DEMO_DIR:-demo}}
JOBS=${DEMO_JOBS:-$(nproc)}
CONFIG=$DIR/exp.yaml
if [ ! -f "$DIR/work/best.json" ]; then
  echo "demo-transfer.sh: $DIR/work/best.json not found: run bash launchers/demo.sh $DIR first" >&2
  exit 2
fi
START=$SECONDS
regmix-ds transfer --config "$CONFIG"
regmix-ds run-swarm --config "$CONFIG" --tier transfer --jobs "$JOBS"
regmix-ds collect --config "$CONFIG" --tier transfer
regmix-ds transfer --config "$CONFIG"
echo "demo-transfer.sh: done in $((SECONDS - START)) s; details in $DIR/work/transfer/transfer.json"
