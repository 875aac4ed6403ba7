"""Input pipeline throughput, wall clock, at the training stage's shapes (no extrapolation).

    python benchmarks/bench_pipeline.py [--workers 0,1,2] [--seq-len 2048 --batch 32] [--seconds 20] [--mixture JSON]

Prints packed real (non-pad) tokens per wall-clock second of the training stage's own pipeline
(interplay_jax.stages.train.build_train_data):
  * the generator on the fly with ``data.workers`` = each of ``--workers`` (0 = in the main process);
  * token shards (``data.source=tokens``, one process), made first in a temporary directory with the
    generate stage (``format=tokens``).
Each figure is the median of ``--repeats`` interleaved measurements after a warm-up batch (worker
start-up excluded). Run it on an otherwise idle machine: other load changes the ratios.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from interplay_jax.config import load_config  # noqa: E402
from interplay_jax.stages.skeleton import load_tokenizer  # noqa: E402
from interplay_jax.stages.train import build_train_data, mixture_of  # noqa: E402


def stage_config(args, **fields):
    c = load_config("pretrain.py:base,cpu", lock=False)
    c.seq_len, c.batch_size, c.tokenizer = args.seq_len, args.batch, args.tokenizer
    if args.mixture:
        c.mixture = args.mixture
    c.data.update(dict(buffer_docs=256, **fields))     # data.num_threads: the config default
    return c


def rate(config, seconds: float) -> float:
    tok, info = load_tokenizer(config)
    it = iter(build_train_data(config, tok, info, mixture_of(config), set(), steps=1))
    next(it)                                          # workers started, first buffer packed
    tokens, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tokens += int((next(it)["segment_ids"] > 0).sum())
    out = tokens / (time.perf_counter() - t0)
    if hasattr(it, "close"):
        it.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokenizer", default=str(REPO.parent / "shared" / "reference" / "tokenizer.json"))
    ap.add_argument("--shard-tokens", type=float, default=2e7, help="tokens of the temporary token shards")
    ap.add_argument("--no-shards", action="store_true")
    ap.add_argument("--mixture", default="", help="the op mixture (JSON, as --config.mixture); default: the config's")
    args = ap.parse_args()
    if not pathlib.Path(args.tokenizer).is_file():
        args.tokenizer = ""                           # the default tokenizer
    points = {f"generator, workers={w}": dict(source="generator", workers=int(w)) for w in args.workers.split(",")}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_shards:
            from interplay_jax.stages import run_config
            g = load_config("generate.py:base,tokens", lock=False)
            g.update(dict(workdir=str(pathlib.Path(tmp) / "data"), tokenizer=args.tokenizer, progress=False,
                          train_tokens=int(args.shard_tokens), workers=max(int(w) for w in args.workers.split(",")),
                          shard_docs=4096))
            g.splits = {"heldout": 16, "train": 0}
            t0 = time.perf_counter()
            run_config(g)
            print(f"(token shards: {args.shard_tokens:,.0f} tokens generated in {time.perf_counter() - t0:.1f}s)")
            points["token shards, 1 process"] = dict(source="tokens", workers=0,
                                                     data_dir=str(pathlib.Path(tmp) / "data"))
        results = {name: [] for name in points}
        for _ in range(args.repeats):                 # interleaved repeats
            for name, fields in points.items():
                results[name].append(rate(stage_config(args, **fields), args.seconds))
    print(f"seq_len {args.seq_len}, {args.batch} rows per batch, buffer 256 documents, median of {args.repeats} "
          f"x {args.seconds:.0f}s (wall clock)")
    base = statistics.median(results["generator, workers=1"]) if "generator, workers=1" in results else None
    for name, rs in results.items():
        med = statistics.median(rs)
        rel = f"  ({med / base:.2f}x workers=1)" if base and "workers=" in name else ""
        print(f"  {name:<28} {med:>12,.0f} tokens/s{rel}  [min {min(rs):,.0f}, max {max(rs):,.0f}]")


if __name__ == "__main__":
    main()
