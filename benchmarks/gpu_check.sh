#!/usr/bin/env bash
# One-shot GPU check for a lent H100/H200 (the device tool), sized for a few minutes of device time:
# (1) cuDNN flash attention agrees with the portable einsum attention (logits, bf16), at head dim 32
#     (tiny) and 72 (release45m's 8 / 4 heads of 72, 2 layers);
# (2) train MFU of paper100m and release45m at seq 2048 bf16 (attention "auto" = cuDNN causal), one
#     line each;
# (3) release45m with XLA (non-cuDNN) attention compiles and runs (short);
# (4) rollout throughput vs HF transformers generate on the GPU.
# Runs under the machine's own python3 (jax[cuda] preinstalled); no package of ours needs installing.
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY'
import jax, jax.numpy as jnp, numpy as np, flax
from flax import nnx
from interplay_jax.model.qwen2 import Qwen2, model_config
print("jax", jax.__version__, "flax", flax.__version__, jax.devices())
tok = jnp.asarray(np.random.default_rng(0).integers(10, 2200, (4, 512)), jnp.int32)
for preset, extra in (("tiny", {}), ("release45m", {"num_layers": 2})):
    out = {}
    for impl in ("einsum", "cudnn"):
        cfg = model_config(preset, dtype="bfloat16", attention=impl, **extra)
        m = Qwen2(cfg, rngs=nnx.Rngs(0))
        out[impl] = np.asarray(jax.jit(lambda t, m=m: m(t))(tok))
    d = np.abs(out["einsum"] - out["cudnn"]).max()
    print(f"cudnn vs einsum logits (bf16, {preset}, head dim {cfg.head_dim}, T=512): max|diff| = {d:.4f}; "
          f"argmax agreement {(out['einsum'].argmax(-1) == out['cudnn'].argmax(-1)).mean():.4f}")
    assert d < 0.1, (preset, d)
PY
echo "== train MFU, paper100m and release45m, seq 2048, bf16"
timeout 200 python3 benchmarks/bench_mfu.py --preset paper100m,release45m --seq 2048 --batch 32 --dtype bfloat16 \
  --steps 10 --attention ${ATTN:-auto} 2>&1 | grep -v -i warning
echo "== release45m with XLA attention (the masked / document-mask path): compiles at hidden 576?"
# ahead of time for a virtual H200, jax 0.10.2's compiler failed here with Triton GEMM on ("Couldn't
# find output tile sizes" for a bf16 [32768,576] dot) and compiled with --xla_gpu_enable_triton_gemm=false
timeout 90 python3 benchmarks/bench_mfu.py --preset release45m --seq 2048 --batch 8 --dtype bfloat16 --steps 3 \
  --attention jax 2>&1 | grep -v -i warning
echo "== rollout throughput (tiny, vs HF generate on the same GPU)"
timeout 90 python3 benchmarks/bench_rollout.py --batch 64 --prompt_len 128 --new_tokens 256 --repeats 1 2>&1 | tail -6
