"""Paper-scale GRPO feasibility on one accelerator: rollout throughput and update memory/speed.

Prints, for the model preset given (default paper100m, bf16):
- rollouts: ``--prompts`` prompts x ``--n`` samples, prompt ``--prompt-len`` random tokens, exactly
  ``--new-tokens`` generated (no stop id: the worst case), generated tokens/s after compilation;
- the GRPO update (``make_grpo_step``): ``--rows`` rollouts of ``--prompt-len + --new-tokens`` tokens,
  ``--minibatches`` mini-batches, micro-batches of ``--micro`` rollouts, k3 KL with reference
  log-probs: step time, trained tokens/s, peak device memory;
- the extrapolated wall time of one paper step (1024 prompts x 6 rollouts).

    python benchmarks/rl_paper_scale_check.py                       # accelerator, paper model
    python benchmarks/rl_paper_scale_check.py --preset micro --prompts 2 --rows 8 --micro 2 \\
        --prompt-len 16 --new-tokens 16 --minibatches 2               # CPU smoke run
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from interplay_jax.model.qwen2 import Qwen2, model_config
from interplay_jax.rl import grpo
from interplay_jax.sampling.sampler import Sampler


def peak_gib():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", 0) / 2**30


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="paper100m")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--prompt-len", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--minibatches", type=int, default=4)
    ap.add_argument("--micro", type=int, default=64)
    ap.add_argument("--skip-rollout", action="store_true")
    args = ap.parse_args()

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    cfg = model_config(args.preset, dtype=args.dtype)
    model = Qwen2(cfg, rngs=nnx.Rngs(params=0))
    graphdef, params = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(0)
    vocab = cfg.vocab_size

    rollout_tps = None
    if not args.skip_rollout:
        sampler = Sampler(graphdef, cfg, pad_id=1)
        prompts = [list(rng.integers(10, vocab, size=args.prompt_len)) for _ in range(args.prompts)]
        kw = dict(n=args.n, max_new_tokens=args.new_tokens, temperature=1.0, stop_ids=())
        t0 = time.perf_counter()
        res = sampler.sample(params, prompts, key=jax.random.key(0), **kw)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = sampler.sample(params, prompts, key=jax.random.key(1), **kw)
        dt = time.perf_counter() - t0
        gen = int(res.lengths.sum())
        rollout_tps = gen / dt
        print(f"rollouts: {args.prompts} prompts x {args.n} = {len(res.lengths)} rows, prompt {args.prompt_len}, "
              f"{args.new_tokens} new tokens: {dt:.2f} s ({t_first:.1f} s with compile), "
              f"{rollout_tps:,.0f} generated tokens/s, peak {peak_gib():.1f} GiB")

    T = args.prompt_len + args.new_tokens
    rows = args.rows
    tokens = rng.integers(10, vocab, size=(rows, T)).astype(np.int32)
    valid = np.ones((rows, T), np.int32)
    resp = np.zeros((rows, T), np.int32)
    resp[:, args.prompt_len:] = 1
    adv = grpo.group_advantages(rng.integers(0, 2, size=rows).astype(np.float32), args.n if rows % args.n == 0 else 2)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-6, weight_decay=0.01))
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    cfg_g = grpo.GRPOConfig(kl_coef=1e-3)
    logprob_fn = grpo.make_logprob_fn(graphdef, micro_batch_size=args.micro)
    step = grpo.make_grpo_step(graphdef, tx, cfg_g, num_minibatches=args.minibatches, micro_batch_size=args.micro)
    batch = {"tokens": jnp.asarray(tokens), "valid_mask": jnp.asarray(valid), "response_mask": jnp.asarray(resp),
             "advantages": jnp.asarray(adv)}
    t0 = time.perf_counter()
    batch["ref_logprobs"] = logprob_fn(params, batch["tokens"], batch["valid_mask"])
    jax.block_until_ready(batch["ref_logprobs"])
    t_ref_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = logprob_fn(params, batch["tokens"], batch["valid_mask"])
    jax.block_until_ready(ref)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, m = step(state, batch)
    jax.block_until_ready(m)
    t_first = time.perf_counter() - t0
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        state, m = step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    dt = min(times)
    print(f"reference log-probs: {rows} x {T} tokens in {t_ref:.2f} s ({t_ref_first:.1f} s with compile)")
    print(f"GRPO update: {rows} rows x {T} tokens, {args.minibatches} mini-batches, micro {args.micro}: "
          f"{dt:.2f} s/step ({t_first:.1f} s with compile), {rows * T / dt:,.0f} tokens/s, "
          f"loss {float(m['loss']):.4f} kl {float(m['kl']):.2e} clip {float(m['clip_frac']):.3f}, "
          f"peak {peak_gib():.1f} GiB")
    paper_rows = 1024 * 6
    est = (t_ref + dt) * paper_rows / rows
    if rollout_tps:
        est_roll = paper_rows * args.new_tokens / rollout_tps
        print(f"paper step estimate (6144 rollouts, all responses {args.new_tokens} tokens): rollouts "
              f"{est_roll:.0f} s + reference {t_ref * paper_rows / rows:.0f} s + update {dt * paper_rows / rows:.0f} s "
              f"= {est_roll + est:.0f} s")


if __name__ == "__main__":
    main()
