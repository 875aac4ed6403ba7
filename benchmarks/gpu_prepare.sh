#!/usr/bin/env bash
# Prepare, on a machine with network (this one), the git-ignored files a GPU session carries to the
# bare device machine, so that its few device-minutes go to the measurements:
#   .whl/                                   the wheels benchmarks/gpu_env.sh unpacks there (cp312)
#   runs/gpu_seed/reference_tokenizer.json  the original release's tokenizer (benchmarks/gpu_check.sh)
#   runs/e1_seed/E1_mini/tokenizer/         E1's mini tokenizer run, built here (52 s on 2 cores), which
#                                           benchmarks/gpu_e1_mini.sh copies in instead of building it there
# Then call the device tool with carry [".whl", "runs/gpu_seed", "runs/e1_seed"].
#
#   PY=.venv/bin/python bash benchmarks/gpu_prepare.sh      # idempotent: what exists is kept
set -eu
cd "$(dirname "$0")/.."
PY=${PY:-python3}
if [ ! -d .whl ] || [ -z "$(ls .whl 2>/dev/null)" ]; then
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
    grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 ml_collections==1.1.0 \
    cloudpickle tqdm safetensors psutil PyYAML networkx absl-py etils
fi
echo ".whl: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1)"
mkdir -p runs/gpu_seed
if [ ! -f runs/gpu_seed/reference_tokenizer.json ]; then
  if [ -f ../shared/reference/tokenizer.json ]; then
    cp ../shared/reference/tokenizer.json runs/gpu_seed/reference_tokenizer.json
  else
    echo "note: no ../shared/reference/tokenizer.json here; gpu_check.sh will use the default tokenizer"
  fi
fi
ls -l runs/gpu_seed
if [ ! -f runs/e1_seed/E1_mini/tokenizer/EXPERIMENT_RUN_DONE ]; then
  JAX_PLATFORMS=cpu "$PY" -m interplay_jax.experiments.run E1 --scale=mini --root=runs/e1_seed --only=tokenizer \
    --override=tokenizer.progress=False
fi
ls -l runs/e1_seed/E1_mini/tokenizer
echo "carry: [\".whl\", \"runs/gpu_seed\", \"runs/e1_seed\"] ($(du -shc .whl runs/gpu_seed runs/e1_seed | tail -1 | cut -f1) in all)"
