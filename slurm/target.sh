#!/usr/bin/env bash
# Usage: sbatch [--nodes=N --ntasks-per-node=G --gpus-per-node=G] slurm/target.sh TRAIN_ARGS...
#   e.g. sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 slurm/target.sh \
#          --deepspeed_config zero3_best.json --manifest work/data/manifest.json --preset target-1b \
#          --seq-len 2048 --train-tokens 25000000000 --schedule cosine --warmup 1000 --out target --resume auto
#
# The target run on one node or many: srun starts one `regmix-ds train` process per task (one per
# GPU, or one per node on CPUs), each finding its rank from srun's SLURM_* variables; rank 0's node
# is the rendezvous host. TRAIN_ARGS are train.py's flags (`regmix-ds train --help`); relative paths
# in them resolve against the directory you submit from (sbatch runs the job there). The command
# comes from the installed package, so this works from any directory.
# Some minutes before the time limit Slurm sends USR1: every rank checkpoints, the run exits 75 and
# the job requeues itself; with --resume auto the requeued job continues from that checkpoint.
# Environment (defaults in brackets):
#   REGMIX_VENV   a venv to activate first            [none: regmix-ds must be on PATH]
#   REGMIX_DS     the regmix-ds command               [regmix-ds]
#   MASTER_PORT   rendezvous port                     [20000 + job id mod 20000]
#
#SBATCH --job-name=regmix-target
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --signal=B:USR1@600
#SBATCH --open-mode=append
#SBATCH --output=regmix-target-%j.log
set -euo pipefail

if [ -n "${REGMIX_VENV:-}" ]; then source "$REGMIX_VENV/bin/activate"; fi
REGMIX_DS=${REGMIX_DS:-regmix-ds}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT
EXIT_REQUEUE=75

echo "target: $SLURM_NTASKS task(s) on $SLURM_JOB_NODELIST, rendezvous $MASTER_ADDR:$MASTER_PORT, restart ${SLURM_RESTART_COUNT:-0}"
# srun runs in the background so this shell can pass Slurm's signals on to the ranks.
srun --kill-on-bad-exit=1 $REGMIX_DS train "$@" &
child=$!
trap 'kill -USR1 "$child" 2>/dev/null || true' USR1 TERM
status=0
while true; do
  wait "$child" && status=0 || status=$?
  # wait returns early (status > 128) when a trapped signal arrives; keep waiting for the ranks.
  kill -0 "$child" 2>/dev/null || break
done
if [ "$status" -eq "$EXIT_REQUEUE" ]; then
  echo "target checkpointed; requeueing $SLURM_JOB_ID"
  # A requeue Slurm started itself (scontrol requeue, preemption) is already under way.
  scontrol requeue "$SLURM_JOB_ID" || echo "target: already being requeued"
  exit 0
fi
exit "$status"
