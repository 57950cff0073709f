#!/usr/bin/env bash
# Usage: sbatch [--nodes=N --ntasks-per-node=G --gpus-per-node=G] slurm/target.sh TRAIN_ARGS...
#   e.g. sbatch --nodes=4 --ntasks-per-node=8 --gpus-per-node=8 slurm/target.sh \
#          --mixture best.json --manifest work/data/manifest.json \
#          --deepspeed_config ds_configs/zero3_gpu_bf16.json --preset target-1b --seq-len 2048 \
#          --train-tokens 25000000000 --schedule cosine --warmup 1000 --out target --resume auto
#
# The multi-node target run: one train.py process per task (one per GPU, or one per node on
# CPUs), started by srun. Rank discovery comes from srun's SLURM_* variables; rank 0's node is
# the rendezvous host, and the port is derived from the job id so jobs sharing a node differ.
# Environment (defaults in brackets):
#   REGMIX_VENV   a venv to activate first            [none: python with regmix-ds on PATH]
#   TRAIN_PY      the training entry point            [train.py beside this script's directory]
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
SUBMIT_DIR=${SLURM_SUBMIT_DIR:-$(pwd)}
TRAIN_PY=${TRAIN_PY:-$SUBMIT_DIR/train.py}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT
EXIT_REQUEUE=75

echo "target: $SLURM_NTASKS task(s) on $SLURM_JOB_NODELIST, rendezvous $MASTER_ADDR:$MASTER_PORT"
srun --kill-on-bad-exit=1 python "$TRAIN_PY" "$@" &
child=$!
trap 'kill -USR1 "$child" 2>/dev/null || true' USR1 TERM
status=0
while true; do
  wait "$child" && status=0 || status=$?
  kill -0 "$child" 2>/dev/null || break
done
if [ "$status" -eq "$EXIT_REQUEUE" ]; then
  scontrol requeue "$SLURM_JOB_ID" || echo "target: already being requeued"
  exit 0
fi
exit "$status"
