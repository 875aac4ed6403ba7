"""Where the CPU train step loses to PyTorch: one layer's parts, forward + backward, JAX vs torch.

    python benchmarks/bench_train_parts.py [--preset small --batch 4 --seq 512 --repeats 7] [--depth]

Parts (fp32, the preset's shapes, loss = sum of squares of the output):
* attention: our causal attention as the train step runs it on CPU (``qwen2.attention(..., "einsum")``:
  query chunks that skip the upper triangle) vs ``torch.nn.functional.scaled_dot_product_attention``
  (causal, GQA);
* mlp: the SwiGLU MLP as our layer computes it (fused gate/up matmul on CPU) vs the same in torch;
* matmuls: the MLP's up and down matmuls alone (no activation), i.e. the matmul kernels themselves.
Medians of ``--repeats`` interleaved calls, milliseconds per layer; run on an otherwise idle machine.

``--depth``: the whole train step instead (``bench_train_vs_torch``'s two sides, AdamW included) at 1
and at the preset's number of layers, in alternating rounds; the difference splits each side's step into
"per layer" (as composed in the whole step) and "outside the layers" (embedding, final norm,
vocabulary projection, loss, optimizer).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from interplay_jax.model import qwen2


def _median_ms(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def depth_split(preset: str, batch: int, seq: int, rounds: int) -> None:
    """The whole step at 1 and L layers, both sides, alternating rounds of 2 steps (see --depth)."""
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from bench_train_vs_torch import make_jax_step, make_torch_step

    depth = qwen2.model_config(preset).num_layers
    steps = {}
    for n in (1, depth):
        cfg = qwen2.model_config(preset, num_layers=n)
        steps[("JAX", n)] = make_jax_step(cfg, batch, seq)[0]
        steps[("torch", n)] = make_torch_step(cfg, batch, seq)
    times = {k: [] for k in steps}
    for r in range(rounds):
        for k in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            steps[k]()
            t = time.perf_counter()
            steps[k]()
            steps[k]()
            times[k].append((time.perf_counter() - t) / 2 * 1e3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"preset {preset}: batch {batch} x seq {seq}, whole train step at 1 and {depth} layers "
          f"(medians of {rounds} alternating rounds)")
    for side in ("JAX", "torch"):
        per = (med[(side, depth)] - med[(side, 1)]) / (depth - 1)
        print(f"{side:6s} 1 layer {med[(side, 1)]:7.1f} ms, {depth} layers {med[(side, depth)]:7.1f} ms: "
              f"per layer {per:6.1f} ms, outside the layers {med[(side, 1)] - per:6.1f} ms")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--depth", action="store_true", help="split the whole step by depth (see the docstring)")
    a = ap.parse_args()
    if a.depth:
        return depth_split(a.preset, a.batch, a.seq, max(a.repeats, 2))
    import torch

    cfg = qwen2.model_config(a.preset)
    b, t, h, kv, dh, d, f = a.batch, a.seq, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.hidden_size, \
        cfg.intermediate_size
    rng = np.random.default_rng(0)
    arr = lambda *shape, s=1.0: (rng.normal(size=shape) * s).astype(np.float32)  # noqa: E731
    q, k, v = arr(b, t, h, dh), arr(b, t, kv, dh), arr(b, t, kv, dh)
    x, wg, wu, wd = arr(b * t, d), arr(d, f, s=0.05), arr(d, f, s=0.05), arr(f, d, s=0.05)

    def mlp(x, wg, wu, wd):
        gu = x @ jnp.concatenate([wg, wu], 1)
        return jnp.sum((jax.nn.silu(gu[:, :f]) * gu[:, f:] @ wd) ** 2)

    jax_fns = {
        "attention": (jax.jit(jax.grad(lambda q, k, v: jnp.sum(qwen2.attention(q, k, v, "einsum") ** 2),
                                       argnums=(0, 1, 2))), (q, k, v)),
        "mlp": (jax.jit(jax.grad(mlp, argnums=(0, 1, 2, 3))), (x, wg, wu, wd)),
        "matmuls": (jax.jit(jax.grad(lambda x, wg, wd: jnp.sum(((x @ wg) @ wd) ** 2), argnums=(0, 1, 2))),
                    (x, wg, wd)),
    }
    tt = {n: torch.tensor(val, requires_grad=True) for n, val in
          dict(q=q.transpose(0, 2, 1, 3).copy(), k=k.transpose(0, 2, 1, 3).copy(), v=v.transpose(0, 2, 1, 3).copy(),
               x=x, wg=wg, wu=wu, wd=wd).items()}
    F = torch.nn.functional
    torch_fns = {
        "attention": lambda: (F.scaled_dot_product_attention(tt["q"], tt["k"], tt["v"], is_causal=True,
                                                             enable_gqa=True) ** 2).sum().backward(),
        "mlp": lambda: ((F.silu(tt["x"] @ tt["wg"]) * (tt["x"] @ tt["wu"])) @ tt["wd"]).pow(2).sum().backward(),
        "matmuls": lambda: ((tt["x"] @ tt["wg"]) @ tt["wd"]).pow(2).sum().backward(),
    }
    print(f"preset {a.preset}: batch {b} x seq {t}, heads {h}/{kv} of {dh}, hidden {d}, MLP {f}; fp32, "
          f"backend {jax.default_backend()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    for name, (fn, args) in jax_fns.items():
        ours = _median_ms(lambda: jax.block_until_ready(fn(*args)), a.repeats)
        theirs = _median_ms(torch_fns[name], a.repeats)
        print(f"{name:10s} forward + backward per layer: JAX {ours:7.1f} ms, torch {theirs:7.1f} ms "
              f"(JAX / torch time {ours / theirs:.2f})")


if __name__ == "__main__":
    main()
