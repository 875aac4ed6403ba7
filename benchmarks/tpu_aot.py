"""Compile the paper-scale programs for a TPU slice on a machine without a TPU, and print per chip the
memory the TPU compiler allocates against the chip's HBM and the step time its cost model predicts.

    python benchmarks/tpu_aot.py --topology v5e:2x2                      # pre-training, GRPO update, sampler
    python benchmarks/tpu_aot.py --topology v5e:4x4 --parts pretrain      # the README's multi-host mesh, 16 chips
    python benchmarks/tpu_aot.py --topology v5p:2x2x1,v4:2x2x1 --per-chip 16 --mesh -1,1,1
    python benchmarks/tpu_aot.py --parts pretrain --preset release45m --per-chip 16   # head dim 72

Needs libtpu (benchmarks/virtual_tpu.py says how); nothing runs on a TPU. Results of the runs in
README / BUILD_NOTES: benchmarks/results/tpu_aot/ (log and one JSON record per program). Programs (traced as on a TPU
host: attention "auto" = the Pallas splash flash-attention kernel, shard_map over the mesh):

* ``pretrain``: ``train.lm_step.make_lm_step`` of ``configs/pretrain.py:base,paper`` (paper100m, bf16
  compute, fp32 params and AdamW moments, seq 2048, global batch 256 rows = 512K tokens, plain causal
  attention; ``--document-mask`` for segment ids) over the mesh (default data=-1: every chip a data
  replica), ``--per-chip`` rows per chip per micro-step, gradient accumulation for the rest.
* ``grpo``: ``rl.grpo.make_grpo_step`` of ``configs/rl.py:paper`` (1024 prompts x 6 rollouts = 6,144
  rows of 1024 + 1024 tokens, 4 mini-batches, k3 KL, old log-probs recomputed) with micro-batches of
  ``--grpo-micro`` rollouts per chip.
* ``sampler``: the rollout sampler's prefill and widest decode chunk (``rl.memory.sampler_programs``)
  for ``--sampler-prompts`` prompts x 6 per call (paper: 256), prompt <= 1024, response <= 1024,
  decode chunks of 128; the RL stage runs it with the params replicated on every chip. Its time line
  is prefill + ONE decode step (the decode loop's length depends on when rows stop).

Every figure is a COMPILER ESTIMATE, not a measurement: memory is ``compiled.memory_analysis()`` per
chip (temp + arguments + outputs - donated aliases); time is the TPU cost model's ``optimal_seconds``
(an idealised roofline of XLA's own ops) plus, for the Mosaic attention kernels (which carry no cost
estimate, so the cost model counts them as free), their matmul FLOPs at the chip's peak (the blocks
they compute: 9 block matmuls per block pair forward + backward, 2 forward only). MFU = model FLOPs
(``ModelConfig.flops_per_token``: 6 x params + causal attention) / (that time x peak bf16 FLOP/s).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import virtual_tpu  # before jax: CPU platform + libtpu on the path
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from interplay_jax import checkpoint as ck  # noqa: E402
from interplay_jax.config import load_config  # noqa: E402
from interplay_jax.model import tpu_attention  # noqa: E402
from interplay_jax.model.qwen2 import model_config  # noqa: E402
from interplay_jax.rl import grpo, memory  # noqa: E402
from interplay_jax.sampling.padding import next_pow2  # noqa: E402
from interplay_jax.sampling.sampler import Sampler  # noqa: E402
from interplay_jax.stages import train as train_stage  # noqa: E402
from interplay_jax.stages.rl import grpo_config  # noqa: E402
from interplay_jax.train import lm_step, optim  # noqa: E402
from interplay_jax.train import sharding as shd  # noqa: E402

CONFIGS = virtual_tpu.REPO / "configs"


@dataclasses.dataclass
class Figures:
    part: str
    what: str
    topology: str
    mesh: dict
    memory: dict            # per chip GiB (virtual_tpu.memory)
    xla_seconds: float      # cost model (loops counted), XLA ops only
    kernel_seconds: float   # attention kernels' matmul FLOPs at peak (analytic)
    model_flops: float      # per chip per step (0: no MFU, e.g. decoding)
    flash: dict             # splash kernel launch sites by kernel
    compile_seconds: float
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.xla_seconds + self.kernel_seconds

    def mfu(self, chip) -> float:
        return self.model_flops / (self.seconds * chip.peak_tflops * 1e12) if self.seconds and self.model_flops else 0.0

    def line(self, chip) -> str:
        m = self.memory
        fits = "fits" if m["total"] <= chip.hbm_gib else "DOES NOT FIT"
        flash = ", ".join(f"{k} x{v}" for k, v in sorted(self.flash.items())) or "none"
        mfu = f" -> MFU {100 * self.mfu(chip):.1f}%" if self.model_flops else ""
        return (f"{self.part}: {self.what}\n    per chip: temp {m['temp']:.2f} + args {m['args']:.2f} + out "
                f"{m['out']:.2f} - aliased = {m['total']:.2f} GiB of {chip.hbm_gib:.0f} GiB HBM ({fits})\n"
                f"    cost model {self.xla_seconds * 1e3:.1f} ms + attention kernels at peak "
                f"{self.kernel_seconds * 1e3:.1f} ms = {self.seconds * 1e3:.1f} ms{mfu} (compiler estimates)\n"
                f"    flash kernels: {flash}; compiled in {self.compile_seconds:.0f} s")

    def record(self, chip) -> dict:
        return dict(dataclasses.asdict(self), seconds=self.seconds, mfu=self.mfu(chip), chip=dataclasses.asdict(chip))


def kernel_flops(cfg, rows: int, seq: int, passes: float) -> float:
    """Matmul FLOPs the splash kernels run for ``rows`` rows of ``seq`` tokens: per layer, head and
    computed (q block, kv block) pair, ``passes`` block matmuls of 2 x b x b x Dh FLOPs (forward 2:
    QK^T, PV; backward 7 more: dq kernel QK^T, dP, dQ; dkv kernel QK^T, dP, dV, dK). Causal block
    skipping computes n(n+1)/2 of the n^2 pairs (n = T / block)."""
    tp = tpu_attention.padded_length(seq)
    b = tpu_attention.block_size(tp)
    n = tp // b
    return rows * cfg.num_layers * cfg.num_heads * (n * (n + 1) / 2) * passes * 2.0 * b * b * cfg.head_dim


def _figures(part, what, topology, mesh, compiled, secs, *, kernel_flops_chip, model_flops_chip, **extra):
    chip = virtual_tpu.chip(topology)
    c = virtual_tpu.cost(compiled)
    extra = dict(extra, loop_factor=c["loop_factor"], xla_seconds_once=c["xla_seconds_once"])
    return Figures(part, what, topology, dict(mesh.shape), virtual_tpu.memory(compiled), c["seconds"],
                   kernel_flops_chip / (chip.peak_tflops * 1e12), model_flops_chip,
                   virtual_tpu.flash_kernel_calls(compiled), secs, extra)


def _compile(fn, *args, mesh=None):
    t0 = time.perf_counter()
    with virtual_tpu.as_tpu_host(), shd.tracing_mesh(mesh):
        compiled = fn.lower(*args).compile()
    return compiled, time.perf_counter() - t0


def _state(cfg, tx, mesh):
    graphdef, abstract = lm_step.abstract_state(cfg, tx)
    shardings = shd.state_shardings(abstract, mesh)
    return graphdef, shardings, ck.abstract_target(abstract, shardings)


# ------------------------------------------------------------------------------------------ programs


def pretrain(topology: str, mesh_dims, *, per_chip: int, document_mask: bool = False, remat: bool = False,
             global_batch: int | None = None, preset: str = "paper100m") -> Figures:
    """The paper's pre-training step (configs/pretrain.py:base,paper) over the slice."""
    config = load_config(str(CONFIGS / "pretrain.py") + ":base,paper", lock=False)
    seq, batch = int(config.seq_len), int(global_batch or config.batch_size)
    mesh = virtual_tpu.mesh(topology, *mesh_dims)
    dp = shd.batch_size_multiple(mesh)
    if batch % (dp * per_chip):
        raise SystemExit(f"error: global batch {batch} does not split into {dp} data-parallel chips x {per_chip} rows")
    accum = batch // (dp * per_chip)
    cfg = model_config(preset, dtype=str(config.model.dtype), remat=remat, attention="auto")
    shd.check_divisibility(cfg, mesh, batch, accum)
    schedule, tx = optim.optimizer_for(config.optimizer, train_stage.total_steps(config))
    graphdef, shardings, state = _state(cfg, tx, mesh)
    bsh = shd.batch_sharding(mesh)
    batch_in = {k: jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=bsh)
                for k in ("tokens", "segment_ids", "positions")}
    step = lm_step.make_lm_step(graphdef, tx, schedule, mesh=mesh, state_shardings=shardings,
                                grad_accum_steps=accum, document_mask=document_mask)
    compiled, secs = _compile(step, state, batch_in)
    rows = batch * mesh.shape["tensor"] // mesh.size        # rows each chip computes
    what = (f"{preset} seq {seq}, global batch {batch} x {seq} = {per_chip} rows/chip x {accum} accumulation x "
            f"{dp} chips{', document mask (segment ids)' if document_mask else ''}{', remat' if remat else ''}")
    return _figures("pretrain", what, topology, mesh, compiled, secs,
                    kernel_flops_chip=kernel_flops(cfg, rows, seq, 9),
                    model_flops_chip=rows * seq * cfg.flops_per_token(seq), per_chip=per_chip, accum=accum,
                    tokens_per_chip=rows * seq)


