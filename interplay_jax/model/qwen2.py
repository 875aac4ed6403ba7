"""Qwen2-style decoder in Flax NNX (docs/budgets.md), with a static-shape KV cache for rollouts.

Architecture: token embedding -> L x [RMSNorm -> GQA self-attention (q/k/v bias, no o bias, RoPE)
-> residual -> RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> logits = h @ embed.T (tied).

Parameters (all ``nnx.Param``, fp32 by default; the model holds no other state):

=====================  ======================  =========================================
path                   shape                   note
=====================  ======================  =========================================
embed                  [V, D]                  also the output projection when tied
lm_head                [D, V]                  only when ``tie_embeddings=False``
layers[i].attn_norm    [D]
layers[i].q_kernel     [D, H, Dh]              q_bias [H, Dh]
layers[i].k_kernel     [D, K, Dh]              k_bias [K, Dh]
layers[i].v_kernel     [D, K, Dh]              v_bias [K, Dh]
layers[i].o_kernel     [H, Dh, D]
layers[i].mlp_norm     [D]
layers[i].gate_kernel  [D, F]                  up_kernel [D, F], down_kernel [F, D]
final_norm             [D]
=====================  ======================  =========================================

Presets (``PRESETS``; counts are ``ModelConfig.num_params`` = the ``nnx.eval_shape`` count):

==========  =====  ====  ====  =======  ========  ===========  =========================================
preset      L      D     F     H / K    head dim  parameters   source
==========  =====  ====  ====  =======  ========  ===========  =========================================
paper100m   12     768   3072  12 / 2   64        103,170,816  release model_configs/qwen2_100M
release45m  12     576   1536  8 / 4    72        45,089,856   release .../difficulty_qwen2_100M
small       10     256   1024  8 / 2    32        10,075,136   ours
tiny        4      128   384   4 / 2    32        1,070,208    ours
micro       2      32    64    4 / 2    8         89,120       ours
==========  =====  ====  ====  =======  ========  ===========  =========================================

All: vocab 2,200, RoPE theta 1e6, RMSNorm eps 1e-6, tied embeddings, 2,048 positions. A checkpoint
directory (HF config.json or a run's lineage) carries its own architecture: loading one never needs a
preset name (interplay_jax.sampling.policy).

Activations use the [B, T, heads, head_dim] layout. On a CPU full-sequence attention is a fused C++
kernel (model/cpu_attention.cc through XLA's FFI; the "cpu" implementation); the portable "einsum"
path regroups queries as [B, K, G*T, Dh] (G = H/K query heads per KV head) so GQA is two batched
matmuls and K/V are never repeated. On a GPU, decode can use the Pallas kernel of model/gpu_decode.py
(``Sampler(decode_kernel="pallas")``). On CPU
the q/k/v and gate/up kernels are concatenated at use into one matmul each (params stay separate so
the sharding rules of interplay_jax/train/sharding.py apply unchanged).

KV cache (see :func:`init_cache`): a dict of plain arrays with static shapes
``{"k": L x [B, K, Dh, S], "v": L x [B, K, S, Dh], "valid": [B, S] bool, "pos": [B] int32,
"index": [] int32}`` (k/v are tuples of per-layer arrays). Keys are stored transposed, slots last:
the decode's scores q . K then stream them slot-contiguous (on a 2-core CPU the [.., S, Dh] layout
made that one matmul ~45% of a tiny-model decode step). ``index`` is the next slot to write (shared
by the batch), ``pos`` the next RoPE position of each row (rows differ under left padding), ``valid``
marks written non-pad slots.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from interplay_jax.errors import ConfigError
from interplay_jax.model import cpu_attention, gpu_decode
from interplay_jax.model.tpu_attention import rope as tpu_rope
from interplay_jax.model.tpu_attention import splash_attention

ATTENTION_IMPLS = ("auto", "einsum", "cpu", "jax", "cudnn", "splash")
DTYPES = ("float32", "bfloat16", "float16")
# ModelConfig fields that change how the model runs but not its parameters' shapes: a checkpoint's
# own config (an HF config.json, a run's lineage) fixes the rest, these may still come from a config.
RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "attention")


# ----------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 2200
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: int = 2
    head_dim: int = 64
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    tie_embeddings: bool = True
    init_std: float = 0.02
    dtype: str = "float32"  # compute dtype; softmax, norms and logits stay fp32
    param_dtype: str = "float32"
    remat: bool = False  # nnx.remat per layer
    # "einsum" (portable XLA ops), "cpu" (fused C++ kernel, XLA:CPU), "jax" (XLA fused),
    # "cudnn" / "splash" (flash: GPU / TPU), "auto" (the backend's fastest)
    attention: str = "auto"

    def validate(self) -> "ModelConfig":
        """Raise ConfigError (one line naming the clashing values) if this config cannot run."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"model.{name}={value!r} must be a positive integer")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"model.num_heads={self.num_heads} is not a multiple of "
                              f"model.num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"model.head_dim={self.head_dim} must be even for RoPE")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0 or self.init_std <= 0:
            raise ConfigError(f"model.rope_theta={self.rope_theta}, model.rms_norm_eps={self.rms_norm_eps} "
                              f"and model.init_std={self.init_std} must be > 0")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r}; expected one of {', '.join(DTYPES)}")
        if self.param_dtype not in DTYPES:
            raise ConfigError(f"model.param_dtype={self.param_dtype!r}; expected one of {', '.join(DTYPES)}")
        if self.attention not in ATTENTION_IMPLS:
            raise ConfigError(f"model.attention={self.attention!r}; expected one of {', '.join(ATTENTION_IMPLS)}")
        return self

    def num_params(self) -> int:
        """Analytic parameter count (tied embeddings counted once)."""
        d, f, dh = self.hidden_size, self.intermediate_size, self.head_dim
        h, k = self.num_heads, self.num_kv_heads
        attn = d * h * dh + h * dh + 2 * (d * k * dh + k * dh) + h * dh * d
        per_layer = 2 * d + attn + 3 * d * f
        total = self.vocab_size * d + self.num_layers * per_layer + d
        if not self.tie_embeddings:
            total += d * self.vocab_size
        return total

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token: 6 * (non-embedding-gather params) + causal attention.

        Attention: QK^T and AV are 2 matmuls of 2*T*H*Dh FLOPs per token forward (x3 for fwd+bwd),
        halved for the causal mask, i.e. 6 * L * H * Dh * T per token.
        """
        matmul_params = self.num_params() - self.hidden_size * (2 * self.num_layers + 1)
        attn = 6 * self.num_layers * self.num_heads * self.head_dim * seq_len
        return 6.0 * matmul_params + attn

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)


PRESETS: dict[str, dict[str, Any]] = {
    # The study's model: the release's model_configs/qwen2_100M/config.json (12 x 768, MLP 3072,
    # 12 / 2 heads of 64), loaded by its 10B-token pre-training configs: 103,170,816 parameters.
    "paper100m": dict(),
    # The release's LLaMA-Factory/model_configs/difficulty_qwen2_100M/config.json (12 x 576, MLP 1536,
    # 8 / 4 heads of 72; same vocab, RoPE, norms, tied embeddings), loaded by its 5B-token
    # LLaMA-Factory/examples/difficulty/debug.yaml: 45,089,856 parameters despite the name.
    "release45m": dict(hidden_size=576, intermediate_size=1536, num_heads=8, num_kv_heads=4, head_dim=72),
    # ~10M: the CPU benchmark / scaled-down experiments.
    "small": dict(hidden_size=256, intermediate_size=1024, num_layers=10, num_heads=8, num_kv_heads=2,
                  head_dim=32),
    # ~1M: CPU experiments and integration tests.
    "tiny": dict(hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4, num_kv_heads=2,
                 head_dim=32),
    # ~0.09M: the fastest unit tests.
    "micro": dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=8),
}


def model_config(name: str = "paper100m", **overrides) -> ModelConfig:
    """A preset (see PRESETS) with field overrides, validated."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; expected one of {', '.join(PRESETS)}")
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown model field(s) {', '.join(unknown)}; expected some of {', '.join(sorted(fields))}")
    return ModelConfig(**{**PRESETS[name], **overrides}).validate()


