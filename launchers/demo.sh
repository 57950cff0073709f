#!/usr/bin/env bash
# Usage: bash launchers/demo.sh [DEMO_DIR]
#
# The whole RegMix loop on the embedded synthetic corpus, on this machine (2 CPU cores do):
# synth -> tokenizer + prepare -> swarm -> proxies -> collect -> fit -> simulate -> best.json in a
# ZeRO-3 config -> a 2-rank `deepspeed train.py` target run -> verify (the chosen mixture against
# the natural one and the swarm, trained for real) -> report. Every stage reuses finished work,
# so a second run is quick. Settings from the environment:
#   DEMO_DIR    where everything goes              (default demo/, or the first argument)
#   DEMO_SEED   corpus seed                        (default 0)
#   DEMO_JOBS   proxy processes at once, each a group of proxy.group_size (default: the number of cores)
#   DEMO_PORT   rendezvous port of the target run  (default 29517)
#   DEMO_PROXIES  swarm size                       (default: exp.yaml's, 32)
#   DEMO_DOCS   documents per synthetic domain     (default 1000)
set -euo pipefail
cd "$(dirname "$0")/.."

bash launchers/setup.sh
source launchers/env.sh
DIR=${1:-${DEMO_DIR:-demo}}
SEED=${DEMO_SEED:-0}
JOBS=${DEMO_JOBS:-$(nproc)}
PORT=${DEMO_PORT:-29517}
DOCS=${DEMO_DOCS:-1000}
SWARM_FLAGS=()
if [ -n "${DEMO_PROXIES:-}" ]; then SWARM_FLAGS=(--n "$DEMO_PROXIES"); fi
CONFIG=$DIR/exp.yaml
WORK=$DIR/work
START=$SECONDS

stage() { printf '\n== %s  [%ds] ==\n' "$*" $((SECONDS - START)); }

stage "1/9 synthetic corpus"
if [ -f "$CONFIG" ]; then echo "$CONFIG exists"; else
  regmix-ds synth --out "$DIR" --seed "$SEED" --docs-per-domain "$DOCS" --deepspeed-config ds_configs/zero0.json
fi
stage "2/9 tokenizer and token shards"
regmix-ds prepare --config "$CONFIG" --train-tokenizer
stage "3/9 swarm of mixtures"
if [ -f "$WORK/swarm/swarm.csv" ]; then echo "$WORK/swarm exists"; else regmix-ds swarm --config "$CONFIG" "${SWARM_FLAGS[@]}"; fi
stage "4/9 proxies ($JOBS processes at a time)"
regmix-ds run-swarm --config "$CONFIG" --jobs "$JOBS"
stage "5/9 collect"
regmix-ds collect --config "$CONFIG"
stage "6/9 fit"
regmix-ds fit --config "$CONFIG"
stage "7/9 simulate -> best.json and its ZeRO-3 config"
regmix-ds simulate --config "$CONFIG" --deepspeed-config ds_configs/zero3.json --out-config "$WORK/zero3_best.json"
stage "8/9 target run: deepspeed train.py --mixture best.json, 2 ranks, ZeRO-3"
deepspeed --num_gpus 2 --master_port "$PORT" train.py --mixture "$WORK/best.json" \
  --deepspeed_config "$WORK/zero3_best.json" --manifest "$WORK/data/manifest.json" \
  --preset demo --seq-len 128 --steps 40 --warmup 4 --schedule cosine --out "$WORK/target" --resume auto --log-interval 10
stage "9/9 verify the answer and report"
regmix-ds verify --config "$CONFIG" --reference "$DIR/target_composition.json" --jobs "$JOBS"
regmix-ds report --config "$CONFIG" --out "$WORK/report"
stage "done: $WORK/report/summary.md"
