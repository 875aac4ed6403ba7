"""Compiled device memory of the GRPO sampler and update for a virtual NVIDIA H200, on a machine without one.

    python benchmarks/rl_memory.py --preset small --prompts 32 --n 8 --response 768          # mini shapes
    python benchmarks/rl_memory.py --preset paper100m --prompts 256 --n 6 --response 1024 \
        --rows 6144 --minibatches 4 --micro 64                                                # paper shapes

XLA's real GPU compiler runs here (no device is touched): the figures are what an H200 would allocate
(temporaries + arguments + outputs), as interplay_jax.rl.memory reads them for the RL stage's own
preflight. Set-up once: the CUDA plugin, see benchmarks/virtual_h200.py. Its last line is ``peak_gib=<float>``: the larger of
the sampler and the update.
"""
from __future__ import annotations

import argparse

import virtual_h200  # before jax: CPU platform + the CUDA plugin's compiler
import jax  # noqa: E402
import optax  # noqa: E402

from interplay_jax.model.qwen2 import model_config  # noqa: E402
from interplay_jax.rl import grpo, memory  # noqa: E402
from interplay_jax.sampling.sampler import Sampler  # noqa: E402
from interplay_jax.train import lm_step  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompts", type=int, default=32, help="prompts per sampler call")
    ap.add_argument("--n", type=int, default=8, help="rollouts per prompt")
    ap.add_argument("--prompt", type=int, default=1024, help="max prompt tokens")
    ap.add_argument("--response", type=int, default=768, help="max response tokens")
    ap.add_argument("--rows", type=int, default=0, help="rollouts per update (default prompts x n)")
    ap.add_argument("--minibatches", type=int, default=2)
    ap.add_argument("--micro", type=int, default=0, help="rollouts per micro-batch (0: the whole mini-batch)")
    ap.add_argument("--decode-chunk", type=int, default=128)
    ap.add_argument("--kl", type=float, default=1e-3)
    ap.add_argument("--remat", action="store_true")
    ap.add_argument("--decode-kernel", default="xla", choices=("xla", "pallas"), help="the sampler's decode attention")
    a = ap.parse_args()
    device = virtual_h200.device()

    cfg = model_config(a.preset, dtype=a.dtype, remat=a.remat,
                       max_position_embeddings=max(2048, a.prompt + a.response))
    tx = optax.adamw(1e-6, weight_decay=0.01)
    graphdef, abstract = lm_step.abstract_state(cfg, tx)
    on = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)  # noqa
    state = on(abstract)
    rows = a.rows or a.prompts * a.n
    micro = a.micro or None
    gcfg = grpo.GRPOConfig(kl_coef=a.kl)
    step = grpo.make_grpo_step(graphdef, tx, gcfg, num_minibatches=a.minibatches, micro_batch_size=micro)
    sampler = Sampler(graphdef, cfg, decode_chunk=a.decode_chunk, decode_kernel=a.decode_kernel)
    with virtual_h200.as_gpu_host():       # "auto" attention resolves as on the H200 (cuDNN flash)
        u = memory.update_bytes(step, state, rows, a.prompt + a.response, a.response, kl=a.kl > 0, sampler_old=False,
                                sharding=device)
        s = memory.sampler_bytes(sampler, state["params"], prompts=a.prompts, prompt_len=a.prompt, n=a.n,
                                 max_new_tokens=a.response, stop_ids=(3, 9), sharding=device)
    mini = rows // a.minibatches
    print(f"model {a.preset} ({cfg.num_params() / 1e6:.1f}M params, {a.dtype}{', remat' if a.remat else ''}), "
          f"virtual {device.device_set.pop().device_kind if hasattr(device, 'device_set') else 'H200'}")
    print(f"sampler: {a.prompts} prompts x {a.n} rollouts, prompt <= {a.prompt}, response <= {a.response}, "
          f"decode chunk {a.decode_chunk}, {a.decode_kernel} decode attention: {memory.gib(s)} GiB")
    print(f"update: {rows} rollouts x {a.prompt + a.response} tokens, {a.minibatches} mini-batches of {mini}, "
          f"micro-batch {micro or mini}: {memory.gib(u)} GiB")
    print(f"peak_gib={memory.gib(max(s, u))}")


if __name__ == "__main__":
    main()
