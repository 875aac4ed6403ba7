"""Train throughput (tokens/s) and MFU: our JAX Qwen2 vs PyTorch + transformers Qwen2, same config.

    python benchmarks/bench_train_vs_torch.py                       # tiny, small, paper100m
    python benchmarks/bench_train_vs_torch.py --presets=small --steps=10 --batch=4 --seq=512

Both sides: fp32, AdamW (0.9, 0.999, eps 1e-8, wd 0.1), next-token loss on random tokens, one
process on this machine's CPUs. The two sides run in interleaved rounds (a pause between) and the
median step time is reported (robust to other load on a shared machine). JAX: one jitted, donated train step (``interplay_jax.train.lm_step``
when available, else an inline optax step). PyTorch: eager ``Qwen2ForCausalLM`` (sdpa attention),
``torch.optim.AdamW``. Model FLOPs per token = 6 * matmul params + 6 * L * H * Dh * T (causal
attention, see ModelConfig.flops_per_token); MFU divides by the measured fp32 matmul peak of the
JAX CPU backend (stated in the output).
"""
from __future__ import annotations

import argparse
import os
import resource
import time

# Must be set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from interplay_jax import host  # noqa: E402
from interplay_jax.model import forward, init_model, model_config  # noqa: E402

DEFAULT_SHAPES = {  # preset -> (batch, seq, steps)
    "micro": (8, 512, 10),
    "tiny": (4, 512, 10),
    "small": (4, 512, 6),
    "paper100m": (1, 512, 2),
}


