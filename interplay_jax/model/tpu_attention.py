"""Flash attention on TPU: jax's Pallas splash-attention kernel behind the model's attention layout.

``splash_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT=None)`` computes exactly what
``qwen2.attention`` defines (causal; with segment ids a query sees only keys of its own segment) with
``jax.experimental.pallas.ops.tpu.splash_attention`` (jax 0.10.2): a blocked online-softmax kernel
that never materialises the T x T scores and skips the key blocks above the diagonal.

* **Layout**: the model's [B, T, heads, Dh] is transposed to the kernel's [heads, T, Dh] per row and
  the kernel is ``vmap``-ed over the batch. **GQA is native**: the kernel takes H query heads and K
  key/value heads (H a multiple of K; query head h reads KV head h // (H/K), the model's grouping),
  so K/V are never repeated.
* **Scale**: the kernel does not scale the logits; q is multiplied by 1/sqrt(Dh) in fp32 and cast
  back before the call (one rounding of q in bf16).
* **Lengths**: the kernel's blocks are multiples of 128 tokens (the TPU lane width). A chunk whose T
  is not (a sampler prefill of a 16-token bucket) is zero-padded at the end to the next multiple of
  128 and the output sliced back: exact, since a causal query never sees a later key, and padded keys
  get segment 0, which no real segment matches. Blocks: 512 (or 256 / 128, the largest that divides).
* **Head dims** 64 (paper100m), 72 (release45m), 32 and 8 are passed as they are: the kernel pads
  the head dimension to 128 lanes in VMEM itself (BUILD_NOTES, "Presets faithful to the release").
* **Segment ids**: ``SegmentIds(q=seg, kv=seg)``; segment 0 (padding) queries see the padding keys
  before them instead of nothing: their outputs are unspecified in every path (masked out by the
  loss), and no query row is ever fully masked (the diagonal is always its own segment), so no NaN.
* **Sharding**: a Mosaic kernel cannot be partitioned by XLA (compiling one inside a multi-device
  ``jit`` fails with "Mosaic kernels cannot be automatically partitioned"). Where an abstract mesh is
  in context (``jax.sharding.get_abstract_mesh()``; the train / GRPO steps trace under their mesh,
  see ``interplay_jax.train.sharding.traced_under``), the call is wrapped in ``jax.shard_map``: the
  batch is split over the mesh's axes other than ``tensor`` (interplay_jax.train.sharding's
  convention: data x fsdp), heads over ``tensor`` when it divides both H and K; axes that do not
  divide are replicated. Attention is independent per row and per KV-head group, so no collective
  is needed inside. Without a mesh in context the kernel is called directly (one device).
* **Off TPU** (tests on CPU) the same kernel runs in Pallas interpret mode: slow, exact, for checking
  numerics only (``qwen2.attention`` never picks it on CPU unless asked, ``attention="splash"``).

``rope(x, cos, sin)``: the model's RoPE (HF rotate-half) in a TPU-friendly form: rotate_half(x) as a
matmul with a fixed [Dh, Dh] signed permutation (exact: one +-1 per column, fp32 accumulation, HIGHEST
precision for fp32 inputs). The slicing form materialises the two fp32 halves of q and k with a 32-
or 36-wide minor dimension (a quarter of the 128 lanes) in the forward and again in the backward;
for the paper100m pre-training step on v5e the TPU cost model puts that at ~20% of the step (BUILD_NOTES).

Nothing here has run on a TPU: it is compiled for virtual TPU slices on a CPU host
(``benchmarks/tpu_aot.py``, ``tests/test_tpu_attention.py``) and checked numerically in interpret mode.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

LANES = 128                  # TPU lane width: the kernel's block sizes are multiples of it
BLOCKS = (512, 256, 128)     # preferred block size first (MaxText's default is 512)
HEAD_AXIS = "tensor"         # mesh axis that splits heads (interplay_jax.train.sharding.RULES)
KERNEL_NAME = "splash"       # the compiled TPU program names its Mosaic kernels splash_mha_*


def padded_length(t: int) -> int:
    """T rounded up to a multiple of the lane width (the kernel's smallest block)."""
    return -(-t // LANES) * LANES


def block_size(t_padded: int) -> int:
    """The largest preferred block that divides the (padded) length."""
    return next(b for b in BLOCKS if t_padded % b == 0)


@functools.lru_cache(maxsize=64)
def _kernel(num_heads: int, seq_len: int, interpret: bool):
    """A causal splash kernel for ``num_heads`` query heads over ``seq_len`` (a multiple of 128)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as sa

    b = block_size(seq_len)
    blocks = sa.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                           block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    mask = sa.MultiHeadMask([sa.CausalMask((seq_len, seq_len)) for _ in range(num_heads)])
    # the kernel's block tables become concrete constants even when first built inside a trace
    # (cached across traces: a tracer here would leak)
    with jax.ensure_compile_time_eval():
        return sa.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=blocks, interpret=interpret)


def rope(x_BxTxNxD, cos, sin):
    """x * cos + rotate_half(x) * sin (fp32 math, result in x's dtype), rotate_half = concat(-x2, x1)
    written as ``x @ R`` so XLA on TPU keeps one lane-dense fusion (see the module docstring)."""
    d = x_BxTxNxD.shape[-1]
    half = d // 2
    eye, zero = jnp.eye(half, dtype=x_BxTxNxD.dtype), jnp.zeros((half, half), x_BxTxNxD.dtype)
    r_DxD = jnp.block([[zero, eye], [-eye, zero]])                   # x @ R = concat(-x2, x1)
    precision = jax.lax.Precision.HIGHEST if x_BxTxNxD.dtype == jnp.float32 else None
    rotated = jnp.einsum("btnd,de->btne", x_BxTxNxD, r_DxD, precision=precision,
                         preferred_element_type=jnp.float32)
    return (x_BxTxNxD.astype(jnp.float32) * cos + rotated * sin).astype(x_BxTxNxD.dtype)


def _local_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, seg_BxT, interpret: bool):
    """The kernel over the rows and heads this device holds (no sharding logic)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds

    b, t, h, dh = q_BxTxHxD.shape
    tp = padded_length(t)
    scale = 1.0 / math.sqrt(dh)
    q_BxTxHxD = (q_BxTxHxD.astype(jnp.float32) * scale).astype(q_BxTxHxD.dtype)
    if tp != t:
        grow = [(0, 0), (0, tp - t), (0, 0), (0, 0)]
        q_BxTxHxD, k_BxTxKxD, v_BxTxKxD = (jnp.pad(a, grow) for a in (q_BxTxHxD, k_BxTxKxD, v_BxTxKxD))
        if seg_BxT is not None:
            seg_BxT = jnp.pad(seg_BxT, [(0, 0), (0, tp - t)])
    kernel = _kernel(h, tp, interpret)
    q, k, v = (a.transpose(0, 2, 1, 3) for a in (q_BxTxHxD, k_BxTxKxD, v_BxTxKxD))   # [B, heads, T, Dh]
    if seg_BxT is None:
        out_BxHxTxD = jax.vmap(kernel)(q, k, v)
    else:
        out_BxHxTxD = jax.vmap(lambda q1, k1, v1, s1: kernel(q1, k1, v1, segment_ids=SegmentIds(s1, s1)))(
            q, k, v, seg_BxT)
    return out_BxHxTxD.transpose(0, 2, 1, 3)[:, :t]


def _mesh_specs(mesh, batch: int, num_heads: int, num_kv_heads: int):
    """(batch axes or None, head axis or None): how shard_map splits the call over ``mesh``."""
    sizes = dict(mesh.shape)
    batch_axes = tuple(a for a in sizes if a != HEAD_AXIS and sizes[a] > 1)
    if batch_axes and batch % math.prod(sizes[a] for a in batch_axes):
        batch_axes = ()
    t = sizes.get(HEAD_AXIS, 1)
    head_axis = HEAD_AXIS if t > 1 and num_heads % t == 0 and num_kv_heads % t == 0 else None
    return (batch_axes or None), head_axis


def splash_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT=None, *, interpret: bool | None = None):
    """Causal (segment-masked) GQA attention with the splash kernel; [B, T, H, Dh] in and out.
    ``interpret`` defaults to True off TPU (Pallas interpret mode, for tests)."""
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    seg_BxT = None if segment_ids_BxT is None else jnp.asarray(segment_ids_BxT, jnp.int32)
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return _local_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, seg_BxT, interpret)
    batch_axes, head_axis = _mesh_specs(mesh, q_BxTxHxD.shape[0], q_BxTxHxD.shape[2], k_BxTxKxD.shape[2])
    spec = P(batch_axes, None, head_axis, None)
    fn = functools.partial(_local_attention, interpret=interpret)
    if seg_BxT is None:
        return jax.shard_map(lambda q, k, v: fn(q, k, v, None), mesh=mesh, in_specs=(spec, spec, spec),
                             out_specs=spec, check_vma=False)(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD)
    return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec, P(batch_axes, None)), out_specs=spec,
                         check_vma=False)(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, seg_BxT)