def model_config_from_dict(d) -> ModelConfig:
    """From a mapping / ml_collections ConfigDict: ``{"preset": "tiny", "num_layers": 2, ...}``.

    ``preset`` (or ``name``) picks the base preset (default paper100m); other keys override fields.
    ``None`` values are ignored (so a config can list a field without setting it).
    """
    if hasattr(d, "to_dict"):
        d = d.to_dict()
    d = dict(d)
    name = d.pop("preset", None) or d.pop("name", None) or "paper100m"
    d.pop("name", None)
    return model_config(name, **{k: v for k, v in d.items() if v is not None})


# ----------------------------------------------------------------------------------------- pieces


def rms_norm(x, scale, eps):
    """RMSNorm in fp32, result cast back to x.dtype (as HF Qwen2)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return (scale.astype(jnp.float32) * xf).astype(x.dtype)


def rope_tables(positions_BxT, head_dim: int, theta: float):
    """cos/sin [B, T, 1, Dh] in fp32 (HF "rotate_half" convention: halves, not interleaved)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions_BxT.astype(jnp.float32)[..., None] * inv_freq  # [B, T, Dh/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_BxTxNxD, cos, sin):
    if jax.default_backend() == "tpu":  # the same values as a lane-dense matmul (model/tpu_attention.py)
        return tpu_rope(x_BxTxNxD, cos, sin)
    half = x_BxTxNxD.shape[-1] // 2
    xf = x_BxTxNxD.astype(jnp.float32)
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x_BxTxNxD.dtype)


