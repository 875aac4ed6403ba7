"""What checkpoint integrity costs on a paper100m-sized train state.

    python benchmarks/bench_checkpoint.py [--preset paper100m] [--repeats 2] [--dir /tmp/bench_ckpt]

Builds the real train state of the paper preset (paper100m, 103.2M fp32 parameters + AdamW's two
moments: ~1.24 GB) on this machine's default device and times, per repeat:
  digest       sha256 of every array (what a save computes, in background threads while orbax writes)
  save         ``Checkpointer.save`` returning (the part the training loop waits for) and the save
               landing (``wait``: orbax write + fsync + digest written before the publishing rename),
               beside the same save with the digest switched off (orbax alone)
  restore      ``Checkpointer.restore`` (read + verify) and the verification alone (hash of the
               restored arrays); ``restore_params`` (params only, verified: init_from / eval)
and prints the digest cost as a fraction of the paper preset's checkpoint interval (``ckpt_every``
steps of ``--step-seconds`` each; the default 0.93 s/step is the measured 116.4 ms per 32 x 2048-token
step on one H200 (BUILD_NOTES) scaled to the paper's 512K-token batch).
"""
from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_state(preset: str):
    from interplay_jax.config import load_config
    from interplay_jax.model.qwen2 import model_config_from_dict
    from interplay_jax.train import lm_step, optim
    from interplay_jax.train import sharding as shd
    c = load_config("pretrain.py:base,paper")
    cfg = model_config_from_dict({**c.model.to_dict(), "preset": preset})
    _, tx = optim.optimizer_for(c.optimizer, 19_073)
    mesh = shd.mesh_from_config(None)
    _, state = lm_step.init_state(cfg, tx, 0, mesh)
    return state, int(c.ckpt_every), cfg.num_params()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="paper100m")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dir", default="/tmp/bench_ckpt")
    ap.add_argument("--step-seconds", type=float, default=0.93)
    args = ap.parse_args(argv)

    import jax
    from interplay_jax import checkpoint as ck

    state, ckpt_every, n_params = build_state(args.preset)
    jax.block_until_ready(state)
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
    print(f"{args.preset}: {n_params / 1e6:.1f}M params, state {nbytes / 1e9:.2f} GB in "
          f"{len(jax.tree.leaves(state))} arrays; {ck._HASH_THREADS} hash threads; device {jax.devices()[0]}")
    target = ck.abstract_target(state)
    rows: dict[str, list[float]] = {}
    root = pathlib.Path(args.dir)
    for r in range(args.repeats):
        shutil.rmtree(root, ignore_errors=True)
        rows.setdefault("digest (hash all arrays)", []).append(timed(lambda: ck.tree_records(state))[0])
        with ck.Checkpointer(root / "with_digest", max_to_keep=2) as c:
            t_call, _ = timed(lambda: c.save(1, state, data_state={"r": r}, meta={"bench": True}))
            t_wait, _ = timed(c.wait)
            rows.setdefault("save: call returns", []).append(t_call)
            rows.setdefault("save: landed (write + fsync + digest)", []).append(t_call + t_wait)
            t_restore, (restored, _, _) = timed(lambda: c.restore(1, target=target))
            rows.setdefault("restore + verify", []).append(t_restore)
            rows.setdefault("verify alone (hash restored)", []).append(timed(lambda: ck.tree_records(restored))[0])
            del restored
        rows.setdefault("restore_params + verify", []).append(
            timed(lambda: ck.restore_params(root / "with_digest", target=target["params"]))[0])
        # the same save without the digest (orbax alone): hashing and the digest write switched off
        real_submit, real_write = ck._submit_leaf_records, ck.Checkpointer._write_digest
        ck._submit_leaf_records = lambda tree: {}
        ck.Checkpointer._write_digest = lambda self: None
        try:
            with ck.Checkpointer(root / "no_digest", max_to_keep=2) as c:
                t_call, _ = timed(lambda: c.save(1, state, data_state={"r": r}, meta={"bench": True}))
                t_wait, _ = timed(c.wait)
            rows.setdefault("save without digest: landed", []).append(t_call + t_wait)
        finally:
            ck._submit_leaf_records, ck.Checkpointer._write_digest = real_submit, real_write
    shutil.rmtree(root, ignore_errors=True)

    print(f"{'what':42s} {'median s':>9s}  all")
    for k, v in rows.items():
        print(f"{k:42s} {statistics.median(v):9.2f}  {', '.join(f'{x:.2f}' for x in v)}")
    digest = statistics.median(rows["digest (hash all arrays)"])
    interval = ckpt_every * args.step_seconds
    print(f"digest throughput {nbytes / 1e9 / digest:.2f} GB/s; paper checkpoint interval {ckpt_every} steps x "
          f"{args.step_seconds} s = {interval:.0f} s: hashing at save = {100 * digest / interval:.2f}% of it "
          f"(off the training thread), verification once per resume")


if __name__ == "__main__":
    main()
