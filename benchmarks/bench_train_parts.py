"""Where the CPU train step loses to PyTorch: one layer's parts, forward + backward, JAX vs torch.

    python benchmarks/bench_train_parts.py [--preset small --batch 4 --seq 512 --repeats 7] [--depth]

Parts (fp32, the preset's shapes, loss = sum of squares of the output):
* attention: our causal attention as the train step runs it on CPU (``qwen2.attention(..., "cpu")``:
  the fused C++ kernel of model/cpu_attention.cc) and the XLA composition (``"einsum"``: query chunks
  that skip the upper triangle), each vs ``torch.nn.functional.scaled_dot_product_attention``
  (causal, GQA);
* mlp: the SwiGLU MLP as our layer computes it (fused gate/up matmul on CPU) vs the same in torch;
* matmuls: the MLP's up and down matmuls alone (no activation), i.e. the matmul kernels themselves.
Medians of ``--repeats`` interleaved calls, milliseconds per layer; run on an otherwise idle machine.

``--depth``: the whole train step instead (``bench_train_vs_torch``'s two sides, AdamW included) at 1
and at the preset's number of layers, in alternating rounds; the difference splits each side's step into
"per layer" (as composed in the whole step) and "outside the layers" (embedding, final norm,
vocabulary projection, loss, optimizer).

``--layer``: one whole decoder layer, forward + backward (gradients of its parameters and input; loss =
sum of squares of its output): our ``DecoderLayer`` vs transformers' ``Qwen2DecoderLayer`` (sdpa),
and ours with the attention core replaced by an elementwise stand-in (q + k * v, heads repeated), which
splits our layer into "attention core as composed in the layer" and "the rest".

``--gemm``: the layer's matmuls at the preset's shapes (M = batch x seq rows), each in its three
training forms: forward ``x @ W``, input gradient ``dy @ W.T``, weight gradient ``x.T @ dy``; one
jitted call per product (a few tens of microseconds of dispatch included) vs torch's ``@``.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from interplay_jax import host
from interplay_jax.model import qwen2


def _median_ms(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def _alternating(fns: dict, rounds: int, block_s: float = 0.25) -> dict:
    """Median ms per call over rounds, the sides in alternating order each round (order biases).

    Each round and side: calls for ``block_s`` seconds untimed, then a timed block of back-to-back calls
    (at least two, ``block_s`` seconds at least), then a pause for torch's idle threads, which spin for
    a while after its last op. The untimed block matters for calls of a few ms: the first ones after a
    pause ran up to ~1.6x slower than back-to-back calls (an 11 ms JAX layer read 18.5 ms when timed
    right after one warm-up call), and a training loop runs its steps back to back."""
    def run_for(fn, seconds: float, least: int) -> tuple[int, float]:
        n, t0 = 0, time.perf_counter()
        while n < least or time.perf_counter() - t0 < seconds:
            fn()
            n += 1
        return n, time.perf_counter() - t0

    times = {k: [] for k in fns}
    for r in range(rounds):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            run_for(fns[k], block_s, 1)
            n, dt = run_for(fns[k], block_s, 2)
            times[k].append(dt / n * 1e3)
            time.sleep(0.3)
    return {k: float(np.median(v)) for k, v in times.items()}


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
    med = _alternating(steps, rounds)
    print(f"preset {preset}: batch {batch} x seq {seq}, whole train step at 1 and {depth} layers "
          f"(medians of {rounds} alternating rounds)")
    for side in ("JAX", "torch"):
        per = (med[(side, depth)] - med[(side, 1)]) / (depth - 1)
        print(f"{side:6s} 1 layer {med[(side, 1)]:7.1f} ms, {depth} layers {med[(side, depth)]:7.1f} ms: "
              f"per layer {per:6.1f} ms, outside the layers {med[(side, 1)] - per:6.1f} ms")


def layer_split(preset: str, batch: int, seq: int, rounds: int) -> None:
    """See ``--layer`` in the docstring."""
    import torch
    import transformers
    from flax import nnx
    from transformers.models.qwen2 import modeling_qwen2

    cfg = qwen2.model_config(preset, num_layers=1)
    x = jnp.asarray(np.random.RandomState(0).randn(batch, seq, cfg.hidden_size).astype(np.float32))
    cos, sin = qwen2.rope_tables(jnp.broadcast_to(jnp.arange(seq, dtype=jnp.int32), (batch, seq)),
                                 cfg.head_dim, cfg.rope_theta)
    graphdef, state = nnx.split(qwen2.DecoderLayer(cfg, rngs=nnx.Rngs(0)))

    def jax_layer(stand_in: bool):
        real = qwen2.attention
        if stand_in:  # traced once below, with the stand-in in place
            qwen2.attention = lambda q, k, v, impl, seg=None: q + jnp.repeat(k * v, q.shape[2] // k.shape[2], 2)
        try:
            grad = jax.jit(jax.grad(lambda st, x: jnp.sum(nnx.merge(graphdef, st)(x, cos, sin)[0] ** 2),
                                    argnums=(0, 1)))
            jax.block_until_ready(grad(state, x))
        finally:
            qwen2.attention = real
        return lambda: jax.block_until_ready(grad(state, x))

    hf_cfg = transformers.Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=1, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rope_theta=cfg.rope_theta, rms_norm_eps=cfg.rms_norm_eps, use_cache=False)
    hf_cfg._attn_implementation = "sdpa"
    layer = modeling_qwen2.Qwen2DecoderLayer(hf_cfg, 0).train()
    xt = torch.tensor(np.asarray(x), requires_grad=True)
    pos = modeling_qwen2.Qwen2RotaryEmbedding(hf_cfg)(xt, torch.arange(seq)[None].expand(batch, seq))

    def torch_layer():
        out = layer(xt, attention_mask=None, position_ids=None, position_embeddings=pos)
        (out[0] if isinstance(out, tuple) else out).pow(2).sum().backward()
        layer.zero_grad(set_to_none=True)
        xt.grad = None

    med = _alternating({"JAX layer": jax_layer(False), "JAX, attention core -> stand-in": jax_layer(True),
                        "torch layer": torch_layer}, rounds)
    print(f"preset {preset}: one decoder layer, batch {batch} x seq {seq}, forward + backward, fp32 "
          f"(medians of {rounds} alternating rounds)")
    for k, v in med.items():
        print(f"{k:34s} {v:7.1f} ms")
    core = med["JAX layer"] - med["JAX, attention core -> stand-in"]
    print(f"JAX attention core as composed: {core:.1f} ms; the rest of the layer: "
          f"{med['JAX, attention core -> stand-in']:.1f} ms")


def gemm_forms(preset: str, batch: int, seq: int, repeats: int) -> None:
    """See ``--gemm`` in the docstring."""
    import torch

    cfg = qwen2.model_config(preset)
    d, f, dh = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    m = batch * seq
    shapes = {"q/k/v": (d, (cfg.num_heads + 2 * cfg.num_kv_heads) * dh), "o": (cfg.num_heads * dh, d),
              "gate/up": (d, 2 * f), "down": (f, d)}
    forms = {"forward x @ W": (jax.jit(lambda x, w, dy: x @ w), lambda x, w, dy: x @ w),
             "input grad dy @ W.T": (jax.jit(lambda x, w, dy: dy @ w.T), lambda x, w, dy: dy @ w.T),
             "weight grad x.T @ dy": (jax.jit(lambda x, w, dy: x.T @ dy), lambda x, w, dy: x.T @ dy)}
    rng = np.random.default_rng(0)
    print(f"preset {preset}: matmuls at M = {m} rows, fp32, medians of {repeats} calls "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    for name, (k, n) in shapes.items():
        arrays = [rng.normal(size=s).astype(np.float32) for s in ((m, k), (k, n), (m, n))]
        ja, ta = [jnp.asarray(a) for a in arrays], [torch.tensor(a) for a in arrays]
        for form, (jf, tf) in forms.items():
            ours = _median_ms(lambda: jax.block_until_ready(jf(*ja)), repeats)
            theirs = _median_ms(lambda: tf(*ta), repeats)
            print(f"{name:8s} [{k} x {n}] {form:22s} JAX {ours:6.2f} ms  torch {theirs:6.2f} ms  "
                  f"(JAX / torch time {ours / theirs:.2f}; JAX {2 * m * k * n / ours / 1e6:5.0f} GFLOP/s)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--depth", action="store_true", help="split the whole step by depth (see the docstring)")
    ap.add_argument("--layer", action="store_true", help="one whole layer vs transformers' (see the docstring)")
    ap.add_argument("--gemm", action="store_true", help="the layer's matmuls in their three forms")
    ap.add_argument("--host-defaults", action="store_true",
                    help="skip interplay_jax.host.configure() (glibc's malloc defaults, async CPU dispatch)")
    a = ap.parse_args()
    host_settings = {} if a.host_defaults else host.configure()  # what the training stages run with
    print(f"host settings: {host_settings or 'off (glibc defaults, async dispatch)'}")
    if a.depth:
        return depth_split(a.preset, a.batch, a.seq, max(a.repeats, 2))
    if a.layer:
        return layer_split(a.preset, a.batch, a.seq, max(a.repeats, 2))
    if a.gemm:
        return gemm_forms(a.preset, a.batch, a.seq, max(a.repeats, 10))
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

    def attn(impl):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(qwen2.attention(q, k, v, impl) ** 2), argnums=(0, 1, 2)))

    jax_fns = {
        "attention": (attn("cpu"), (q, k, v)),
        "attn-xla": (attn("einsum"), (q, k, v)),
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
    torch_fns["attn-xla"] = torch_fns["attention"]  # the same torch reference for both of ours
    print(f"preset {a.preset}: batch {b} x seq {t}, heads {h}/{kv} of {dh}, hidden {d}, MLP {f}; fp32, "
          f"backend {jax.default_backend()}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    for name, (fn, args) in jax_fns.items():
        ours = _median_ms(lambda: jax.block_until_ready(fn(*args)), a.repeats)
        theirs = _median_ms(torch_fns[name], a.repeats)
        print(f"{name:10s} forward + backward per layer: JAX {ours:7.1f} ms, torch {theirs:7.1f} ms "
              f"(JAX / torch time {ours / theirs:.2f})")


if __name__ == "__main__":
    main()
