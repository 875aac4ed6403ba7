# The second arm of E1 one size down: the two core regimes (op4-5 = the study's op7-10, op6-7 = its op11-14)
# again at RL lr 1e-4 (10x the first arm's 1e-5), everything else equal. Chosen after the first arm's
# training reward stayed flat (0.62 -> 0.62 on op4-5 over 60 steps, KL ~1e-3), before any evaluation.
# Needs the first arm's tokenizer and base (commands.sh); writes runs/experiments_lr1e-4/E1_cpu_shifted.
set -e
cd "$(dirname "$0")/../../.."   # the repository root
PY=${PY:-python}
A=runs/experiments/E1_cpu_shifted; ROOT=runs/experiments_lr1e-4; E=$ROOT/E1_cpu_shifted
export JAX_PLATFORMS=cpu
mkdir -p $E
for r in tokenizer base; do [ -e $E/$r ] || cp -r $A/$r $E/$r; done
OV=()
for r in rl_op4-5 rl_op6-7; do OV+=(--override "$r.optimizer.lr=1e-4" --override "$r.progress=False"); done
time "$PY" -m interplay_jax.experiments.run E1 --scale=cpu_shifted --root=$ROOT --only rl_op4-5,rl_op6-7 "${OV[@]}"
[ "${1:-}" = "--rl-only" ] && exit 0     # (ran beside the first arm; the evaluation waits for its base's)
# the first arm's evaluation settings on these two; the base's evaluation is the first arm's (same eval set)
mkdir -p $E/eval && { [ -e $E/eval/base ] || cp -r $A/eval/base $E/eval/base; }
time "$PY" -m interplay_jax.main --config=configs/eval.py:cpu --config.eval.ops=2-9 --config.eval.per_op=32 \
  --config.sampling.n=16 --config.sampling.max_new_tokens=320 --config.sampling.batch_prompts=32 \
  --config.buckets=ID:2-5,OOD-edge:6-7,OOD-hard:8-9 --config.workdir=$E/eval --config.progress=False \
  --config.checkpoints=$E/rl_op4-5,$E/rl_op6-7
"$PY" -m interplay_jax.experiments.report E1 --scale=cpu_shifted --root=$ROOT --out benchmarks/results/e1_cpu_shifted/lr1e-4
