"""Is a pre-/mid-training run's step slower late in the run? The bare train step at each checkpoint.

    python benchmarks/bench_step_drift.py --run runs/experiments/E1_cpu_exposed20/base [--steps 253,4800]
        [--rounds 4] [--per-round 8] [--blocks 25]

The run's own config (its lineage.json), model, optimizer and data stream; the step restored from each
checkpoint (``--steps``; default: the first and the last) and a freshly initialised state, timed on the
same 4 batches in alternating rounds, with the host settings the stages run with
(``interplay_jax.host.configure``; ``--host-defaults`` leaves them off) (``--per-round`` back-to-back steps per state per round, medians
over ``--rounds``). Then ``--blocks`` blocks of ``--per-round`` steps in a row from the last checkpoint:
a program that slows as it runs (host state that grows, an allocator that fragments) shows there as a
rising series, a step whose cost depends on the trained values (e.g. denormals) in the first table.
Run it alone on the machine.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import ml_collections
import numpy as np

from interplay_jax import checkpoint as ck
from interplay_jax import host
from interplay_jax.sampling.policy import init_model_config
from interplay_jax.stages import train as st
from interplay_jax.stages.skeleton import load_tokenizer
from interplay_jax.train import lm_step, optim
from interplay_jax.train import sharding as shd


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--run", required=True, help="a pretrain / midtrain run directory")
    p.add_argument("--steps", default="", help="checkpoint steps, comma-separated (default: first and last)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--per-round", type=int, default=8)
    p.add_argument("--blocks", type=int, default=25)
    p.add_argument("--host-defaults", action="store_true", help="skip interplay_jax.host.configure()")
    a = p.parse_args(argv)
    settings = {} if a.host_defaults else host.configure()   # before any JAX backend starts
    run = pathlib.Path(a.run)
    cfg = ml_collections.ConfigDict(json.loads((run / ck.LINEAGE_FILE).read_text())["config"])
    mesh = shd.mesh_from_config(cfg.get("mesh"))
    model_cfg = init_model_config(cfg.model, str(cfg.get("init_from", "")))   # as the stage builds it
    schedule, tx = optim.optimizer_for(cfg.optimizer, st.total_steps(cfg))
    graphdef, abstract = lm_step.abstract_state(model_cfg, tx)
    shardings = shd.state_shardings(abstract, mesh)
    target = ck.abstract_target(abstract, shardings)
    cp = ck.Checkpointer(run, read_only=True)
    have = cp.all_steps()
    steps = [int(s) for s in a.steps.split(",")] if a.steps else sorted({have[0], have[-1]})
    states = {f"step {s}": cp.restore(s, target)[0] for s in steps}
    states["fresh init"] = lm_step.init_state(model_cfg, tx, int(cfg.seed), mesh)[1]
    tokenizer, tok_info = load_tokenizer(cfg)
    data = iter(st.build_train_data(cfg, tokenizer, tok_info, st.mixture_of(cfg), set(), st.total_steps(cfg)))
    batches = [shd.make_global_batch(next(data), mesh) for _ in range(4)]
    step_fn = lm_step.make_lm_step(graphdef, tx, schedule, mesh=mesh, state_shardings=shardings,
                                   document_mask=bool(cfg.document_mask))
    tokens = int(cfg.batch_size) * int(cfg.seq_len)

    def block(state, n):
        """``n`` steps in a row (after one untimed step); returns (ms per step, state)."""
        state, m = step_fn(state, batches[0])
        jax.block_until_ready(m)
        t = time.perf_counter()
        for i in range(n):
            state, m = step_fn(state, batches[i % len(batches)])
        jax.block_until_ready(m)
        return (time.perf_counter() - t) / n * 1e3, state

    copy = lambda s: jax.tree.map(lambda x: x.copy(), s)   # the step donates its input
    times = {k: [] for k in states}
    for r in range(a.rounds):
        for k in (list(states) if r % 2 == 0 else list(states)[::-1]):
            times[k].append(block(copy(states[k]), a.per_round)[0])
    print(f"{run}: {tokens:,} token slots per step (padding included); host settings {settings or 'off'}; ms per step, medians of "
          f"{a.rounds} alternating rounds")
    for k, v in times.items():
        med = float(np.median(v))
        print(f"  {k:>12}: {med:8.1f} ms  ({tokens / med * 1e3:,.0f} slots/s; rounds {', '.join(f'{x:.0f}' for x in v)})")
    state, series = copy(states[f"step {steps[-1]}"]), []
    for _ in range(a.blocks):
        ms, state = block(state, a.per_round)
        series.append(ms)
    half = len(series) // 2
    print(f"  {a.blocks} blocks of {a.per_round} steps in a row from step {steps[-1]}: "
          + ", ".join(f"{x:.0f}" for x in series))
    print(f"  first half median {np.median(series[:half]):.1f} ms, second half {np.median(series[half:]):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
