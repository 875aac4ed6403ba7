#!/usr/bin/env bash
# One GPU check that prints every figure the speed issues ask for, sized for ~6 minutes of an H200
# (the device tool; carry [".whl", "runs"]: the wheels the machine lacks and the tokenizers):
#  1. cuDNN flash attention agrees with the einsum path at head dim 72 (release45m, 2 layers, bf16);
#  2. train-step MFU of paper100m and release45m (bf16, seq 2048, batch 32, synthetic batches);
#  3. the pre-training STAGE vs its bare step at the same shapes (input-bound?): paper100m with the
#     paper preset's 256 x 2048 batch (per-device 32: 8 micro-steps) and the small model at 32 x 1024,
#     both with 12 data worker processes (benchmarks/bench_stage.py);
#  4. input pipeline alone, wall clock: the generator on the fly with 0 and 14 workers, and token
#     shards from one process (benchmarks/bench_pipeline.py);
#  5. GRPO at the paper's shapes: rollouts (256 prompts x 6, prompt 1024, <= 1024 new tokens, responses
#     of ~550 tokens on average, decode chunks of 256 with finished rows dropped), the reference
#     forward and the update (512 rollouts x 2048 tokens, micro-batches of 64), and the estimated
#     time of one paper step (benchmarks/rl_paper_scale_check.py);
#  6. the rollouts of 5 in one chunk (no compaction);
#  7. the rollouts of 5 with the Pallas decode kernel (rl.decode_kernel=pallas): agreement with the
#     XLA decode attention, then generated tokens/s (compare with 5's rollouts).
# Each step has its own time limit; a failing step does not stop the others. STEPS="3 5" runs only
# those steps (default all). CPU smoke run (tiny shapes, the same code paths):
# SMOKE=1 PY=.venv/bin/python bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
source benchmarks/gpu_env.sh
TOK=${TOK:-$REPO/runs/gpu_seed/reference_tokenizer.json}     # the original release's tokenizer
if [ ! -f "$TOK" ]; then                                       # (benchmarks/gpu_prepare.sh puts it there)
  echo "note: no tokenizer at $TOK (run benchmarks/gpu_prepare.sh and carry runs/gpu_seed); the default tokenizer is used"
  TOK=""
