# E1 with an edge seen at 20%, on the 2-core CPU (experiments/e1.py, scale cpu_exposed20; BUILD_NOTES "E1 with the edge seen at 20%").
# cpu_shifted's base with 20% of its data moved from op5 to op6-7, trained from scratch (~40 min), then GRPO on
# op6-7 only, with the outcome and with the strict (process-verified) reward (responses up to 320 tokens),
# and the evaluation on op2-9 (n = 16).
set -e
cd "$(dirname "$0")/../../.."   # the repository root
PY=${PY:-python}
ROOT=runs/experiments
export JAX_PLATFORMS=cpu
time "$PY" benchmarks/run_experiment.py E1 --scale=cpu_exposed20 --root=$ROOT --override '*.progress=False' \
  --parallel 1 --mem-fraction 0 --limit pretrain=3600 --limit rl=2700 --limit eval=1200
"$PY" -m interplay_jax.experiments.report E1 --scale=cpu_exposed20 --root=$ROOT --out benchmarks/results/e1_cpu_exposed20
