# E1 one size down on the 2-core CPU (experiments/e1.py, scale cpu_shifted; BUILD_NOTES "E1 one size down").
# The base is the 30-minute curve run (benchmarks/results/cpu_curve/commands.sh): the grid's `base` has the
# same config (checked field by field; only workdir, tokenizer path and progress differ, and the grid's
# tokenizer run writes a byte-identical tokenizer.json), so it is copied in instead of trained again.
# Without runs/cpu_curve, leave out the copy: the runner then trains the base itself (~30 min).
set -e
cd "$(dirname "$0")/../../.."   # the repository root
PY=${PY:-python}
ROOT=runs/experiments; E=$ROOT/E1_cpu_shifted
export JAX_PLATFORMS=cpu
"$PY" -m interplay_jax.experiments.run E1 --scale=cpu_shifted --root=$ROOT --only tokenizer
if [ -d runs/cpu_curve ] && [ ! -e $E/base ]; then
  cmp $E/tokenizer/tokenizer.json "$("$PY" -c 'from interplay_jax.task.tokenizer import default_tokenizer_path as p; print(p())')"
  cp -r runs/cpu_curve $E/base && echo "seeded from runs/cpu_curve" > $E/base/EXPERIMENT_RUN_DONE
fi
time "$PY" benchmarks/run_experiment.py E1 --scale=cpu_shifted --root=$ROOT --override '*.progress=False' \
  --parallel 1 --mem-fraction 0 --limit rl=1500 --limit eval=1200
"$PY" -m interplay_jax.experiments.report E1 --scale=cpu_shifted --root=$ROOT --out benchmarks/results/e1_cpu_shifted
