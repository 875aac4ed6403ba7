"""The Pallas decode-attention kernel (model/gpu_decode.py), run in Pallas interpret mode on the CPU:
equal to the XLA decode attention over the valid slots, reads nothing at or past the bound, and the
sampler with it samples what the XLA decode samples."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interplay_jax.model import gpu_decode
from interplay_jax.model.qwen2 import Qwen2, cached_attention, model_config
from interplay_jax.sampling.sampler import Sampler


@pytest.mark.parametrize("b,h,kv,dh,s,prompt,index", [(3, 12, 2, 64, 256, 100, 150), (2, 8, 2, 32, 128, 40, 40),
                                                      (2, 4, 4, 16, 48, 16, 47), (1, 2, 1, 32, 96, 20, 30)])
def test_matches_xla_decode_attention(b, h, kv, dh, s, prompt, index):
    rng = np.random.default_rng(s)
    q = jnp.asarray(rng.normal(size=(b, h, dh)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(b, kv, dh, s)) * 2, jnp.float32)
    v = jnp.asarray(rng.normal(size=(b, kv, s, dh)), jnp.float32)
    # right-padded prompts (a hole between each row's prompt and slot `prompt`), then decoded slots
    lengths = rng.integers(1, prompt + 1, b)
    slot = np.arange(s)
    valid = jnp.asarray((slot[None] < lengths[:, None]) | ((slot[None] >= prompt) & (slot[None] <= index)))
    bound = index + 1
    block = gpu_decode.block_size(s)
    first_unread = -(-bound // block) * block  # blocks wholly past the bound are never read
    k = k.at[..., first_unread:].set(jnp.nan)
    v = v.at[:, :, first_unread:].set(jnp.nan)
    got = gpu_decode.decode_attention(q, k, v, valid, bound, interpret=True)
    want = cached_attention(q[:, None], jnp.nan_to_num(k), jnp.nan_to_num(v), valid[:, None])[:, 0]
    assert np.isfinite(np.asarray(got)).all()
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_supports_and_block_size():
    assert gpu_decode.supports(64, 2048) and gpu_decode.supports(32, 1040)
    assert not gpu_decode.supports(72, 2048) and not gpu_decode.supports(8, 64) and not gpu_decode.supports(64, 100)
    assert [gpu_decode.block_size(s) for s in (2048, 1056, 1040)] == [64, 32, 16]


def test_sampler_with_the_kernel_samples_what_xla_samples():
    cfg = model_config("micro", head_dim=16, vocab_size=40, init_std=0.5, tie_embeddings=False)
    graphdef, params = nnx.split(Qwen2(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [15]]
    kw = dict(n=2, max_new_tokens=16, temperature=1.0, stop_ids=(3,), key=jax.random.key(3))
    xla = Sampler(graphdef, cfg, pad_id=1, decode_chunk=8, min_rows=2).sample(params, prompts, **kw)
    pallas = Sampler(graphdef, cfg, pad_id=1, decode_chunk=8, min_rows=2, decode_kernel="pallas").sample(
        params, prompts, **kw)
    np.testing.assert_array_equal(pallas.tokens, xla.tokens)
    np.testing.assert_allclose(pallas.logprobs, xla.logprobs, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="decode_kernel='bogus'"):
        Sampler(graphdef, cfg, decode_kernel="bogus")
