"""End-to-end evaluation throughput (verified completions/s) and where the time goes.

A random-weight ``--model`` (default tiny) with the reference tokenizer is evaluated on a generated
eval set (``--ops``, ``--per_op`` prompts each, ``--n`` samples, ``--max_new_tokens``) through the
same engine as the eval stage (interplay_jax.eval.evaluate.evaluate_items): sampling (tokenize,
KV-cache decode, detokenize) vs verification. A random model rarely stops and writes no valid
steps, so verification of its output is cheap; the same number of gold-solution completions is
therefore verified too ("oracle"), which is the realistic verification cost of a trained model.

    python benchmarks/bench_eval.py [--model tiny --ops 2,5,11,15 --per_op 2 --n 8 --max_new_tokens 256]
"""
from __future__ import annotations

import argparse
import pathlib
import time

import jax
from flax import nnx

from interplay_jax.eval.evalset import generate_evalset
from interplay_jax.eval.evaluate import evaluate_items
from interplay_jax.model.qwen2 import Qwen2, model_config
from interplay_jax.sampling.sampler import Sampler
from interplay_jax.task.tokenizer import Tokenizer
from interplay_jax.task import formats

REF_TOKENIZER = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "tokenizer.json"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--ops", default="2,5,11,15")
    ap.add_argument("--per_op", type=int, default=2)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=256)
    ap.add_argument("--batch_prompts", type=int, default=4)
    ap.add_argument("--tokenizer", default=str(REF_TOKENIZER))
    args = ap.parse_args()

    tok = Tokenizer.load(args.tokenizer)
    cfg = model_config(args.model)
    model = Qwen2(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    sampler = Sampler(graphdef, cfg, pad_id=tok.pad_id)
    items = generate_evalset(ops=[int(o) for o in args.ops.split(",")], per_op=args.per_op, seed=0)
    kw = dict(n=args.n, max_new_tokens=args.max_new_tokens, temperature=0.7, batch_prompts=args.batch_prompts,
              progress=False)
    print(f"model {args.model} ({cfg.num_params() / 1e6:.2f}M), {len(items)} prompts x n={args.n}, "
          f"<= {args.max_new_tokens} new tokens, backend {jax.default_backend()}")
    warm = {}
    t0 = time.perf_counter()
    evaluate_items(sampler, params, tok, items, key=jax.random.key(99), timing=warm, **kw)
    print(f"warm-up pass (compiles every prompt-length bucket) {time.perf_counter() - t0:.1f}s")

    timing: dict = {}
    t0 = time.perf_counter()
    evaluate_items(sampler, params, tok, items, key=jax.random.key(0), timing=timing, **kw)
    wall = time.perf_counter() - t0
    c = timing["completions"]
    print(f"model: {c} completions in {wall:.1f}s = {c / wall:.2f} verified completions/s; "
          f"sampling {timing['sampling']:.1f}s ({timing['generated_tokens'] / max(timing['sampling'], 1e-9):,.0f} "
          f"generated tokens/s), verification {timing['verification']:.2f}s")

    oracle: dict = {}
    t0 = time.perf_counter()
    evaluate_items(None, None, None, items, n=args.n, timing=oracle, progress=False,
                   responder=lambda it, n: [formats.format_completion(it["record"])] * n)
    owall = time.perf_counter() - t0
    print(f"oracle (gold completions): {oracle['completions']} verified in {oracle['verification']:.2f}s = "
          f"{oracle['completions'] / max(oracle['verification'], 1e-9):,.0f} verifications/s")
    est = c / (timing["sampling"] + oracle["verification"])
    share = oracle["verification"] / (timing["sampling"] + oracle["verification"])
    print(f"estimate for a trained model: {est:.2f} verified completions/s, verification {100 * share:.1f}% "
          f"of the time (wall incl. overhead {owall:.2f}s)")


if __name__ == "__main__":
    main()
