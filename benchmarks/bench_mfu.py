"""Train-step throughput and MFU of our sharded lm_step (any backend).

    python benchmarks/bench_mfu.py --preset paper100m --seq 2048 --batch 16 --dtype bfloat16 --steps 10
    python benchmarks/bench_mfu.py --preset paper100m,release45m --batch 32   # both release models

MFU = model FLOPs per token (6·P_matmul + causal attention, ModelConfig.flops_per_token) × tokens/s
÷ peak FLOP/s (--peak; default: 989e12 on an H100/H200 (bf16 dense), else a nominal 1e11 for a CPU).
Prints one line per configuration (preset x attention x remat; ``--preset`` takes a comma-separated
list, e.g. the study's paper100m and the release's 45M pre-training model release45m), plus the
compiled step's memory estimate where XLA gives one.
"""
from __future__ import annotations

import argparse
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from interplay_jax.model.qwen2 import model_config
from interplay_jax.train import lm_step, optim, sharding


def measure(preset, seq, batch, dtype, steps, attention, remat, peak, accum=1):
    cfg = model_config(preset, dtype=dtype, attention=attention, remat=remat, max_position_embeddings=max(seq, 2048))
    ocfg = types.SimpleNamespace(lr=1e-4, min_lr=3e-5, warmup_steps=10, total_steps=1000, schedule="cosine", b1=0.9, b2=0.999,
                eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    schedule = optim.make_schedule(ocfg)
    tx = optim.make_optimizer(ocfg, schedule)
    mesh = sharding.make_mesh(-1, 1, 1)
    graphdef, state = lm_step.init_state(cfg, tx, 0, mesh)
    step = lm_step.make_lm_step(graphdef, tx, schedule, mesh=mesh, state_shardings=lm_step.shardings_of(state),
                                grad_accum_steps=accum)
    rng = np.random.default_rng(0)
    batch = dict(tokens=jnp.asarray(rng.integers(10, cfg.vocab_size, (batch, seq)), jnp.int32),
                 segment_ids=jnp.ones((batch, seq), jnp.int32),
                 positions=jnp.tile(jnp.arange(seq, dtype=jnp.int32), (batch, 1)))
    batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    mem = ""
    try:
        compiled = step.lower(state, batch).compile()
        ma = compiled.memory_analysis()
        if ma is not None:
            mem = f" temp={ma.temp_size_in_bytes / 2**30:.1f}GiB"
    except Exception:  # memory stats are optional
        pass
    t_compile = time.perf_counter()
    for _ in range(2):
        state, m = step(state, batch)
    jax.block_until_ready(m["loss"])
    t_compile = time.perf_counter() - t_compile
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, batch)
    loss = float(m["loss"])
    dt = (time.perf_counter() - t0) / steps
    tok_s = batch["tokens"].shape[0] * seq / dt
    mfu = cfg.flops_per_token(seq) * tok_s / peak
    print(f"{preset:>10} params={cfg.num_params() / 1e6:6.1f}M seq={seq} batch={batch['tokens'].shape[0]} "
          f"{dtype:>8} attn={attention:<6} remat={int(remat)} accum={accum}: {dt * 1e3:8.1f} ms/step "
          f"{tok_s:10.0f} tokens/s  MFU {100 * mfu:5.1f}% (peak {peak:.3g})  loss {loss:.3f}"
          f"  warmup+compile {t_compile:.0f}s{mem}", flush=True)
    return tok_s, mfu


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="paper100m", help="comma-separated model presets")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--attention", default="auto", help="comma-separated impls to compare")
    p.add_argument("--remat", default="0", help="comma-separated 0/1")
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--peak", type=float, default=0.0)
    a = p.parse_args()
    dev = jax.devices()[0]
    peak = a.peak or (989e12 if dev.platform == "gpu" else 1e11)
    print(f"backend={jax.default_backend()} device={dev.device_kind} jax={jax.__version__}", flush=True)
    for preset in a.preset.split(","):
        for attn in a.attention.split(","):
            for remat in a.remat.split(","):
                try:
                    measure(preset, a.seq, a.batch, a.dtype, a.steps, attn, bool(int(remat)), peak, a.accum)
                except Exception as e:  # keep going: one failing variant must not hide the others
                    print(f"{preset} attn={attn} remat={remat}: FAILED {type(e).__name__}: {str(e)[:300]}",
                          flush=True)


if __name__ == "__main__":
    main()