def segment_positions(segment_ids_BxT):
    """Positions restarting at 0 at every change of segment id (packed documents)."""
    t = jnp.arange(segment_ids_BxT.shape[1], dtype=jnp.int32)[None, :]
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids_BxT[:, :1], dtype=bool), segment_ids_BxT[:, 1:] != segment_ids_BxT[:, :-1]],
        axis=1)
    start_idx = jax.lax.cummax(jnp.where(starts, t, 0), axis=1)
    return t - start_idx


def _einsum_attention(q_BxTxHxD, k_BxSxKxD, v_BxSxKxD, mask_BxTxS):
    """GQA attention without repeating K/V; fp32 softmax; fully masked rows give a uniform average.

    The G query heads of each KV head are stacked along the query axis ([B, K, G*T, Dh]), so both
    products are plain batched matmuls over (B, K): on XLA CPU this is ~20% faster end to end than
    contracting the [B, T, K, G, Dh] layout directly.
    """
    b, t, h, dh = q_BxTxHxD.shape
    s, kv = k_BxSxKxD.shape[1], k_BxSxKxD.shape[2]
    g = h // kv
    q = q_BxTxHxD.reshape(b, t, kv, g, dh).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, dh)
    k = k_BxSxKxD.transpose(0, 2, 1, 3)  # [B, K, S, Dh]
    v = v_BxSxKxD.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    scores = scores.reshape(b, kv, g, t, s) * (1.0 / math.sqrt(dh))
    scores = jnp.where(mask_BxTxS[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype).reshape(b, kv, g * t, s)
    out = jnp.einsum("bkqs,bksd->bkqd", probs, v)  # [B, K, G*T, Dh]
    return out.reshape(b, kv, g, t, dh).transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)


def _causal_chunked_attention(q, k, v, mask_BxTxS, chunk: int):
    """Causal attention in query chunks, each against only the keys up to its end: skips the
    all-masked upper-triangle blocks (T=512, chunk 64: 56% of the full work). Rows that attend
    nowhere (padding queries) get an unspecified finite value, as in every path: mask them out."""
    t = q.shape[1]
    outs = []
    for start in range(0, t, chunk):
        end = min(start + chunk, t)
        outs.append(_einsum_attention(q[:, start:end], k[:, :end], v[:, :end], mask_BxTxS[:, start:end, :end]))
    return jnp.concatenate(outs, axis=1)


def causal_chunk(t: int) -> int:
    """Query-chunk length for the causal block skipping of the "einsum" path (0 = off): 64 at
    T=512 measured best on a 2-core CPU (vs 128: ~5% faster); T/8 for long rows bounds the op count."""
    return max(64, t // 8) if t >= 128 else 0


def resolve_impl(impl: str, dtype, masked: bool) -> str:
    """"auto": cuDNN flash attention on GPU for plain causal bf16/fp16 (no segment ids), XLA's fused
    attention for other cases on GPU, the Pallas splash (flash) kernel on TPU for every case (plain
    causal and segment ids, any dtype; model/tpu_attention.py), the fused C++ kernel on CPU
    (model/cpu_attention.py; :func:`attention` keeps einsum where the kernel cannot run)."""
    if impl != "auto":
        return impl
    backend = jax.default_backend()
    if backend == "gpu":
        return "cudnn" if (not masked and dtype in (jnp.bfloat16, jnp.float16)) else "jax"
    if backend == "tpu":
        return "splash"
    return "cpu"


def attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, impl: str, segment_ids_BxT=None):
    """Causal self-attention over one chunk; with ``segment_ids_BxT`` a query attends only to keys of
    its own segment and segment 0 is padding (attends nowhere; ignored as a key). Without segment ids
    this is plain causal attention, which every backend runs as flash attention where it has one."""
    impl = resolve_impl(impl, q_BxTxHxD.dtype, segment_ids_BxT is not None)
    if impl == "splash":  # TPU flash attention, segment ids included (off TPU: Pallas interpret mode)
        return splash_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT)
    if segment_ids_BxT is None and impl in ("cudnn", "jax"):
        # flash attention with cuDNN: ~3.5x the XLA path for paper100m on an H100
        return jax.nn.dot_product_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, is_causal=True,
                                            implementation="cudnn" if impl == "cudnn" else None)
    if impl == "cpu":  # the fused C++ kernel where it can run (XLA:CPU, fp32, Dh in 16..128), else einsum
        if _cpu_path() and cpu_attention.supports(q_BxTxHxD, k_BxTxKxD) and cpu_attention.available():
            seg_BxT = (jnp.ones(q_BxTxHxD.shape[:2], jnp.int32) if segment_ids_BxT is None
                       else jnp.asarray(segment_ids_BxT, jnp.int32))
            return cpu_attention.fused_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, seg_BxT)
        impl = "einsum"
    t = q_BxTxHxD.shape[1]
    mask_BxTxT = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (q_BxTxHxD.shape[0], t, t))
    if segment_ids_BxT is not None:
        seg_BxT = jnp.asarray(segment_ids_BxT, jnp.int32)
        mask_BxTxT = mask_BxTxT & (seg_BxT[:, :, None] == seg_BxT[:, None, :]) & (seg_BxT[:, None, :] != 0)
    if impl in ("jax", "cudnn"):  # an arbitrary mask: XLA's fused attention
        return jax.nn.dot_product_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, mask=mask_BxTxT[:, None, :, :])
    chunk = causal_chunk(t)
    if chunk and t > chunk:
        return _causal_chunked_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, mask_BxTxT, chunk)
    return _einsum_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, mask_BxTxT)


