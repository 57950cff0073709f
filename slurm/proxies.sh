#!/usr/bin/env bash
# Usage: sbatch [--array=1-512%64] [sbatch options] slurm/proxies.sh EXP.yaml [TIER]
#
# One RegMix proxy per array task: task i trains swarm/n<i>.json into proxies/n<i>/ of EXP.yaml's
# work_dir. TIER `transfer` trains the transfer check's larger proxies instead (transfer/swarm/n<i>.json
# into transfer/proxies/n<i>/, with the transfer: section's model and budget; `regmix-ds transfer`
# prints the line). With `proxy.group_size: G` in EXP.yaml, task i trains swarm members i..i+G-1 as one
# group in one process, and the array steps by G: `--array=1-512:16%8` for G = 16.
# `regmix-ds swarm --config` and `regmix-ds collect` print the exact line to submit.
# Safe to submit again: a task whose result.json exists exits at once. Some minutes before the
# time limit Slurm sends USR1 (--signal below); the proxy checkpoints, exits 75, and the task
# requeues itself to resume from that checkpoint. `scontrol requeue` works the same way.
# For GPUs add e.g. `--gpus-per-task=1` on the sbatch line; the trainer picks the device itself.
# Works from any directory: the command comes from the installed package, and a relative EXP.yaml
# resolves against the directory you submit from (where sbatch runs the job and writes its log).
# Environment (defaults in brackets):
#   REGMIX_VENV   a venv to activate first                 [none: regmix-ds must be on PATH]
#   REGMIX_DS     the regmix-ds command                    [regmix-ds]
#
#SBATCH --job-name=regmix-proxy
#SBATCH --array=1-512%64
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --signal=B:USR1@300
#SBATCH --output=regmix-proxy-%A_%a.log
set -euo pipefail

CONFIG=${1:?usage: sbatch slurm/proxies.sh EXP.yaml [TIER]}
TIER=${2:-swarm}
INDEX=${SLURM_ARRAY_TASK_ID:?run this as a Slurm array task (sbatch --array=...)}
if [ -n "${REGMIX_VENV:-}" ]; then source "$REGMIX_VENV/bin/activate"; fi
REGMIX_DS=${REGMIX_DS:-regmix-ds}
EXIT_REQUEUE=75

echo "proxy task $INDEX of $CONFIG ($TIER): job ${SLURM_ARRAY_JOB_ID}_${INDEX} on $(hostname), restart ${SLURM_RESTART_COUNT:-0}"
# The proxy runs in the background so this shell can pass Slurm's signals on to it.
$REGMIX_DS proxy --config "$CONFIG" --tier "$TIER" --task "$INDEX" &
child=$!
trap 'kill -USR1 "$child" 2>/dev/null || true' USR1 TERM
status=0
while true; do
  wait "$child" && status=0 || status=$?
  # wait returns early (status > 128) when a trapped signal arrives; keep waiting for the proxy.
  kill -0 "$child" 2>/dev/null || break
done
if [ "$status" -eq "$EXIT_REQUEUE" ]; then
  echo "proxy $INDEX checkpointed; requeueing ${SLURM_ARRAY_JOB_ID}_${INDEX}"
  # A requeue Slurm started itself (scontrol requeue, preemption) is already under way.
  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${INDEX}" || echo "proxy $INDEX: already being requeued"
  exit 0
fi
exit "$status"