def grpo_update(topology: str, mesh_dims, *, micro_chip: int, remat: bool = False) -> Figures:
    """The GRPO update of configs/rl.py:paper (all rollouts of one RL step, 4 mini-batches)."""
    config = load_config(str(CONFIGS / "rl.py") + ":op11-14,paper", lock=False)
    r = config.rl
    rows, resp = int(r.num_prompts) * int(r.n), int(r.max_response_len)
    seq = int(r.max_prompt_len) + resp
    mesh = virtual_tpu.mesh(topology, *mesh_dims)
    dp = shd.batch_size_multiple(mesh)
    micro, mini = micro_chip * dp, rows // int(r.num_minibatches)
    if mini % micro:
        raise SystemExit(f"error: a mini-batch of {mini} rollouts does not split into micro-batches of {micro}")
    cfg = model_config("paper100m", dtype="bfloat16", remat=remat, attention="auto",
                       max_position_embeddings=max(2048, seq))
    gcfg = grpo_config(config)
    _, tx = optim.optimizer_for(config.optimizer, 200)
    graphdef, shardings, state = _state(cfg, tx, mesh)
    bsh = shd.batch_sharding(mesh)
    step = grpo.make_grpo_step(graphdef, tx, gcfg, num_minibatches=int(r.num_minibatches), micro_batch_size=micro,
                               mesh=mesh, state_shardings=shardings, batch_sharding=bsh)
    batch = memory.update_inputs(rows, seq, resp, kl=gcfg.kl_coef > 0, sampler_old=False, sharding=bsh)
    compiled, secs = _compile(step, state, batch)
    rows_chip = rows * mesh.shape["tensor"] // mesh.size
    # one forward (old log-probs recomputed) + one forward/backward per rollout: 4/3 of training FLOPs
    what = (f"paper100m, {rows} rollouts x {seq} tokens (response {resp}), {r.num_minibatches} mini-batches of "
            f"{mini}, micro-batches of {micro_chip} rollouts/chip x {dp} chips, k3 KL, old log-probs recomputed"
            f"{', remat' if remat else ''}")
    return _figures("grpo", what, topology, mesh, compiled, secs,
                    kernel_flops_chip=kernel_flops(cfg, rows_chip, seq, 2 + 9),
                    model_flops_chip=rows_chip * seq * cfg.flops_per_token(seq) * 4 / 3, micro_chip=micro_chip,
                    tokens_per_chip=rows_chip * seq)


