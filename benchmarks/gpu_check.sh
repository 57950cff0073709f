#!/usr/bin/env bash
# Usage: bash benchmarks/gpu_check.sh [OUT.json]
#
# The GPU check: on a machine with one GPU, in under 8 minutes, writes one JSON file with
#   sweep         proxy groups K = 1..64 (proxy-1m, vocabulary 50,432, sequence 2048, bf16):
#                 tokens/s, MFU against the measured bf16 matmul peak, peak memory, the planner's predictions
#   target        20 steps of target-1b under ZeRO-3 bf16 (tokens/s, MFU, memory)
#   resume        a ZeRO-3 bf16 run killed after step 6 and resumed: the uninterrupted losses, and every
#                 class its checkpoints pickle on the weights_only allow-list
#   group_resume  the same for a group of 4 proxies
# (benchmarks/gpu_check.py says exactly what each does). The JSON is rewritten after each section.
# Environment (defaults in brackets):
#   GPU_CHECK_SMALL    1: the dry run, every section on the CPU at toy sizes        [unset: the GPU check]
#   GPU_CHECK_SECTIONS sections to run                     [sweep target resume group_resume]
#   GPU_CHECK_TIMEOUT  seconds before the check is stopped (what it finished stays) [600]
#   REGMIX_VENV        a venv to activate first                                     [launchers/env.sh's]
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-gpu_check.json}
source launchers/env.sh
if [ -n "${REGMIX_VENV:-}" ]; then source "$REGMIX_VENV/bin/activate"; fi
SMALL=()
if [ -n "${GPU_CHECK_SMALL:-}" ]; then SMALL=(--small); export DS_ACCELERATOR=cpu; fi
read -r -a SECTIONS <<< "${GPU_CHECK_SECTIONS:-sweep target resume group_resume}"
exec timeout "${GPU_CHECK_TIMEOUT:-600}" python benchmarks/gpu_check.py --out "$OUT" "${SMALL[@]}" \
  --sections "${SECTIONS[@]}"