SELF_SHIFT = 64.0  # the self-shifted softmax: exp(score - (own score + SELF_SHIFT)), see cached_attention


def cached_attention(q_BxTxHxD, k_BxKxDxS, v_BxKxSxD, mask_BxTxS, self_slot=None):
    """Attention of a chunk's queries over a KV cache (keys [B, K, Dh, S], values [B, K, S, Dh]; the
    G query heads of each KV head batched together; fp32 softmax) in one masked pass over every slot.
    For decode (T = 1) on a 2-core CPU the head-major layout is ~1.8x faster than [B, S, K, Dh] at
    S = 512, and one pass beats reading only the written slots block by block (the block copies cost
    more than the slots they skip).

    ``self_slot`` (a one-token decode whose own key is at that slot): the softmax is shifted by the
    query's score at its own slot plus :data:`SELF_SHIFT` instead of by the row's maximum, and
    normalised after the value product, which saves the max reduction and the normalising pass (on
    a 2-core CPU the row max alone was ~80 us of YNN reduction per layer and step; a tiny-model
    rollout ran ~1.13x faster). The own term is exp(-SELF_SHIFT) > 0, so the sum cannot underflow
    and terms that do underflow weigh < e^-23 of it; a score more than ~140 above the own one
    overflows and the output is not finite: the caller must check (the sampler then reruns with the
    exact softmax)."""
    b, t, h, dh = q_BxTxHxD.shape
    kv = k_BxKxDxS.shape[1]
    g = h // kv
    q_BxKxGTxD = q_BxTxHxD.reshape(b, t, kv, g, dh).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, dh)
    raw = _cache_scores(q_BxKxGTxD, k_BxKxDxS, unroll=t == 1 and jax.default_backend() == "cpu")
    s = raw.shape[-1]
    raw = raw.reshape(b, kv, g, t, s) * (1.0 / math.sqrt(dh))
    scores = jnp.where(mask_BxTxS[:, None, None, :, :], raw, jnp.finfo(jnp.float32).min)
    if self_slot is None or t != 1:
        probs = jax.nn.softmax(scores, axis=-1).astype(v_BxKxSxD.dtype).reshape(b, kv, g * t, s)
        out = jnp.einsum("bkqs,bksd->bkqd", probs, v_BxKxSxD)  # [B, K, G*T, Dh]
    else:
        shift = jax.lax.dynamic_slice_in_dim(raw, jnp.asarray(self_slot, jnp.int32), 1, axis=-1) + SELF_SHIFT
        e = jnp.exp(scores - shift)
        out = jnp.einsum("bkqs,bksd->bkqd", e.astype(v_BxKxSxD.dtype).reshape(b, kv, g * t, s), v_BxKxSxD,
                         preferred_element_type=jnp.float32)
        out = (out.reshape(b, kv, g, t, dh) / jnp.sum(e, axis=-1)[..., None]).astype(v_BxKxSxD.dtype)
    return out.reshape(b, kv, g, t, dh).transpose(0, 3, 1, 2, 4).reshape(b, t, h, dh)


def _cache_scores(q_BxKxQxD, k_BxKxDxS, unroll: bool):
    """fp32 q . k for every cache slot: [B, K, Q, S]. ``unroll`` (one-token decode on CPU) writes it
    as Dh multiply-adds of key rows, which XLA fuses into one pass over the keys: a tiny-model decode
    step ran ~20% faster than with the batched matmul (a few queries per KV head are too few rows
    for the CPU matmul kernels)."""
    if not unroll:
        return jnp.einsum("bkqd,bkds->bkqs", q_BxKxQxD, k_BxKxDxS, preferred_element_type=jnp.float32)
    q32, k32 = q_BxKxQxD.astype(jnp.float32), k_BxKxDxS.astype(jnp.float32)
    return sum(q32[:, :, :, d, None] * k32[:, :, None, d, :] for d in range(q32.shape[-1]))