def sampler(topology: str, mesh_dims, *, prompts: int) -> Figures:
    """The rollout sampler of configs/rl.py:paper: prefill + the widest decode chunk, params replicated
    over the slice as the RL stage holds them (every chip runs the whole call)."""
    config = load_config(str(CONFIGS / "rl.py") + ":op11-14,paper", lock=False)
    r = config.rl
    mesh = virtual_tpu.mesh(topology, *mesh_dims)
    cfg = model_config("paper100m", dtype="bfloat16", attention="auto",
                       max_position_embeddings=max(2048, int(r.max_prompt_len) + int(r.max_response_len)))
    _, tx = optim.optimizer_for(config.optimizer, 200)
    graphdef, shardings, state = _state(cfg, tx, mesh)
    s = Sampler(graphdef, cfg, decode_chunk=int(r.decode_chunk))
    rep = NamedSharding(mesh, PartitionSpec())
    t0 = time.perf_counter()
    with virtual_tpu.as_tpu_host(), shd.tracing_mesh(mesh):
        prefill, decode = memory.sampler_programs(s, state["params"], prompts=prompts, prompt_len=int(r.max_prompt_len),
                                                  n=int(r.n), max_new_tokens=int(r.max_response_len),
                                                  stop_ids=(3, 9), sharding=rep)
    secs = time.perf_counter() - t0
    mp, md = virtual_tpu.memory(prefill), virtual_tpu.memory(decode)
    peak = max((mp, md), key=lambda m: m["total"])
    cp, cd = virtual_tpu.cost(prefill), virtual_tpu.cost(decode)
    rows, length = prompts * int(r.n), int(r.max_prompt_len)
    chunk = min(int(r.decode_chunk) or int(r.max_response_len), int(r.max_response_len))
    # the decode loop stops when every row has (data-dependent): the cost model counts its body once,
    # so ``cd`` is one decode step of every row over the widest chunk's slots (an upper bound per step)
    what = (f"paper100m bf16, {prompts} prompts x {r.n} = {rows} rollouts per call, prompt {length} + response "
            f"{r.max_response_len}, decode chunks of {chunk} steps; prefill {mp['total']:.2f} GiB, "
            f"{cp['seconds'] * 1e3:.1f} ms + kernels; decode {md['total']:.2f} GiB, one step of {rows} rows over "
            f"{length + int(r.max_response_len)} slots {cd['seconds'] * 1e3:.2f} ms (>= {rows / cd['seconds']:,.0f} "
            f"tokens/s per chip)")
    return Figures("sampler", what, topology, dict(mesh.shape), peak, cp["seconds"] + cd["seconds"],
                   kernel_flops(cfg, next_pow2(prompts), length, 2) / (virtual_tpu.chip(topology).peak_tflops * 1e12),
                   0.0, virtual_tpu.flash_kernel_calls(prefill), secs,
                   dict(prefill=mp, decode=md, prefill_seconds=cp["seconds"], decode_step_seconds=cd["seconds"],
                        decode_loop_factor=cd["loop_factor"], rows=rows))


