#!/usr/bin/env bash
# A measured sweep of `mini` pre-training recipes on one GPU: several points train concurrently
# (separate processes sharing the GPU), each for a fixed wall budget, then each base is evaluated on
# ID op2-10 and OOD-edge op11-14 (uniform per op, n samples) and one table row per point is printed
# (benchmarks/sweep_mini.py; `python benchmarks/sweep_mini.py list` shows the points).
#
#   bash benchmarks/gpu_sweep_mini.sh            # on the device tool: writes $OUT/sweep/{sweep.md,sweep.json,<point>/}
#
# Knobs (environment): MINUTES training minutes per point (default 3; each point first probes its
# speed) or TOKENS (a token budget per point instead), POINTS (names; default and all expand in place,
# e.g. default,d12_bs32k), PARALLEL (6),
# EVAL_OPS (2-14), EVAL_PER_OP (16), EVAL_N (16), EVAL_MAX_NEW (768), EVAL_BATCH (32),
# DATA_SET (pre-training fields for every point, default "data.workers=2"; with the token-shard
# pipeline: "data.source=tokens data.workers=2"), TOKENIZER (default: the carried E1 tokenizer
# runs/e1_seed/E1_mini/tokenizer/tokenizer.json, else the default tokenizer), DEADLINE (seconds, 0 = none).
#
# CPU smoke test (~5 min on a loaded 2-core machine):
#   PY=.venv/bin/python OUT=/tmp/sweep_smoke MINUTES=0.1 POINTS=d12_lr2e-3,w512_lr2e-3 PARALLEL=2 \
#   EVAL_OPS=2,12 EVAL_PER_OP=1 EVAL_N=2 EVAL_MAX_NEW=32 EVAL_BATCH=2 PROBE_STEPS=2 \
#   DATA_SET="data.num_threads=0 model.dtype=float32 batch_size=2 per_device_batch=0 seq_len=512 eval.per_bucket=2 eval.batch_size=2" \
#   bash benchmarks/gpu_sweep_mini.sh
set -u
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
OUT=${OUT:-$REPO/out}/sweep
mkdir -p "$OUT"
TOK=${TOKENIZER:-$REPO/runs/e1_seed/E1_mini/tokenizer/tokenizer.json}
[ -f "$TOK" ] || TOK=""
SETS=()
for kv in ${DATA_SET-data.workers=2}; do SETS+=(--set "$kv"); done
BUDGET=(--minutes "${MINUTES:-3}")
[ -n "${TOKENS:-}" ] && BUDGET=(--tokens "$TOKENS")
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" benchmarks/sweep_mini.py run --out "$OUT" --points "${POINTS:-default}" --parallel "${PARALLEL:-6}" \
  "${BUDGET[@]}" --probe-steps "${PROBE_STEPS:-30}" --tokenizer "$TOK" --deadline "${DEADLINE:-0}" \
  --eval-ops "${EVAL_OPS:-2-14}" --eval-per-op "${EVAL_PER_OP:-16}" --eval-n "${EVAL_N:-16}" \
  --eval-max-new "${EVAL_MAX_NEW:-768}" --eval-batch "${EVAL_BATCH:-32}" "${SETS[@]}"