fi
S=${SMOKE:-0}
want() { [ -z "${STEPS:-}" ] || [[ " $STEPS " == *" $1 "* ]]; }
run() { local limit=$1; shift; echo "== $*" | cut -c1-200; timeout "$limit" "$@" 2>&1 | grep -v -iE "warning|^\s*$|tqdm"; echo "   (exit ${PIPESTATUS[0]})"; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" - <<'PY'
import jax, flax, numpy as np, jax.numpy as jnp, orbax.checkpoint, grain
from flax import nnx
from interplay_jax.model.qwen2 import Qwen2, model_config
print("jax", jax.__version__, "flax", flax.__version__, "orbax", orbax.checkpoint.__version__, "grain",
      getattr(grain, "__version__", "?"), jax.devices())
tok = jnp.asarray(np.random.default_rng(0).integers(10, 2200, (4, 512)), jnp.int32)
out = {}
for impl in ("einsum", "auto"):
    cfg = model_config("release45m", dtype="bfloat16", attention=impl, num_layers=2)
    m = Qwen2(cfg, rngs=nnx.Rngs(0))
    out[impl] = np.asarray(jax.jit(lambda t, m=m: m(t))(tok))
d = np.abs(out["einsum"] - out["auto"]).max()
print(f"1. auto (cuDNN on GPU) vs einsum logits, bf16, head dim 72, T=512: max|diff| {d:.4f}, argmax agreement "
      f"{(out['einsum'].argmax(-1) == out['auto'].argmax(-1)).mean():.4f}")
PY
if [ "$S" = 1 ]; then
  run 300 "$PY" benchmarks/bench_mfu.py --preset micro,tiny --seq 256 --batch 4 --dtype float32 --steps 2
  run 600 "$PY" benchmarks/bench_stage.py --preset micro --seq 512 --batch 8 --steps 8 --log-every 4 --workers 2 --tokenizer "$TOK"
  run 600 "$PY" benchmarks/bench_pipeline.py --workers 0,2 --seconds 2 --repeats 1 --batch 4 --shard-tokens 2e5 --tokenizer "$TOK"
  run 600 "$PY" benchmarks/rl_paper_scale_check.py --preset micro --prompts 4 --n 2 --prompt-len 32 --new-tokens 32 \
    --rows 8 --micro 2 --minibatches 2 --decode-chunk 8 --stop-tokens 200
  exit 0
fi
want 2 && echo "2. train-step MFU, synthetic batches (bf16, seq 2048, batch 32)"
want 2 && run 130 "$PY" benchmarks/bench_mfu.py --preset paper100m,release45m --seq 2048 --batch 32 --dtype bfloat16 --steps 6
want 3 && echo "3. the pre-training stage vs its own step on synthetic batches"
want 3s && echo "3s. the same for the small model"
want 3 && run 170 "$PY" benchmarks/bench_stage.py --preset paper100m --dtype bfloat16 --seq 2048 --batch 256 --per-device 32 \
  --steps 40 --log-every 10 --workers 12 --tokenizer "$TOK"
want 3s && run 70 "$PY" benchmarks/bench_stage.py --preset small --dtype bfloat16 --seq 1024 --batch 32 --steps 150 --log-every 50 \
  --workers 12 --tokenizer "$TOK"
want 4 && echo "4. input pipeline alone (wall clock)"
want 4 && run 55 "$PY" benchmarks/bench_pipeline.py --workers 0,14 --seconds 6 --repeats 1 --batch 32 --shard-tokens 3e7 \
  --tokenizer "$TOK"
want 5 && echo "5. GRPO at the paper's shapes (paper100m, bf16)"
want 5 && run 160 "$PY" benchmarks/rl_paper_scale_check.py --preset paper100m --prompts 256 --n 6 --prompt-len 1024 \
  --new-tokens 1024 --rows 512 --micro 64 --minibatches 4 --decode-chunk 256 --stop-tokens 4
want 6 && echo "6. rollouts: one chunk without compaction (step 5 compacts every 256 steps)"
want 6 && run 80 "$PY" benchmarks/rl_paper_scale_check.py --preset paper100m --prompts 256 --n 6 --prompt-len 1024 \
  --new-tokens 1024 --decode-chunk 0 --stop-tokens 4 --rollouts-only
want 7 && echo "7. rollouts with the Pallas decode kernel (model/gpu_decode.py; step 5's shapes and chunks)"
want 7 && "$PY" - <<'PY'
import jax, jax.numpy as jnp, numpy as np
from interplay_jax.model import gpu_decode, qwen2
r = np.random.default_rng(0)
b, h, kv, dh, s, bound = 64, 12, 2, 64, 2048, 1500
q = jnp.asarray(r.normal(size=(b, h, dh)), jnp.bfloat16)
k = jnp.asarray(r.normal(size=(b, kv, dh, s)), jnp.bfloat16)
v = jnp.asarray(r.normal(size=(b, kv, s, dh)), jnp.bfloat16)
valid = jnp.asarray((np.arange(s)[None] < bound) & (r.random((b, s)) > 0.2))
got = jax.jit(gpu_decode.decode_attention)(q, k, v, valid, bound)
want = jax.jit(lambda q, k, v, m: qwen2.cached_attention(q[:, None], k, v, m[:, None])[:, 0])(q, k, v, valid)
print(f"7. pallas vs xla decode attention, bf16: max|diff| {float(jnp.abs(got.astype(jnp.float32) - want.astype(jnp.float32)).max()):.4f}")
PY
want 7 && run 120 "$PY" benchmarks/rl_paper_scale_check.py --preset paper100m --prompts 256 --n 6 --prompt-len 1024 \
  --new-tokens 1024 --decode-chunk 256 --stop-tokens 4 --rollouts-only --decode-kernel pallas
