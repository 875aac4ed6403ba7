"""Data pipeline throughput vs training throughput.

    python benchmarks/bench_pipeline.py [--tokenizer PATH] [--batches N] [--seq-len 2048]

Prints (1) the grain pipeline's packed real tokens per second per CPU core (process CPU time, one
reader thread) for two sources: the generator on the fly, and records already in memory (the JSONL
path: tokenize + pack only); (2) the ``tiny`` model's training tokens/s on this machine (lm_step,
fp32, 8 x 1024); their ratio (target >= 10x); and (3) how many host cores would feed paper100m on
one H100 at 40% MFU of 990 TFLOP/s bf16: tokens/s = 0.4 * 990e12 / (6 * 103e6).
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def get_tokenizer(path):
    from interplay_jax.task.tokenizer import load_tokenizer, train_on_records
    if path and pathlib.Path(path).is_file():
        return load_tokenizer(path), str(path)
    ref = REPO.parent / "shared" / "reference" / "tokenizer.json"
    if ref.is_file():
        return load_tokenizer(ref), str(ref)
    from interplay_jax.task.mixture import get_mixture
    m = get_mixture("rl_uniform")
    return train_on_records(m.record(0, i) for i in range(2000)), "trained on 2,000 generated documents"


def pipeline_rate(source, tok, seq_len, batches, shuffle=None):
    from interplay_jax.data import pipeline as dp
    ds = dp.build_dataset(source, tok.encode_document, seq_len=seq_len, batch_size=8, pad_id=tok.pad_id,
                          buffer_docs=256, num_threads=0, shuffle_seed=shuffle, num_epochs=None,
                          process_index=0, process_count=1)
    it = iter(ds)
    next(it)
    wall, cpu, tokens = time.perf_counter(), time.process_time(), 0
    for _ in range(batches):
        b = next(it)
        tokens += int((b["segment_ids"] > 0).sum())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return tokens / cpu, tokens / wall, dp.dropped_documents(it)


def train_rate(preset="tiny", batch=8, seq_len=1024, steps=5):
    import jax
    import ml_collections
    import numpy as np

    from interplay_jax.model.qwen2 import model_config
    from interplay_jax.train import lm_step, optim
    from interplay_jax.train import sharding as shd
    ocfg = ml_collections.ConfigDict(dict(lr=1e-3, min_lr=1e-4, warmup_frac=0.1, total_steps=100, schedule="cosine",
                                          b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, grad_clip=1.0))
    tx, schedule = optim.make_optimizer(ocfg), optim.make_schedule(ocfg)
    mesh = shd.make_mesh()
    cfg = model_config(preset)
    graphdef, state = lm_step.init_state(cfg, tx, 0, mesh)
    step = lm_step.make_lm_step(graphdef, tx, schedule, mesh=mesh, state_shardings=lm_step.shardings_of(state))
    rng = np.random.default_rng(0)
    b = {"tokens": rng.integers(10, 2000, (batch, seq_len), dtype=np.int32),
         "segment_ids": np.ones((batch, seq_len), np.int32),
         "positions": np.tile(np.arange(seq_len, dtype=np.int32), (batch, 1))}
    state, m = step(state, b)
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, b)
    jax.block_until_ready(m)
    return batch * seq_len * steps / (time.perf_counter() - t), cfg.num_params()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default="")
    ap.add_argument("--batches", type=int, default=60)
    ap.add_argument("--seq-len", type=int, default=2048)
    args = ap.parse_args()

    from interplay_jax.data import pipeline as dp
    from interplay_jax.task.mixture import get_mixture
    tok, where = get_tokenizer(args.tokenizer)
    mix = get_mixture("base")
    print(f"tokenizer: {where}; mixture base; seq_len {args.seq_len}; batch 8; 1 reader thread")
    gen_cpu, gen_wall, dropped = pipeline_rate(dp.GeneratorSource(mix, 0), tok, args.seq_len, args.batches)
    print(f"pipeline, generator on the fly : {gen_cpu:,.0f} tokens/s per CPU core ({gen_wall:,.0f} wall), "
          f"{dropped} too-long docs dropped")
    records = [mix.record(1, i) for i in range(6000)]
    mem_cpu, mem_wall, _ = pipeline_rate(records, tok, args.seq_len, args.batches, shuffle=0)
    print(f"pipeline, records in memory    : {mem_cpu:,.0f} tokens/s per CPU core ({mem_wall:,.0f} wall)")
    tps, n = train_rate()
    print(f"training, tiny ({n / 1e6:.2f}M params, fp32, 8 x 1024): {tps:,.0f} tokens/s on this machine")
    print(f"ratio pipeline (generator, per core) / tiny training: {gen_cpu / tps:,.1f}x (target >= 10x)")
    need = 0.4 * 990e12 / (6 * 103e6)
    print(f"paper100m on one H100 at 40% MFU needs {need:,.0f} tokens/s: "
          f"{math.ceil(need / gen_cpu)} host cores generating on the fly, "
          f"{math.ceil(need / mem_cpu)} cores from pre-generated JSONL")


if __name__ == "__main__":
    main()