def matmul_peak(n: int = 1024, reps: int = 10) -> float:
    """Best fp32 matmul FLOP/s of the JAX CPU backend (the MFU denominator)."""
    a = jnp.asarray(np.random.RandomState(0).randn(n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def _inline_step(graphdef, tx):
    def loss_fn(params, tokens):
        logits = forward(graphdef, params, tokens)[:, :-1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    def step(state, tokens):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return jax.jit(step, donate_argnums=0)


def make_jax_step(cfg, batch, seq, use_lm_step=True):
    """(one_step() running a full train step to completion, compile seconds, which step)."""
    tx = optax.adamw(1e-4, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1)
    tokens = jnp.asarray(np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, seq)), jnp.int32)
    kind = "inline optax step"
    run = None
    if use_lm_step:
        try:
            from interplay_jax.train import lm_step as L
            from interplay_jax.train import sharding as shd

            mesh = shd.make_mesh(devices=jax.devices()[:1])
            graphdef, state = L.init_state(cfg, tx, 0, mesh)
            step = L.make_lm_step(graphdef, tx, lambda s: 1e-4, mesh=mesh, state_shardings=L.shardings_of(state))
            batch_d = dict(tokens=tokens, segment_ids=jnp.ones_like(tokens))

            def run(state):
                return step(state, batch_d)[0]

            kind = "interplay_jax.train.lm_step"
        except Exception as e:  # noqa: BLE001 - the other helper's module may be mid-change
            print(f"  (lm_step unavailable: {type(e).__name__}: {e}; using the inline step)")
            run = None
    if run is None:
        model = init_model(cfg, seed=0)
        graphdef, params = nnx.split(model, nnx.Param)
        state = (params, tx.init(params))
        step = _inline_step(graphdef, tx)

        def run(state):
            return step(state, tokens)[0]

    box = [state]

    def one_step():
        box[0] = run(box[0])
        jax.block_until_ready(box[0])

    t = time.perf_counter()
    one_step()
    return one_step, time.perf_counter() - t, kind


def make_torch_step(cfg, batch, seq):
    """one_step() for the PyTorch side (after one warm-up step), or None without torch."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.max_position_embeddings, use_cache=False)
    model = transformers.Qwen2ForCausalLM(hf_cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    tokens = torch.tensor(np.random.RandomState(0).randint(0, cfg.vocab_size, (batch, seq)))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        opt.step()

    step()
    return step


def _timed(fn) -> tuple[float, int, float]:
    """Wall seconds of one call, and the process's minor page faults and kernel seconds during it
    (the other side is idle then; a program's temporary block faulted in again every step shows here)."""
    r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    dt, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    return dt, r1.ru_minflt - r0.ru_minflt, r1.ru_stime - r0.ru_stime


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="tiny,small,paper100m")
    ap.add_argument("--batch", type=int, default=None, help="override the per-preset batch")
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--peak-gflops", type=float, default=None,
                    help="MFU denominator in GFLOP/s (default: measured fp32 matmul peak, noisy on a busy machine)")
    ap.add_argument("--inline", action="store_true", help="use the inline optax step, not lm_step")
    ap.add_argument("--round", type=int, default=3, help="steps of one side before switching to the other")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds of pause before each round")
    ap.add_argument("--host-defaults", action="store_true",
                    help="skip interplay_jax.host.configure() (glibc's malloc defaults, async CPU dispatch)")
    args = ap.parse_args()
    host_settings = {} if args.host_defaults else host.configure()  # what the training stages run with
    threads = os.cpu_count()
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
    print(f"JAX {jax.__version__} backend={jax.default_backend()} cpus={threads} "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} host settings {host_settings or 'off'}")
    if args.peak_gflops:
        peak = args.peak_gflops * 1e9
        print(f"MFU peak = {args.peak_gflops:.1f} GFLOP/s (given)")
    else:
        peak = matmul_peak()
        print(f"MFU peak = measured fp32 1024^3 matmul (jitted JAX, best of 10): {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for name in args.presets.split(","):
        b, t, n = DEFAULT_SHAPES.get(name, (4, 512, 5))
        b, t, n = args.batch or b, args.seq or t, args.steps or n
        cfg = model_config(name)
        fpt = cfg.flops_per_token(t)
        print(f"[{name}] params={cfg.num_params():,} batch={b} seq={t} steps={n}", flush=True)
        jax_step, compile_s, kind = make_jax_step(cfg, b, t, use_lm_step=not args.inline)
        torch_step = None if args.no_torch else make_torch_step(cfg, b, t)
        # Interleave the two sides so that load from other processes hits both alike, in rounds of
        # ``--round`` steps with a pause between sides: a side's idle worker threads keep spinning for
        # a while after its last op (OpenMP, Eigen), and step-by-step alternation charged that spin
        # to the other side (the JAX small step read ~35% slower next to torch than alone).
        jt, tt = [], []
        for r in range(-(-n // args.round)):
            for step, times in ((jax_step, jt), (torch_step, tt)):
                if step is None:
                    continue
                time.sleep(args.settle)
                for _ in range(min(args.round, n - r * args.round)):
                    times.append(_timed(step))
        med = lambda rows, i: float(np.median([r[i] for r in rows]))  # noqa: E731
        jax_tps = b * t / med(jt, 0)
        torch_tps = b * t / med(tt, 0) if tt else None
        print(f"  jax   {jax_tps:9.0f} tokens/s  MFU {100 * jax_tps * fpt / peak:5.1f}%  "
              f"(compile {compile_s:.1f}s, {kind}); per step {med(jt, 1):,.0f} minor page faults, "
              f"{1e3 * med(jt, 2):.0f} ms in the kernel", flush=True)
        if torch_tps:
            print(f"  torch {torch_tps:9.0f} tokens/s  MFU {100 * torch_tps * fpt / peak:5.1f}%  "
                  f"ratio jax/torch = {jax_tps / torch_tps:.2f}x; per step {med(tt, 1):,.0f} minor page faults, "
                  f"{1e3 * med(tt, 2):.0f} ms in the kernel", flush=True)
        rows.append((name, cfg.num_params(), b, t, jax_tps, torch_tps, fpt))
    print("\n| preset | params | batch x seq | JAX tok/s | JAX MFU | PyTorch tok/s | PyTorch MFU | JAX/PyTorch |")
    print("|---|---|---|---|---|---|---|---|")
    for name, p, b, t, j, tt, fpt in rows:
        tcol = f"{tt:,.0f} | {100 * tt * fpt / peak:.1f}% | {j / tt:.2f}x" if tt else "- | - | -"
        print(f"| {name} | {p / 1e6:.1f}M | {b} x {t} | {j:,.0f} | {100 * j * fpt / peak:.1f}% | {tcol} |")


if __name__ == "__main__":
    main()