def _cpu_path() -> bool:
    """The CPU layout of the projections: q/k/v (and gate/up) fused into one matmul each, and every
    projection through :func:`dense`'s gradient, both faster on XLA:CPU. Elsewhere autodiff's einsums,
    kept apart: under tensor parallelism concatenating head-sharded kernels would all-gather them."""
    return jax.default_backend() == "cpu"


def dense(x, w, out_dtype=None):
    """``x [..., K] @ w [K, N]`` (result in ``out_dtype``, default the operands' type) with its
    gradient written by hand over the flattened rows (:func:`_dense_rows`); the CPU path's matmul."""
    return _dense_rows(x, w, out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_rows(x, w, out_dtype):
    """:func:`dense` with the gradient as two 2-D matmuls over the M = prod(batch dims) rows:
    dx = dy @ w.T and dw = x.T @ dy. Autodiff's transpose of the N-D product (a dot_general
    contracting the batch and sequence dims) made XLA:CPU materialise transposed copies of the
    activations fused with their producers (~5 ms per layer for `small`); with this gradient one
    `small` decoder layer's forward + backward ran 24% faster (`benchmarks/bench_train_parts.py --layer`)."""
    return jnp.matmul(x, w, preferred_element_type=out_dtype)


def _dense_rows_fwd(x, w, out_dtype):
    return _dense_rows(x, w, out_dtype), (x, w)


def _dense_rows_bwd(out_dtype, res, dy):
    x, w = res
    dw = jnp.matmul(x.reshape(-1, x.shape[-1]).T, dy.reshape(-1, dy.shape[-1]), preferred_element_type=jnp.float32)
    dx = jnp.matmul(dy, w.T.astype(dy.dtype), preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_dense_rows.defvjp(_dense_rows_fwd, _dense_rows_bwd)


def _normal(rngs: nnx.Rngs, shape, std, dtype):
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, jnp.float32).astype(dtype))


