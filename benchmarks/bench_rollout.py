"""Rollout throughput: our KV-cache sampler vs HF transformers ``generate``, same model, same shapes.

The same random-weight model (``--model`` preset, fp32) is written with interplay_jax.model.hf.save
and loaded by transformers; both sample ``--batch`` rows from ``--prompt_len``-token prompts for
exactly ``--new_tokens`` tokens (no stop ids; ``--mode sample``: temperature 1, top-p 1, top-k off;
``--mode greedy``: argmax), after one warm-up call each (compilation / first-call overhead
excluded). Prints generated tokens/s, median (and best) of ``--repeats`` timed calls each, and the
ratio of the medians.

    python benchmarks/bench_rollout.py [--model tiny --batch 32 --prompt_len 128 --new_tokens 256]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from interplay_jax import host
from interplay_jax.model import hf
from interplay_jax.model.qwen2 import Qwen2, model_config
from interplay_jax.sampling.sampler import Sampler


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt_len", type=int, default=128)
    ap.add_argument("--new_tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--torch_threads", type=int, default=0, help="0: torch default")
    ap.add_argument("--mode", choices=("sample", "greedy"), default="sample")
    ap.add_argument("--chunk", type=int, default=64, help="decode steps per chunk (0: one chunk)")
    ap.add_argument("--cache_dtype", default=None, help="our KV cache dtype (default: the model's, fp32)")
    ap.add_argument("--host-defaults", action="store_true",
                    help="skip interplay_jax.host.configure() (glibc's malloc defaults, async CPU dispatch)")
    args = ap.parse_args()
    host_settings = {} if args.host_defaults else host.configure()  # what the training stages run with

    cfg = model_config(args.model)
    model = Qwen2(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    prompts = rng.integers(10, cfg.vocab_size, size=(args.batch, args.prompt_len)).tolist()
    total = args.batch * args.new_tokens
    print(f"mode {args.mode}, model {args.model} ({cfg.num_params() / 1e6:.2f}M params), batch {args.batch}, "
          f"prompt {args.prompt_len}, new tokens {args.new_tokens}, our KV cache {args.cache_dtype or cfg.dtype}, "
          f"backend {jax.default_backend()}, host settings {host_settings or 'off'}")

    # ours
    graphdef, params = nnx.split(model, nnx.Param)
    sampler = Sampler(graphdef, cfg, pad_id=1, decode_chunk=args.chunk, cache_dtype=args.cache_dtype)
    greedy = args.mode == "greedy"
    kw = dict(n=1, max_new_tokens=args.new_tokens, temperature=0.0 if greedy else 1.0, stop_ids=())
    t0 = time.perf_counter()
    sampler.sample(params, prompts, key=jax.random.key(0), **kw)
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        res = sampler.sample(params, prompts, key=jax.random.key(r + 1), **kw)
        times.append(time.perf_counter() - t0)
    assert int(res.lengths.sum()) == total
    ours = total / float(np.median(times))
    print(f"ours (jax while_loop + KV cache): {ours:,.0f} tokens/s  (median of {args.repeats}: {np.median(times):.2f}s, "
          f"best {total / min(times):,.0f} tokens/s; first call incl. compile {compile_s:.1f}s)")

    # HF transformers
    import torch
    import transformers

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as d:
        hf.save(model, cfg, d)
        ref = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    inputs = torch.tensor(prompts, dtype=torch.long)
    attn = torch.ones_like(inputs)
    gen_kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=1, eos_token_id=None)
    gen_kw.update(do_sample=False) if greedy else gen_kw.update(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    with torch.inference_mode():
        ref.generate(inputs[:, :], attention_mask=attn, **dict(gen_kw, max_new_tokens=4, min_new_tokens=4))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = ref.generate(inputs, attention_mask=attn, **gen_kw)
            times.append(time.perf_counter() - t0)
    assert out.shape == (args.batch, args.prompt_len + args.new_tokens), out.shape
    theirs = total / float(np.median(times))
    print(f"HF transformers {transformers.__version__} generate (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads): {theirs:,.0f} tokens/s  (median of {args.repeats}: "
          f"{np.median(times):.2f}s, best {total / min(times):,.0f} tokens/s)")
    print(f"ratio ours / HF: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
