"""One-token decode attention over the KV cache as a Pallas (Triton) kernel for GPUs: reads only the
cache blocks below the write pointer.

The XLA decode (``qwen2.cached_attention``) reads every slot of the cache each step and writes fp32
scores and probabilities between its two products. Here each (row, KV head, split) program loops
over blocks of ``block_k`` slots of its split, only up to the last written slot, with an online
softmax in registers; the splits are combined in JAX from their (output, max, sum). The cache keeps
the model's layout (keys [B, K, Dh, S], values [B, K, S, Dh]) and the mask is the cache's per-slot
validity, so right-padded prompts (a hole between a row's prompt and slot L) need no change.

Opt-in (``Sampler(..., decode_kernel="pallas")``, ``rl.decode_kernel``) until timed on a GPU;
:func:`supports` says which shapes it takes. Off a GPU the kernel runs in Pallas interpret mode
(tests).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # "minus infinity" that stays finite through exp/max


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def supports(head_dim: int, slots: int) -> bool:
    """Shapes the kernel takes: a power-of-two head_dim >= 16 and a multiple of 16 slots."""
    return _pow2(head_dim) and head_dim >= 16 and slots % 16 == 0


def block_size(slots: int) -> int:
    """Slots per block: the largest of 64, 32, 16 that divides the cache."""
    return next(b for b in (64, 32, 16) if slots % b == 0)


def _splits(slots: int, block_k: int, max_splits: int) -> int:
    blocks = slots // block_k
    return max(n for n in range(1, min(blocks, max_splits) + 1) if blocks % n == 0)


def _kernel(q_ref, k_ref, v_ref, valid_ref, bound_ref, o_ref, m_ref, l_ref, *, block_k: int, scale: float):
    """One (row, KV head, split): q [Gp, Dh], keys [Dh, split], values [split, Dh], valid [split]."""
    split = k_ref.shape[-1]
    j = pl.program_id(2)
    n = jnp.clip(pl.cdiv(bound_ref[()] - j * split, block_k), 0, split // block_k)
    q = q_ref[...]
    gp, dh = q.shape

    def body(i, carry):
        o, m, l = carry
        sl = pl.ds(i * block_k, block_k)
        s = plgpu.dot(q, k_ref[:, sl]) * scale  # [Gp, block_k] fp32
        ok = (valid_ref[sl] != 0)[None, :]
        s = jnp.where(ok, s, _NEG)
        m_new = jnp.maximum(m, s.max(axis=-1))
        p = jnp.where(ok, jnp.exp(s - m_new[:, None]), 0.0)
        corr = jnp.exp(m - m_new)
        o = o * corr[:, None] + plgpu.dot(p.astype(v_ref.dtype), v_ref[sl, :])
        return o, m_new, l * corr + p.sum(axis=-1)

    init = (jnp.zeros((gp, dh), jnp.float32), jnp.full((gp,), _NEG, jnp.float32), jnp.zeros((gp,), jnp.float32))
    o, m, l = jax.lax.fori_loop(0, n, body, init)
    o_ref[...] = o
    m_ref[...] = m
    l_ref[...] = l


@functools.partial(jax.jit, static_argnames=("max_splits", "interpret"))
def decode_attention(q_BxHxD, k_BxKxDxS, v_BxKxSxD, valid_BxS, bound, *, max_splits: int = 16,
                     interpret: bool | None = None):
    """softmax(q . k / sqrt(Dh)) . v over the valid cache slots below ``bound`` (the last written slot
    + 1), per row and query head (GQA: query head h reads KV head h // (H / K)). Returns [B, H, Dh] in
    the values' dtype. Every row needs at least one valid slot below ``bound``."""
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    b, h, dh = q_BxHxD.shape
    kv, s = k_BxKxDxS.shape[1], k_BxKxDxS.shape[3]
    g = h // kv
    if not supports(dh, s):
        raise ValueError(f"decode kernel: head_dim {dh} must be a power of two >= 16 and {s} slots a multiple of 16")
    block_k = block_size(s)
    gp = max(16, 1 << (g - 1).bit_length())
    ns = _splits(s, block_k, max_splits)
    split = s // ns
    q = q_BxHxD.reshape(b, kv, g, dh).astype(v_BxKxSxD.dtype)
    q = jnp.pad(q, ((0, 0), (0, 0), (0, gp - g), (0, 0)))
    k = k_BxKxDxS.reshape(b, kv, dh, ns, split)
    v = v_BxKxSxD.reshape(b, kv, ns, split, dh)
    valid = valid_BxS.astype(jnp.int32).reshape(b, ns, split)
    bound = jnp.asarray(bound, jnp.int32)
    part = functools.partial(jax.ShapeDtypeStruct, dtype=jnp.float32)
    o, m, l = pl.pallas_call(
        functools.partial(_kernel, block_k=block_k, scale=dh ** -0.5),
        grid=(b, kv, ns),
        in_specs=[pl.BlockSpec((None, None, gp, dh), lambda i, k_, j: (i, k_, 0, 0)),
                  pl.BlockSpec((None, None, dh, None, split), lambda i, k_, j: (i, k_, 0, j, 0)),
                  pl.BlockSpec((None, None, None, split, dh), lambda i, k_, j: (i, k_, j, 0, 0)),
                  pl.BlockSpec((None, None, split), lambda i, k_, j: (i, j, 0)),
                  pl.BlockSpec((), lambda i, k_, j: ())],
        out_specs=[pl.BlockSpec((None, None, None, gp, dh), lambda i, k_, j: (i, k_, j, 0, 0)),
                   pl.BlockSpec((None, None, None, gp), lambda i, k_, j: (i, k_, j, 0)),
                   pl.BlockSpec((None, None, None, gp), lambda i, k_, j: (i, k_, j, 0))],
        out_shape=[part((b, kv, ns, gp, dh)), part((b, kv, ns, gp)), part((b, kv, ns, gp))],
        compiler_params=plgpu.CompilerParams(num_warps=4, num_stages=2),
        interpret=interpret,
        name="interplay_decode_attention",
    )(q, k, v, valid, bound)
    m_max = jax.lax.optimization_barrier(m.max(axis=2))  # [B, K, Gp]; the barrier: see jax's decode kernel
    w = jnp.exp(m - m_max[:, :, None])
    out = jnp.sum(o * w[..., None], axis=2) / jnp.sum(l * w, axis=2)[..., None]
    return out[:, :, :g].reshape(b, h, dh).astype(v_BxKxSxD.dtype)