# ----------------------------------------------------------------------------------------- modules


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        d, f, dh = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
        h, k, std, pdt = cfg.num_heads, cfg.num_kv_heads, cfg.init_std, jnp.dtype(cfg.param_dtype)
        self.cfg = cfg
        self.attn_norm = nnx.Param(jnp.ones((d,), pdt))
        self.q_kernel = _normal(rngs, (d, h, dh), std, pdt)
        self.q_bias = nnx.Param(jnp.zeros((h, dh), pdt))
        self.k_kernel = _normal(rngs, (d, k, dh), std, pdt)
        self.k_bias = nnx.Param(jnp.zeros((k, dh), pdt))
        self.v_kernel = _normal(rngs, (d, k, dh), std, pdt)
        self.v_bias = nnx.Param(jnp.zeros((k, dh), pdt))
        self.o_kernel = _normal(rngs, (h, dh, d), std, pdt)
        self.mlp_norm = nnx.Param(jnp.ones((d,), pdt))
        self.gate_kernel = _normal(rngs, (d, f), std, pdt)
        self.up_kernel = _normal(rngs, (d, f), std, pdt)
        self.down_kernel = _normal(rngs, (f, d), std, pdt)

    def __call__(self, x_BxTxD, cos, sin, segment_ids_BxT=None):
        """One block over a chunk (causal self-attention, see :func:`attention`).
        Returns (x, (k_BxTxKxD, v_BxTxKxD)): the chunk's keys and values, for a prefill to cache."""
        q, k, v = self._qkv(x_BxTxD, cos, sin)
        a = attention(q, k, v, self.cfg.attention, segment_ids_BxT)
        return self._out(x_BxTxD, a), (k, v)

    def decode(self, x_BxTxD, cos, sin, kv_cache, index, mask_BxTxS, self_shift: bool = False,
               decode_kernel: str = "xla"):
        """One block with a KV cache ``(k_BxKxDxS, v_BxKxSxD)``: the chunk's k/v are written at slot
        ``index`` and the queries attend over the cache under ``mask_BxTxS`` (:func:`cached_attention`,
        self-shifted when ``self_shift``; a one-token step with ``decode_kernel="pallas"`` runs
        :func:`gpu_decode.decode_attention` where it takes the shapes). Returns (x, (k_cache, v_cache))."""
        q, k, v = self._qkv(x_BxTxD, cos, sin)
        k_cache, v_cache = kv_cache
        zero = jnp.zeros((), jnp.int32)
        index = jnp.asarray(index, jnp.int32)
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.transpose(0, 2, 3, 1).astype(k_cache.dtype),
                                               (zero, zero, zero, index))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.transpose(0, 2, 1, 3).astype(v_cache.dtype),
                                               (zero, zero, index, zero))
        dt = self.cfg.compute_dtype
        if (decode_kernel == "pallas" and q.shape[1] == 1 and jax.default_backend() != "tpu"
                and gpu_decode.supports(q.shape[-1], k_cache.shape[-1])):
            a = gpu_decode.decode_attention(q[:, 0], k_cache.astype(dt), v_cache.astype(dt), mask_BxTxS[:, 0],
                                            index + 1)[:, None]
        else:
            a = cached_attention(q, k_cache.astype(dt), v_cache.astype(dt), mask_BxTxS,
                                 index if self_shift else None)
        return self._out(x_BxTxD, a), (k_cache, v_cache)

    def _qkv(self, x_BxTxD, cos, sin):
        cfg, dt = self.cfg, self.cfg.compute_dtype
        c = lambda p: p[...].astype(dt)  # noqa: E731
        b, t, d = x_BxTxD.shape
        nh, nk, dh = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        h_BxTxD = rms_norm(x_BxTxD, self.attn_norm[...], cfg.rms_norm_eps)
        if _cpu_path():  # one [D, (H+2K)*Dh] matmul instead of three
            w = jnp.concatenate([c(p).reshape(d, -1) for p in (self.q_kernel, self.k_kernel, self.v_kernel)], 1)
            bias = jnp.concatenate([c(p).reshape(-1) for p in (self.q_bias, self.k_bias, self.v_bias)])
            qkv = dense(h_BxTxD, w) + bias
            # a split, not slices: its gradient is one concatenate (slices' is a padded add each)
            q, k, v = jnp.split(qkv, [nh * dh, (nh + nk) * dh], axis=-1)
            q, k, v = q.reshape(b, t, nh, dh), k.reshape(b, t, nk, dh), v.reshape(b, t, nk, dh)
        else:
            q = jnp.einsum("btd,dhk->bthk", h_BxTxD, c(self.q_kernel)) + c(self.q_bias)
            k = jnp.einsum("btd,dhk->bthk", h_BxTxD, c(self.k_kernel)) + c(self.k_bias)
            v = jnp.einsum("btd,dhk->bthk", h_BxTxD, c(self.v_kernel)) + c(self.v_bias)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _out(self, x_BxTxD, a_BxTxHxD):
        """The attention output projection, then the SwiGLU MLP, each with its residual."""
        cfg, dt = self.cfg, self.cfg.compute_dtype
        c = lambda p: p[...].astype(dt)  # noqa: E731
        if _cpu_path():  # dense() matmuls, gate/up as one [D, 2F] matmul
            b, t = a_BxTxHxD.shape[:2]
            x_BxTxD = x_BxTxD + dense(a_BxTxHxD.reshape(b, t, -1), c(self.o_kernel).reshape(-1, cfg.hidden_size))
            h_BxTxD = rms_norm(x_BxTxD, self.mlp_norm[...], cfg.rms_norm_eps)
            if t == 1:  # one-token decode: two products (the fused one went multi-threaded: tiny 1.07x apart)
                g, u = dense(h_BxTxD, c(self.gate_kernel)), dense(h_BxTxD, c(self.up_kernel))
            else:
                gu = dense(h_BxTxD, jnp.concatenate([c(self.gate_kernel), c(self.up_kernel)], 1))
                g, u = jnp.split(gu, [cfg.intermediate_size], axis=-1)
            return x_BxTxD + dense(jax.nn.silu(g) * u, c(self.down_kernel))
        x_BxTxD = x_BxTxD + jnp.einsum("bthk,hkd->btd", a_BxTxHxD, c(self.o_kernel))
        h_BxTxD = rms_norm(x_BxTxD, self.mlp_norm[...], cfg.rms_norm_eps)
        g = jnp.einsum("btd,df->btf", h_BxTxD, c(self.gate_kernel))
        u = jnp.einsum("btd,df->btf", h_BxTxD, c(self.up_kernel))
        return x_BxTxD + jnp.einsum("btf,fd->btd", jax.nn.silu(g) * u, c(self.down_kernel))


def _remat_layer(layer, x_BxTxD, cos, sin, segment_ids_BxT):
    """The layer under ``jax.checkpoint`` (activations recomputed in the backward pass), written over
    the layer's split state so it also works inside scans and gradients of split/merged models."""
    graphdef, state = nnx.split(layer)

    def block(state, x, cos, sin, seg):
        return nnx.merge(graphdef, state)(x, cos, sin, seg)[0]
    return jax.checkpoint(block)(state, x_BxTxD, cos, sin, segment_ids_BxT)


