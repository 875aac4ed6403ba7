# Sourced by the GPU scripts (benchmarks/gpu_e1_mini.sh, benchmarks/gpu_sweep_mini.sh).
# A bare GPU machine has python3 (3.12) with jax[cuda] / flax / optax / orbax / tensorboard /
# tokenizers / matplotlib but no network: every other dependency comes as a wheel in the git-ignored
# .whl/ folder that travels with the repo (fetched where there is network by benchmarks/gpu_prepare.sh)
# and only the modules that do not import are unpacked into $DEPS_DIR (a wheel is a zip file).
# Sets PY, REPO, PYTHONPATH, INTERPLAY_CACHE (default /tmp/interplay_cache: the compile cache and
# the default tokenizer) and PYTHONUNBUFFERED.
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PY:-python3}
DEPS_DIR=${DEPS_DIR:-/tmp/interplay_deps}
export PYTHONUNBUFFERED=1
export INTERPLAY_CACHE=${INTERPLAY_CACHE:-/tmp/interplay_cache}
export PYTHONPATH=$REPO:$DEPS_DIR${PYTHONPATH:+:$PYTHONPATH}
_missing=()
for _pair in grain:grain ml_collections:ml_collections array_record:array_record portpicker:portpicker \
             cloudpickle:cloudpickle etils:etils psutil:psutil yaml:pyyaml networkx:networkx tqdm:tqdm \
             safetensors:safetensors absl:absl_py; do
  "$PY" -c "import ${_pair%%:*}" 2>/dev/null || _missing+=("${_pair##*:}")
done
if [ ${#_missing[@]} -gt 0 ]; then
  _whls=()
  for _pkg in "${_missing[@]}"; do
    _f=$(ls "$REPO"/.whl/ 2>/dev/null | grep -i "^${_pkg}-" | head -1)
    if [ -n "$_f" ]; then _whls+=("$REPO/.whl/$_f"); else echo "warning: $_pkg is missing and .whl/ has no wheel for it"; fi
  done
  echo "installing into $DEPS_DIR: ${_missing[*]}"
  mkdir -p "$DEPS_DIR"
  for _w in "${_whls[@]}"; do "$PY" -m zipfile -e "$_w" "$DEPS_DIR"; done   # a wheel is a zip: no pip needed
fi
# checkpoint.py uses orbax 0.12.8 (its finalization hook): unpack the carried wheel if another is installed
if ! "$PY" -c "import orbax.checkpoint as o, sys; sys.exit(o.__version__ != '0.12.8')" 2>/dev/null; then
  _w=$(ls "$REPO"/.whl/orbax_checkpoint-0.12.8-*.whl 2>/dev/null | head -1)
  if [ -n "$_w" ]; then mkdir -p "$DEPS_DIR"; "$PY" -m zipfile -e "$_w" "$DEPS_DIR"; echo "orbax-checkpoint 0.12.8 from $_w"; fi
fi
"$PY" -c "import grain, ml_collections, jax, flax, optax, orbax.checkpoint, tokenizers, matplotlib, tensorboard, networkx" \
  || { echo "error: python dependencies are missing (see benchmarks/gpu_env.sh)"; exit 3; }
