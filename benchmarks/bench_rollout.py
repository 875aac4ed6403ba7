"""Rollout throughput: our KV-cache sampler vs HF transformers ``generate``, same model, same shapes.

The same random-weight model (``--model`` preset, fp32) is written with interplay_jax.model.hf.save
and loaded by transformers; both sample ``--batch`` rows from ``--prompt_len``-token prompts for
exactly ``--new_tokens`` tokens (no stop ids; ``--mode sample``: temperature 1, top-p 1, top-k off;
``--mode greedy``: argmax), after one warm-up call each (compilation / first-call overhead
excluded). Prints generated tokens/s, median (and best) of ``--repeats`` timed calls each, taken in
interleaved rounds (one call per side, the order alternating), and the ratio of the medians.

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
    ap.add_argument("--exact-softmax", action="store_true",
                    help="decode with the exact (row-max) softmax instead of the self-shifted one")
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
          f"backend {jax.default_backend()}, host settings {host_settings or 'off'}, decode softmax "
          f"{'exact' if args.exact_softmax else 'self-shifted'}")

    # ours
    graphdef, params = nnx.split(model, nnx.Param)
    sampler = Sampler(graphdef, cfg, pad_id=1, decode_chunk=args.chunk, cache_dtype=args.cache_dtype,
                      self_shift=not args.exact_softmax)
    greedy = args.mode == "greedy"
    kw = dict(n=1, max_new_tokens=args.new_tokens, temperature=0.0 if greedy else 1.0, stop_ids=())
    t0 = time.perf_counter()
    sampler.sample(params, prompts, key=jax.random.key(0), **kw)
    compile_s = time.perf_counter() - t0
    calls = {"ours": 0}

    def ours_call():
        calls["ours"] += 1
        res = sampler.sample(params, prompts, key=jax.random.key(calls["ours"]), **kw)
        assert int(res.lengths.sum()) == total

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

    def hf_call():
        with torch.inference_mode():
            out = ref.generate(inputs, attention_mask=attn, **gen_kw)
        assert out.shape == (args.batch, args.prompt_len + args.new_tokens), out.shape

    with torch.inference_mode():
        ref.generate(inputs[:, :], attention_mask=attn, **dict(gen_kw, max_new_tokens=4, min_new_tokens=4))
    # interleaved repeats, the order alternating each round (whichever runs second after a pause reads
    # differently); a short pause lets torch's idle threads stop spinning
    times = {"ours": [], "hf": []}
    for r in range(args.repeats):
        for side in (("ours", "hf") if r % 2 == 0 else ("hf", "ours")):
            time.sleep(0.3)
            t0 = time.perf_counter()
            (ours_call if side == "ours" else hf_call)()
            times[side].append(time.perf_counter() - t0)
    ours, theirs = (total / float(np.median(times[k])) for k in ("ours", "hf"))
    print(f"ours (jax while_loop + KV cache): {ours:,.0f} tokens/s  (median of {args.repeats}: "
          f"{np.median(times['ours']):.2f}s, best {total / min(times['ours']):,.0f} tokens/s; first call incl. "
          f"compile {compile_s:.1f}s)")
    print(f"HF transformers {transformers.__version__} generate (torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads): {theirs:,.0f} tokens/s  (median of {args.repeats}: "
          f"{np.median(times['hf']):.2f}s, best {total / min(times['hf']):,.0f} tokens/s)")
    print(f"ratio ours / HF: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
