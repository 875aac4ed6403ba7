"""Compile the pre-training step for a virtual NVIDIA H200 on a machine without one, and report
whether the compiled HLO holds cuDNN fused (flash) attention and how much memory it asks for.

    python benchmarks/aot_h200.py --preset release45m --batch 16 [--attention cudnn,auto,jax]

Needs ../shared/tools/aot.py and the CUDA compiler plugin (benchmarks/virtual_h200.py; no GPU). The
step is ``train.lm_step.make_lm_step`` (full AdamW update, bf16 compute, fp32 params and moments,
seq 2048, one device, no remat), lowered with abstract inputs only, traced as on a GPU host
(``virtual_h200.as_gpu_host``: "auto" resolves exactly as on the H200).
One line per attention setting: temp / argument / output GiB, temp + args (calibrated against a real
H200: within ~5% of the measured peak) and the count of ``__cudnn$fmha`` custom calls.
"""
from __future__ import annotations

import argparse
import sys
import types

import virtual_h200  # before jax: CPU platform + the CUDA plugin's compiler
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from interplay_jax import checkpoint as ck  # noqa: E402
from interplay_jax.model.qwen2 import model_config  # noqa: E402
from interplay_jax.train import lm_step, optim  # noqa: E402
from interplay_jax.train import sharding as shd  # noqa: E402


def compile_step(preset: str, attention: str, batch: int, seq: int, dtype: str, remat: bool):
    cfg = model_config(preset, dtype=dtype, attention=attention, remat=remat, max_position_embeddings=max(seq, 2048))
    ocfg = types.SimpleNamespace(lr=1e-4, min_lr=3e-5, warmup_steps=10, total_steps=1000, schedule="cosine",
                                 b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    schedule = optim.make_schedule(ocfg)
    tx = optim.make_optimizer(ocfg, schedule)
    device = next(iter(virtual_h200.device().device_set))
    mesh = shd.make_mesh(1, 1, 1, devices=[device])
    with virtual_h200.as_gpu_host():
        graphdef, abstract = lm_step.abstract_state(cfg, tx)
        shardings = shd.state_shardings(abstract, mesh)
        state = ck.abstract_target(abstract, shardings)
        bsh = shd.batch_sharding(mesh)
        rows = dict(tokens=jnp.int32, segment_ids=jnp.int32, positions=jnp.int32)
        batch_in = {k: jax.ShapeDtypeStruct((batch, seq), dt, sharding=bsh) for k, dt in rows.items()}
        step = lm_step.make_lm_step(graphdef, tx, schedule, mesh=mesh, state_shardings=shardings)
        lowered = step.lower(state, batch_in)
    return cfg, lowered.compile()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="release45m", help="comma-separated model presets")
    p.add_argument("--attention", default="cudnn,auto", help="comma-separated attention settings")
    p.add_argument("--batch", type=int, default=16, help="rows per device")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--remat", type=int, default=0)
    a = p.parse_args(argv)
    import aot  # ../shared/tools/aot.py

    print(f"jax {jax.__version__}; virtual NVIDIA H200 (cuDNN 9.24 target); batch {a.batch} x seq {a.seq}, "
          f"{a.dtype} compute, fp32 params + AdamW, remat {a.remat}", flush=True)
    failed = 0
    for preset in a.preset.split(","):
        for attention in a.attention.split(","):
            name = f"{preset} attention={attention}"
            try:
                cfg, compiled = compile_step(preset, attention, a.batch, a.seq, a.dtype, bool(a.remat))
            except Exception as e:  # report and go on: one setting must not hide the others
                failed += 1
                print(f"{name}: FAILED {type(e).__name__}: {str(e).splitlines()[0][:300]}", flush=True)
                continue
            out = aot.report(f"{name} (head dim {cfg.head_dim}, {cfg.num_params() / 1e6:.1f}M params)", compiled)
            print(f"    temp + args = {out['temp_gib'] + out['args_gib']:.2f} GiB; cuDNN fused attention "
                  f"{'present' if out['cudnn_attention_calls'] else 'ABSENT'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
