#!/usr/bin/env bash
# E1 at mini scale end to end on one GPU: tokenizer -> base -> the four fixed RL regimes and the
# edge run -> evaluation of every checkpoint on ops 2-20 -> the report; everything a reader needs
# lands in one folder: results.json (the eval's combined schema, base checkpoint named "base"),
# report.md, the figures (passk_curves, per_op, error_types, deltas, rl_curves), phases.json (what
# each run did, its time and limit, the compile cache line) and run.json {machine, wall_seconds,
# command}. Hard time limits per phase and a deadline for the whole (benchmarks/run_experiment.py):
# a run past its limit is stopped with SIGTERM (training saves a checkpoint; an evaluation keeps its
# finished prompts, marked partial in the report), so the script never overruns.
#
#   bash benchmarks/gpu_e1_mini.sh                  # on the device tool: writes to $OUT
#   OUT=/tmp/e1 DEADLINE=420 RL_STEPS=10 bash benchmarks/gpu_e1_mini.sh   # a shorter run
#
# Knobs (environment; empty = the experiment grid's value):
#   OUT          output folder ($OUT on the device tool; default out/e1_mini)
#   ROOT         run directories (checkpoints; default /tmp/interplay_runs, kept off $OUT)
#   EXPERIMENT   E1 (default) or E7;  SCALE mini (default) or cpu
#   DEADLINE     seconds for all runs (default 520); the report follows (~30 s): ~9.5 min in all
#   LIMIT_TOKENIZER / LIMIT_PRETRAIN / LIMIT_RL / LIMIT_EVAL   per-run limits, s (150 / 255 / 150 / 110)
#   PARALLEL     processes at a time on the GPU (default 6); MEM_FRACTION shared by them (0.9)
#   SEED_DIR     finished runs to copy in first (default runs/e1_seed/E1_<scale>: the tokenizer built beforehand,
#                carried as an ignored path; empty = build it here)
#   PRETRAIN_STEPS, PRETRAIN_SET ("model.num_layers=12 optimizer.lr=2e-3 ..." for every pre-training run)
#   RECIPE_FROM  a sweep.json (benchmarks/gpu_sweep_mini.sh): PRETRAIN_SET / PRETRAIN_STEPS from its best point on
#                the base mixture (highest strict ID pass@1), steps = RECIPE_SECONDS (180) x its probe speed;
#                PRETRAIN_SET / PRETRAIN_STEPS given as well win over the recipe's
#   RL_STEPS (default 30), RL_MICRO (rl.micro_batch_size, default 32: 5.7 GiB compiled for the H200 at the mini shapes, within a process's share), RL_SET ("key=value ..." for every RL run)
#   EDGE_OPS (default 2-14), EDGE_PER_OP (4), EDGE_N (16), EDGE_BATCH (16 prompts per call): the edge probe
#   EVAL_OPS (2-20), EVAL_PER_OP (16), EVAL_N (16), EVAL_MAX_NEW (768), EVAL_BATCH (32 prompts per call)
#   OVERRIDES    free-form "RUN.KEY=VALUE ..." (RUN: a name, a pattern like rl_*, or @pretrain/@rl/@eval)
#
# CPU smoke test (the same code path, tiny, building its own small tokenizer; ~5 min on a loaded 2-core machine):
#   PY=.venv/bin/python JAX_PLATFORMS=cpu SCALE=mini OUT=/tmp/e1_smoke ROOT=/tmp/e1_smoke_runs DEADLINE=1500 \
#   LIMIT_PRETRAIN=600 LIMIT_RL=600 LIMIT_EVAL=600 PARALLEL=2 SEED_DIR= PRETRAIN_STEPS=4 RL_STEPS=2 RL_MICRO=0 \
#   EDGE_OPS=2-3 EDGE_PER_OP=1 EDGE_N=2 EVAL_OPS=2,3,12 EVAL_PER_OP=1 EVAL_N=2 EVAL_MAX_NEW=32 EVAL_BATCH=4 \
#   OVERRIDES="@pretrain.model.preset=micro @pretrain.model.dtype=float32 @pretrain.batch_size=4 @pretrain.per_device_batch=0 \
#     @pretrain.seq_len=512 @pretrain.eval.per_bucket=2 @pretrain.eval.batch_size=2 @rl.rl.num_prompts=2 \
#     @rl.rl.n=2 @rl.rl.max_response_len=32 @rl.rl.num_minibatches=1 rl_edge.data.edge.max_new_tokens=32 \
#     tokenizer.num_docs=300" bash benchmarks/gpu_e1_mini.sh
set -u
cd "$(dirname "$0")/.."
T0=$(date +%s.%N)
source benchmarks/gpu_env.sh
EXP=${EXPERIMENT:-E1}; SCALE=${SCALE:-mini}
OUT=${OUT:-$REPO/out/e1_mini}; ROOT=${ROOT:-/tmp/interplay_runs}
mkdir -p "$OUT" "$ROOT"
SEED_DIR=${SEED_DIR-$REPO/runs/e1_seed/E1_${SCALE}}   # the tokenizer run is the same in every experiment
if [ -n "${RECIPE_FROM:-}" ]; then      # the best base-mixture point of a sweep (benchmarks/sweep_mini.py recipe)
  _user_set=${PRETRAIN_SET:-}; _user_steps=${PRETRAIN_STEPS:-}
  eval "$("$PY" benchmarks/sweep_mini.py recipe --sweep "$RECIPE_FROM" --seconds "${RECIPE_SECONDS:-180}")"
  PRETRAIN_SET="${PRETRAIN_SET:-} $_user_set"                # the user's fields come last: they win
  [ -n "$_user_steps" ] && PRETRAIN_STEPS=$_user_steps
  export PRETRAIN_SET ${PRETRAIN_STEPS:+PRETRAIN_STEPS}     # recorded in run.json
