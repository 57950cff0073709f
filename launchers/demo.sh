#!/usr/bin/env bash
# Usage: bash launchers/demo.sh [DEMO_DIR]
#
# The whole RegMix loop on the embedded synthetic corpus, on this machine (2 CPU cores do):
# synth -> tokenizer + prepare -> swarm round 1 -> proxies -> collect -> fit -> round 2 near the
# fit's best -> proxies -> collect -> fit on both rounds -> simulate -> best.json in a ZeRO-3
# config -> a 2-rank `deepspeed train.py` target run -> verify (the chosen mixture against the
# natural one and the swarm, trained for real) -> report. Every stage reuses finished work, so a
# second run is quick. Settings from the environment:
#   DEMO_DIR    where everything goes              (default demo/, or the first argument)
#   DEMO_SEED   corpus seed                        (default 0)
#   DEMO_JOBS   proxy processes at once, each a group of proxy.group_size (default: the number of cores)
#   DEMO_PORT   rendezvous port of the target run  (default 29517)
#   DEMO_PROXIES  proxies in all, half per round   (default 32)
#   DEMO_DOCS   documents per synthetic domain     (default 1000)
#   DEMO_ORACLE an oracle.json for this corpus (benchmarks/rounds.py writes one per seed): verify
#               then reports each mixture's regret against the best loss the oracle search measured
set -euo pipefail
cd "$(dirname "$0")/.."

bash launchers/setup.sh
source launchers/env.sh
DIR=${1:-${DEMO_DIR:-demo}}
SEED=${DEMO_SEED:-0}
JOBS=${DEMO_JOBS:-$(nproc)}
PORT=${DEMO_PORT:-29517}
DOCS=${DEMO_DOCS:-1000}
PROXIES=${DEMO_PROXIES:-32}
FIRST=$((PROXIES / 2))
ORACLE_FLAGS=()
if [ -n "${DEMO_ORACLE:-}" ]; then ORACLE_FLAGS=(--oracle "$DEMO_ORACLE"); fi
CONFIG=$DIR/exp.yaml
WORK=$DIR/work
START=$SECONDS

stage() { printf '\n== %s  [%ds] ==\n' "$*" $((SECONDS - START)); }

train_round() {  # the proxies of the swarm so far (finished ones are skipped), their table and a fit
  regmix-ds run-swarm --config "$CONFIG" --jobs "$JOBS"
  regmix-ds collect --config "$CONFIG"
  regmix-ds fit --config "$CONFIG"
}

stage "1/8 synthetic corpus"
if [ -f "$CONFIG" ]; then echo "$CONFIG exists"; else
  regmix-ds synth --out "$DIR" --seed "$SEED" --docs-per-domain "$DOCS" --deepspeed-config ds_configs/zero0.json
fi
stage "2/8 tokenizer and token shards"
regmix-ds prepare --config "$CONFIG" --train-tokenizer
stage "3/8 round 1: $FIRST random mixtures, their proxies ($JOBS processes at a time), collect, fit"
if [ -f "$WORK/swarm/swarm.csv" ]; then echo "$WORK/swarm exists"; else regmix-ds swarm --config "$CONFIG" --n "$FIRST"; fi
train_round
stage "4/8 round 2: $((PROXIES - FIRST)) mixtures near the fit's best, their proxies, collect, fit on both rounds"
if grep -q '"round": 2' "$WORK/swarm/n$((FIRST + 1)).json" 2>/dev/null; then echo "round 2 exists"; else
  regmix-ds swarm --config "$CONFIG" --next-round --n "$((PROXIES - FIRST))"
fi
train_round
stage "5/8 simulate -> best.json and its ZeRO-3 config"
regmix-ds simulate --config "$CONFIG" --deepspeed-config ds_configs/zero3.json --out-config "$WORK/zero3_best.json"
stage "6/8 target run: deepspeed train.py --mixture best.json, 2 ranks, ZeRO-3"
deepspeed --num_gpus 2 --master_port "$PORT" train.py --mixture "$WORK/best.json" \
  --deepspeed_config "$WORK/zero3_best.json" --manifest "$WORK/data/manifest.json" \
  --preset demo --seq-len 128 --steps 40 --warmup 4 --schedule cosine --out "$WORK/target" --resume auto --log-interval 10
stage "7/8 verify the answer"
regmix-ds verify --config "$CONFIG" --reference "$DIR/target_composition.json" --jobs "$JOBS" "${ORACLE_FLAGS[@]}"
stage "8/8 report"
regmix-ds report --config "$CONFIG" --out "$WORK/report"
stage "done: $WORK/report/summary.md"
