"""The pre-training stage's own speed vs its bare train step at the same shapes (is it input-bound?).

    python benchmarks/bench_stage.py --preset tiny --seq 1024 --batch 8 --steps 60                # this CPU
    python benchmarks/bench_stage.py --preset paper100m --seq 2048 --batch 256 --per-device 32 \\
        --dtype bfloat16 --workers 12 --steps 40 --tokenizer reference                          # one GPU

Runs ``configs/pretrain.py:base`` for ``--steps`` steps (the generator on the fly with ``--workers``
data processes, or ``--source tokens`` with shards made first) and reads the tokens/s the stage logged
(training time only: compile, eval and checkpoint time are apart; the first log interval is dropped),
then times the same jitted step on synthetic batches already on the device. Prints both, the ratio,
and the stage's MFU. Wall-clock on this machine; run it with nothing else running.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from interplay_jax.config import load_config  # noqa: E402
from interplay_jax.model.qwen2 import model_config_from_dict  # noqa: E402
from interplay_jax.stages import run_config  # noqa: E402
from interplay_jax.stages.train import grad_accum_steps, total_steps  # noqa: E402
from interplay_jax.train import lm_step, optim  # noqa: E402
from interplay_jax.train import sharding as shd  # noqa: E402


def stage_config(a, workdir):
    c = load_config("pretrain.py:base,cpu", lock=False)
    c.update(dict(workdir=str(workdir), seq_len=a.seq, batch_size=a.batch, per_device_batch=a.per_device,
                  total_steps=a.steps, log_every=a.log_every, ckpt_every=0, eval_every=0, progress=False,
                  peak_flops=a.peak_flops))
    c.tokenizer = str(REPO.parent / "shared" / "reference" / "tokenizer.json") if a.tokenizer == "reference" else a.tokenizer
    c.model.update(dict(preset=a.preset, dtype=a.dtype))
    c.eval.per_bucket = 0
    c.data.update(dict(workers=a.workers, source=a.source))
    return c


def synthetic_rate(c, steps: int) -> float:
    """tokens/s of the stage's own step function on random batches already on the device."""
    mesh = shd.mesh_from_config(c.mesh)
    cfg = model_config_from_dict(c.model)
    schedule, tx = optim.optimizer_for(c.optimizer, total_steps(c))
    graphdef, state = lm_step.init_state(cfg, tx, 0, mesh)
    step = lm_step.make_lm_step(graphdef, tx, schedule, mesh=mesh, state_shardings=lm_step.shardings_of(state),
                                grad_accum_steps=grad_accum_steps(c, mesh))
    rng = np.random.default_rng(0)
    b, t = int(c.batch_size), int(c.seq_len)
    batch = shd.make_global_batch({"tokens": rng.integers(10, cfg.vocab_size, (b, t)).astype(np.int32),
                                   "segment_ids": np.ones((b, t), np.int32),
                                   "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1))}, mesh)
    state, m = step(state, batch)
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, batch)
    jax.block_until_ready(m)
    return b * t * steps / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--per-device", type=int, default=0)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--source", default="generator", choices=("generator", "tokens"))
    ap.add_argument("--tokenizer", default="", help="a tokenizer.json, 'reference', or '' (the default one)")
    ap.add_argument("--peak-flops", type=float, default=0.0, help="per device (default: 989e12 on GPU, 1e11 CPU)")
    a = ap.parse_args()
    a.peak_flops = a.peak_flops or (989e12 if jax.default_backend() == "gpu" else 1e11)
    with tempfile.TemporaryDirectory() as tmp:
        c = stage_config(a, pathlib.Path(tmp) / "run")
        if a.source == "tokens":
            g = load_config("generate.py:base,tokens", lock=False)
            g.update(dict(workdir=str(pathlib.Path(tmp) / "data"), tokenizer=c.tokenizer, progress=False,
                          train_tokens=int(a.batch * a.seq * a.steps * 0.7), workers=a.workers, shard_docs=4096))
            g.splits = {"heldout": 16, "train": 0}
            run_config(g)
            c.data.data_dir = str(pathlib.Path(tmp) / "data")
            c.data.workers = 0
        summary = run_config(c)
        c.workdir = str(pathlib.Path(tmp) / "synthetic")
        synthetic = synthetic_rate(c, max(10, a.steps // 4))
    stage_tps = summary["final"].get("tokens_per_s")
    cfg = model_config_from_dict(c.model)
    print(f"{a.preset} ({cfg.num_params() / 1e6:.1f}M, {a.dtype}), {a.batch} x {a.seq}, data {a.source}, "
          f"workers {a.workers}, {jax.device_count()} x {jax.devices()[0].device_kind}")
    print(f"  stage (last log interval, training time only): {stage_tps:,.0f} tokens/s, MFU "
          f"{100 * summary['final'].get('mfu', 0):.1f}%, data wait {100 * summary['final'].get('data_wait_frac', 0):.0f}%")
    print(f"  synthetic batches, same step:                  {synthetic:,.0f} tokens/s")
    print(f"  ratio stage / synthetic: {stage_tps / synthetic:.2f}  (seconds: {summary.get('seconds')})")


if __name__ == "__main__":
    main()