class Qwen2(nnx.Module):
    """The decoder. ``model(tokens_BxT)`` -> fp32 logits [B, T, V];
    ``model.with_cache(tokens_BxT, cache)`` -> (logits, new cache) for prefill and decode."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        self.embed = _normal(rngs, (cfg.vocab_size, cfg.hidden_size), cfg.init_std, pdt)
        self.layers = nnx.List([DecoderLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = nnx.Param(jnp.ones((cfg.hidden_size,), pdt))
        if not cfg.tie_embeddings:
            self.lm_head = _normal(rngs, (cfg.hidden_size, cfg.vocab_size), cfg.init_std, pdt)

    def __call__(self, tokens_BxT, *, positions_BxT=None, segment_ids_BxT=None):
        """Causal attention over the chunk; with ``segment_ids_BxT`` attention stays within equal ids
        and id 0 is padding (attends nowhere, ignored as a key). Positions default to 0..T-1, or
        restart at every segment change when segment ids are given. Returns fp32 logits [B, T, V]."""
        return self.logits(self.hidden_states(tokens_BxT, positions_BxT=positions_BxT,
                                              segment_ids_BxT=segment_ids_BxT)[0])

    def hidden_states(self, tokens_BxT, *, positions_BxT=None, segment_ids_BxT=None, remat: bool | None = None):
        """The last layer's output (before the final norm) and every layer's (k, v):
        (x_BxTxD, [(k_BxTxKxD, v_BxTxKxD)] * L). :meth:`logits` of a subset of positions is the cheap
        way to score only some tokens (the GRPO update scores only response positions). With remat
        (default ``cfg.remat``) the layers are recomputed in the backward pass and no (k, v) is kept."""
        cfg = self.cfg
        tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
        b, t = tokens_BxT.shape
        x_BxTxD = self._embed(tokens_BxT)
        if positions_BxT is None:
            positions_BxT = (jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)) if segment_ids_BxT is None
                             else segment_positions(jnp.asarray(segment_ids_BxT, jnp.int32)))
        cos, sin = rope_tables(positions_BxT, cfg.head_dim, cfg.rope_theta)
        kvs = []
        for layer in self.layers:
            if cfg.remat if remat is None else remat:
                x_BxTxD, kv = _remat_layer(layer, x_BxTxD, cos, sin, segment_ids_BxT), None
            else:
                x_BxTxD, kv = layer(x_BxTxD, cos, sin, segment_ids_BxT)
            kvs.append(kv)
        return x_BxTxD, kvs

    def logits(self, x_BxTxD):
        """Final norm and the (tied) output projection: fp32 logits [..., V]."""
        cfg = self.cfg
        h = rms_norm(x_BxTxD, self.final_norm[...], cfg.rms_norm_eps)
        w = self.embed[...] if cfg.tie_embeddings else self.lm_head[...].T
        if _cpu_path():
            return dense(h, w.astype(h.dtype).T, jnp.float32)
        return jnp.einsum("...d,vd->...v", h, w.astype(h.dtype), preferred_element_type=jnp.float32)

    def prefill(self, tokens_BxL, lengths_B, cache_len: int, cache_dtype=None):
        """Prefill RIGHT-padded prompts (row i holds ``lengths_B[i]`` tokens, then padding) with plain
        causal attention (flash attention where the backend has it: padding only follows the real
        tokens, so no mask is needed) and build a KV cache of ``cache_len`` >= L slots from their
        keys and values. Returns (fp32 logits [B, V] at each row's last prompt token, cache) with
        ``cache["index"] = L``: decoding writes slot L, L+1, ... for every row; each row's RoPE
        position continues from its own length, and the padding slots stay invalid."""
        b, length = tokens_BxL.shape
        x_BxLxD, kvs = self.hidden_states(tokens_BxL, remat=False)
        lengths_B = jnp.asarray(lengths_B, jnp.int32)
        last_BxD = jnp.take_along_axis(x_BxLxD, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
        dtype = jnp.dtype(cache_dtype or self.cfg.dtype)
        grow_k = [(0, 0), (0, 0), (0, 0), (0, cache_len - length)]    # keys [B, K, Dh, S]: slots last
        grow_v = [(0, 0), (0, 0), (0, cache_len - length), (0, 0)]    # values [B, K, S, Dh]
        as_cache = lambda a, axes, grow: jnp.pad(a.transpose(axes).astype(dtype), grow)  # noqa: E731
        cache = dict(k=tuple(as_cache(k, (0, 2, 3, 1), grow_k) for k, _ in kvs),
                     v=tuple(as_cache(v, (0, 2, 1, 3), grow_v) for _, v in kvs),
                     valid=jnp.arange(cache_len, dtype=jnp.int32)[None, :] < lengths_B[:, None],
                     pos=lengths_B, index=jnp.asarray(length, jnp.int32))
        return self.logits(last_BxD), cache

    def with_cache(self, tokens_BxT, cache, *, positions_BxT=None, segment_ids_BxT=None, cache_index=None,
                   self_shift: bool = False, decode_kernel: str = "xla"):
        """Write the chunk into ``cache`` (from :func:`init_cache` or :meth:`prefill`) at slot
        ``cache_index`` (default ``cache["index"]``) and attend over every written valid slot.
        ``segment_ids_BxT`` here only marks validity (0 = pad, e.g. left padding); positions default
        to each row's next position (``cache["pos"]`` + valid tokens before it).
        ``self_shift``: one-token decode on the CPU path uses the self-shifted softmax of
        :func:`cached_attention` (faster there; the caller must check the logits are finite).
        ``decode_kernel="pallas"``: one-token steps attend with the Pallas kernel of
        ``model/gpu_decode.py`` (reads only the slots below the write pointer; interpret mode off GPU).
        Returns (fp32 logits [B, T, V], new cache)."""
        cfg = self.cfg
        tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
        b, t = tokens_BxT.shape
        x_BxTxD = self._embed(tokens_BxT)
        s = cache["valid"].shape[1]
        index = cache["index"] if cache_index is None else jnp.asarray(cache_index, jnp.int32)
        new_valid_BxT = jnp.ones((b, t), bool) if segment_ids_BxT is None else jnp.asarray(segment_ids_BxT) != 0
        if positions_BxT is None:
            positions_BxT = cache["pos"][:, None] + jnp.cumsum(new_valid_BxT, axis=1, dtype=jnp.int32) - 1
            positions_BxT = jnp.maximum(positions_BxT, 0)
        valid_BxS = jax.lax.dynamic_update_slice(cache["valid"], new_valid_BxT, (jnp.zeros((), jnp.int32), index))
        q_slots_T = index + jnp.arange(t, dtype=jnp.int32)
        mask_BxTxS = valid_BxS[:, None, :] & (jnp.arange(s, dtype=jnp.int32)[None, None, :] <= q_slots_T[None, :, None])
        cos, sin = rope_tables(positions_BxT, cfg.head_dim, cfg.rope_theta)
        ks, vs = [], []
        shift = self_shift and t == 1 and _cpu_path()
        for i, layer in enumerate(self.layers):
            x_BxTxD, (k_i, v_i) = layer.decode(x_BxTxD, cos, sin, (cache["k"][i], cache["v"][i]), index, mask_BxTxS,
                                               shift, decode_kernel)
            ks.append(k_i)
            vs.append(v_i)
        new_cache = dict(k=tuple(ks), v=tuple(vs), valid=valid_BxS,
                         pos=cache["pos"] + jnp.sum(new_valid_BxT, axis=1, dtype=jnp.int32), index=index + t)
        return self.logits(x_BxTxD), new_cache

    def _embed(self, tokens_BxT):
        return jnp.take(self.embed[...], tokens_BxT, axis=0).astype(self.cfg.compute_dtype)


# ----------------------------------------------------------------------------------------- helpers


def init_cache(cfg: ModelConfig, batch_size: int, max_len: int, dtype=None) -> dict:
    """An empty KV cache (layout in the module docstring); dtype defaults to cfg.dtype. K/V are
    tuples of per-layer arrays (keys [B, K, Dh, S], values [B, K, S, Dh]): inside a
    ``lax.while_loop`` decode XLA updates each layer in place (a stacked [L, ...] array would be
    re-stacked every token: ~3x slower on CPU)."""
    dtype = jnp.dtype(dtype or cfg.dtype)
    kv = lambda *shape: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))  # noqa: E731
    b, k, dh = batch_size, cfg.num_kv_heads, cfg.head_dim
    return dict(k=kv(b, k, dh, max_len), v=kv(b, k, max_len, dh), valid=jnp.zeros((batch_size, max_len), bool),
                pos=jnp.zeros((batch_size,), jnp.int32), index=jnp.zeros((), jnp.int32))


def forward(graphdef, params, tokens_BxT, **kwargs):
    """Pure functional forward for use inside ``jax.jit``: ``nnx.merge(graphdef, params)(tokens, ...)``."""
    return nnx.merge(graphdef, params)(tokens_BxT, **kwargs)


def init_model(cfg: ModelConfig, seed: int = 0) -> Qwen2:
    return Qwen2(cfg, rngs=nnx.Rngs(params=seed))


def abstract_model(cfg: ModelConfig) -> Qwen2:
    """Shapes only (no memory), e.g. to count parameters or build shardings of the 100M model."""
    return nnx.eval_shape(lambda: Qwen2(cfg, rngs=nnx.Rngs(params=0)))


def count_params(model: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
