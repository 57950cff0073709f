#!/usr/bin/env bash
# Usage: sbatch --array=1-N[%M] [sbatch options] slurm/prepare.sh EXP.yaml   (data.shard_by: file)
#        sbatch [sbatch options] slurm/prepare.sh EXP.yaml                   (the whole prepare in one job)
#
# Tokenizes EXP.yaml's corpus. As an array (EXP.yaml with `data.shard_by: file`), task i runs
# `regmix-ds prepare --task i`: it tokenizes input file i (or chunk i, with data.chunk_bytes) into
# data/<domain>/{train,valid}-<k>.bin/.idx under the work_dir, then its stamp part-<k>.json, and
# the task that finds every part done writes the manifest. `regmix-ds prepare --config EXP.yaml
# --plan` lists the tasks and prints the exact line to submit (N is the number of tasks; train a
# tokenizer first with `--plan --train-tokenizer` if the config asks for one of its own).
# Without --array the job runs `regmix-ds prepare` whole: every task in turn, or, with the default
# data.shard_by: domain, one domain after another; existing Megatron shards are only registered
# (give it --output=regmix-prepare-%j.log: without an array Slurm writes %a as 4294967294).
# Safe to submit again, and requeue-safe: a task whose part is done exits at once ("nothing to do"),
# and a task killed mid-shard (time limit, preemption, `scontrol requeue`) starts that shard over,
# removing what the killed attempt left. A shard is renamed into place whole, so a half-written one
# is never used. Raise --cpus-per-task with data.num_proc (tokenizer processes per task).
# Works from any directory: the command comes from the installed package, and a relative EXP.yaml
# resolves against the directory you submit from (where sbatch runs the job and writes its log).
# Environment (defaults in brackets):
#   REGMIX_VENV   a venv to activate first                 [none: regmix-ds must be on PATH]
#   REGMIX_DS     the regmix-ds command                    [regmix-ds]
#
#SBATCH --job-name=regmix-prepare
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=1
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=regmix-prepare-%A_%a.log
set -euo pipefail

CONFIG=${1:?usage: sbatch [--array=1-N] slurm/prepare.sh EXP.yaml}
if [ -n "${REGMIX_VENV:-}" ]; then source "$REGMIX_VENV/bin/activate"; fi
REGMIX_DS=${REGMIX_DS:-regmix-ds}

if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  echo "prepare task $SLURM_ARRAY_TASK_ID of $CONFIG: job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on $(hostname), restart ${SLURM_RESTART_COUNT:-0}"
  exec $REGMIX_DS prepare --config "$CONFIG" --task "$SLURM_ARRAY_TASK_ID"
fi
echo "prepare $CONFIG: job ${SLURM_JOB_ID:-none} on $(hostname), restart ${SLURM_RESTART_COUNT:-0}"
exec $REGMIX_DS prepare --config "$CONFIG"
