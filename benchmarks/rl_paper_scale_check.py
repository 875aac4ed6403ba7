"""Paper-scale GRPO on one accelerator: rollout throughput, the update's speed and memory, a step's time.

Prints, for the model preset given (default paper100m, bf16):
- rollouts: ``--prompts`` prompts x ``--n`` samples of ``--prompt-len`` random tokens, at most
  ``--new-tokens`` generated; ``--stop-tokens K`` makes K ids stop a row (a random model picks each
  with probability ~K/V per step: geometric response lengths of mean ~V/K, e.g. K=4 -> ~550 tokens,
  near the study's op11-14 responses), decoded in chunks of ``--decode-chunk`` steps (0: one chunk);
  generated tokens/s of a second call with the same key (the same shapes: compilation excluded), and
  the decode work saved by dropping finished rows;
- the GRPO update: ``--rows`` rollouts of ``--prompt-len + --new-tokens`` tokens (right-aligned,
  responses of the full length: the worst case), ``--minibatches`` mini-batches, micro-batches of
  ``--micro``, k3 KL: step time, trained tokens/s, peak device memory; and the reference forward;
- the estimated time of one paper step (1024 prompts x 6 rollouts) from those parts.

    python benchmarks/rl_paper_scale_check.py                       # accelerator, paper model
    python benchmarks/rl_paper_scale_check.py --preset micro --prompts 2 --rows 8 --micro 2 \
        --prompt-len 16 --new-tokens 16 --minibatches 2 --decode-chunk 4   # CPU smoke run
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
    ap.add_argument("--stop-tokens", type=int, default=4)
    ap.add_argument("--decode-chunk", type=int, default=128)
    ap.add_argument("--rollouts-only", action="store_true")
    ap.add_argument("--decode-kernel", default="xla", choices=("xla", "pallas"),
                    help="the decode step's attention (pallas: model/gpu_decode.py)")
    args = ap.parse_args()

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    cfg = model_config(args.preset, dtype=args.dtype)
    model = Qwen2(cfg, rngs=nnx.Rngs(params=0))
    graphdef, params = nnx.split(model, nnx.Param)
    rng = np.random.default_rng(0)
    vocab = cfg.vocab_size

    rollout_tps, mean_len = None, args.new_tokens
    if not args.skip_rollout:
        sampler = Sampler(graphdef, cfg, pad_id=1, decode_chunk=args.decode_chunk, decode_kernel=args.decode_kernel)
        prompts = [list(rng.integers(10, vocab, size=args.prompt_len)) for _ in range(args.prompts)]
        stop = tuple(range(10, 10 + args.stop_tokens))
        kw = dict(n=args.n, max_new_tokens=args.new_tokens, temperature=1.0, stop_ids=stop, key=jax.random.key(0))
        t0 = time.perf_counter()
        sampler.sample(params, prompts, **kw)
        t_first = time.perf_counter() - t0
        sampler.stats = {"row_steps": 0, "row_steps_full": 0}
        t0 = time.perf_counter()
        res = sampler.sample(params, prompts, **kw)            # same key, same shapes: no compilation
        dt = time.perf_counter() - t0
        gen = int(res.lengths.sum())
        rollout_tps, mean_len = gen / dt, float(res.lengths.mean())
        saved = 1 - sampler.stats["row_steps"] / max(sampler.stats["row_steps_full"], 1)
        print(f"rollouts: {args.prompts} prompts x {args.n} = {len(res.lengths)} rows, prompt {args.prompt_len}, "
              f"<= {args.new_tokens} new tokens (mean {mean_len:.0f}, {100 * res.done.mean():.0f}% stopped), decode "
              f"chunk {args.decode_chunk}: {dt:.2f} s ({t_first:.1f} s with {sampler.compile_count} compilations), "
              f"{rollout_tps:,.0f} generated tokens/s; finished rows dropped: {100 * saved:.0f}% of decode row-steps "
              f"saved; peak {peak_gib():.1f} GiB")
    if args.rollouts_only:
        return

    T = args.prompt_len + args.new_tokens
    rows, r = args.rows, args.new_tokens
    batch = {"tokens": rng.integers(10, vocab, size=(rows, T)).astype(np.int32),
             "prompt_lens": np.full((rows,), args.prompt_len, np.int32),
             "response_mask": np.ones((rows, r), np.int32),
             "advantages": grpo.group_advantages(rng.integers(0, 2, size=rows).astype(np.float32),
                                                 args.n if rows % args.n == 0 else 2),
             "ref_is_old": np.zeros((rows,), bool)}
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-6, weight_decay=0.01))
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}
    logprob_fn = grpo.make_logprob_fn(graphdef, micro_batch_size=args.micro)
    step = grpo.make_grpo_step(graphdef, tx, grpo.GRPOConfig(kl_coef=1e-3), num_minibatches=args.minibatches,
                               micro_batch_size=args.micro)
    rollouts = dict(batch)
    t0 = time.perf_counter()
    batch["ref_logprobs"] = jax.block_until_ready(logprob_fn(params, rollouts))
    t_ref_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(logprob_fn(params, rollouts))
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
    print(f"reference log-probs: {rows} x {T} tokens in {t_ref:.2f} s ({t_ref_first:.1f} s with compile), "
          f"{rows * T / t_ref:,.0f} tokens/s")
    print(f"GRPO update: {rows} rows x {T} tokens, {args.minibatches} mini-batches, micro {args.micro}: "
          f"{dt:.2f} s/step ({t_first:.1f} s with compile), {rows * T / dt:,.0f} tokens/s, "
          f"loss {float(m['loss']):.4f} kl {float(m['kl']):.2e}, peak {peak_gib():.1f} GiB")
    paper_rows = 1024 * 6
    scale = paper_rows / rows
    parts = {"reference": t_ref * scale, "update": dt * scale}
    if rollout_tps:
        parts = {"rollouts": paper_rows * mean_len / rollout_tps, **parts}
    print("paper step estimate (6144 rollouts; update and reference at full length): "
          + " + ".join(f"{k} {v:.0f} s" for k, v in parts.items()) + f" = {sum(parts.values()):.0f} s")


if __name__ == "__main__":
    main()