fi
OV=(--override "*.progress=False")
add() { OV+=(--override "$1"); }
[ -n "${PRETRAIN_STEPS:-}" ] && add "@pretrain.total_steps=$PRETRAIN_STEPS"
for kv in ${PRETRAIN_SET:-}; do add "@pretrain.$kv"; done
add "@rl.rl.total_steps=${RL_STEPS:-30}"
add "@rl.rl.micro_batch_size=${RL_MICRO:-32}"
for kv in ${RL_SET:-}; do add "@rl.$kv"; done
add "*edge.data.edge.ops=${EDGE_OPS:-2-14}"
add "*edge.data.edge.per_op=${EDGE_PER_OP:-4}"
add "*edge.data.edge.n=${EDGE_N:-16}"
add "*edge.data.edge.batch_prompts=${EDGE_BATCH:-16}"
add "@eval.eval.ops=${EVAL_OPS:-2-20}"
add "@eval.eval.per_op=${EVAL_PER_OP:-16}"
add "@eval.sampling.n=${EVAL_N:-16}"
add "@eval.sampling.max_new_tokens=${EVAL_MAX_NEW:-768}"
add "@eval.sampling.batch_prompts=${EVAL_BATCH:-32}"
for kv in ${OVERRIDES:-}; do add "$kv"; done
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
"$PY" benchmarks/run_experiment.py "$EXP" --scale="$SCALE" --root="$ROOT" --deadline="${DEADLINE:-520}" \
  --parallel="${PARALLEL:-6}" --mem-fraction="${MEM_FRACTION:-0.9}" ${SEED_DIR:+--seed-dir="$SEED_DIR"} \
  --limit tokenizer="${LIMIT_TOKENIZER:-150}" --limit pretrain="${LIMIT_PRETRAIN:-255}" \
  --limit rl="${LIMIT_RL:-150}" --limit eval="${LIMIT_EVAL:-110}" "${OV[@]}"
RC=$?
"$PY" -m interplay_jax.experiments.report "$EXP" --scale="$SCALE" --root="$ROOT" --out="$OUT"
cp "$ROOT/${EXP}_${SCALE}/phases.json" "$OUT/" 2>/dev/null
mkdir -p "$OUT/logs" && for f in "$ROOT/${EXP}_${SCALE}"/logs/*.log; do tail -c 20000 "$f" > "$OUT/logs/$(basename "$f")"; done
"$PY" - "$OUT" "$T0" "$*" <<'PY'
import json, os, pathlib, platform, subprocess, sys, time
out, t0 = pathlib.Path(sys.argv[1]), float(sys.argv[2])
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
except Exception:
    gpu = ""
knobs = {k: v for k, v in os.environ.items() if k in (
    "EXPERIMENT", "SCALE", "DEADLINE", "PARALLEL", "MEM_FRACTION", "SEED_DIR", "PRETRAIN_STEPS", "PRETRAIN_SET", "RECIPE_FROM", "RECIPE_SECONDS",
    "RL_STEPS", "RL_MICRO", "RL_SET", "EDGE_OPS", "EDGE_PER_OP", "EDGE_N", "EDGE_BATCH", "EVAL_OPS", "EVAL_PER_OP", "EVAL_N",
    "EVAL_MAX_NEW", "EVAL_BATCH", "OVERRIDES") or k.startswith("LIMIT_")}
cmd = " ".join(f"{k}={json.dumps(v) if ' ' in v else v}" for k, v in sorted(knobs.items()))
run = {"machine": f"{gpu or 'no GPU'}; {os.cpu_count()} CPU cores; {platform.platform()}",
       "wall_seconds": round(time.time() - t0, 1), "command": (cmd + " bash benchmarks/gpu_e1_mini.sh").strip()}
(out / "run.json").write_text(json.dumps(run, indent=1))
print(json.dumps(run))
PY
ls -la "$OUT"
exit $RC