PARTS = {"pretrain": lambda a, t, m: pretrain(t, m, per_chip=a.per_chip, document_mask=a.document_mask,
                                              remat=a.remat, global_batch=a.global_batch or None, preset=a.preset),
         "grpo": lambda a, t, m: grpo_update(t, m, micro_chip=a.grpo_micro, remat=a.remat),
         "sampler": lambda a, t, m: sampler(t, m, prompts=a.sampler_prompts)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--topology", default="v5e:2x2", help="comma-separated TPU slices, e.g. v5e:2x2,v5p:2x2x1")
    p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor (-1 fills the slice)")
    p.add_argument("--parts", default="pretrain,grpo,sampler", help=f"comma-separated: {', '.join(PARTS)}")
    p.add_argument("--per-chip", type=int, default=8, help="pre-training rows per chip per micro-step")
    p.add_argument("--global-batch", type=int, default=0, help="pre-training rows per step (0: the paper's 256)")
    p.add_argument("--document-mask", action="store_true", help="pre-training with segment ids")
    p.add_argument("--preset", default="paper100m", help="pre-training model preset (e.g. release45m: head dim 72)")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--grpo-micro", type=int, default=16, help="GRPO rollouts per chip per micro-batch")
    p.add_argument("--sampler-prompts", type=int, default=256, help="prompts per sampler call (x 6 rollouts)")
    p.add_argument("--json", default="", help="append one JSON record per program to this file")
    a = p.parse_args(argv)
    missing = virtual_tpu.libtpu_missing()
    if missing:
        sys.exit(f"error: {missing}")
    parts = a.parts.split(",")
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        sys.exit(f"error: unknown part(s) {', '.join(unknown)}; expected some of {', '.join(PARTS)}")
    mesh_dims = tuple(int(x) for x in a.mesh.split(","))
    failed = 0
    for topology in a.topology.split(","):
        chip = virtual_tpu.chip(topology)
        n = len(virtual_tpu.topology(topology).devices)
        print(f"== {topology}: {n} chips on {virtual_tpu.hosts(topology)} host(s), {chip.name} "
              f"({chip.hbm_gib:.0f} GiB HBM, {chip.peak_tflops:.0f} TFLOP/s bf16 per chip), mesh data,fsdp,tensor = "
              f"{shd.mesh_shape(*mesh_dims, n)}; jax {jax.__version__}, libtpu compile-only (COMPILER ESTIMATES)",
              flush=True)
        for part in parts:
            try:
                f = PARTS[part](a, topology, mesh_dims)
            except Exception as e:  # noqa: BLE001 — report and go on: one program must not hide the others
                msg = str(e).splitlines()[0][:400] if str(e) else type(e).__name__
                oom = "RESOURCE_EXHAUSTED" in msg
                failed += not oom
                print(f"{part}: {'DOES NOT FIT' if oom else 'FAILED'}: {type(e).__name__}: {msg}", flush=True)
                record = dict(part=part, topology=topology, error=msg, oom=oom)
            else:
                print(f.line(chip), flush=True)
                record = f.record(chip)
            if a.json:
                with open(a.json, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
