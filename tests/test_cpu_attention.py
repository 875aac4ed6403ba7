"""The fused XLA:CPU attention kernel (model/cpu_attention.cc) against the XLA composition: outputs and
gradients with GQA, document masks, padding, odd lengths; the whole model; the fallback."""
import shutil
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interplay_jax.model import cpu_attention, init_model, model_config, qwen2

pytestmark = pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
    reason="no C++ compiler: the kernel cannot be built here (the model keeps XLA's attention)")


def _mask(seg, t):
    return jnp.tril(jnp.ones((t, t), bool))[None] & (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)


def _segments(b, t):
    seg = np.ones((b, t), np.int32)
    seg[0, t // 4:] = 2
    seg[0, t // 2:] = 1  # an id that comes back after another: equal ids attend to each other
    seg[0, 3 * t // 4:] = 3
    seg[-1, :3] = 0  # padding rows attend nowhere and are never attended to
    seg[-1, -7:] = 0
    return jnp.asarray(seg)


@pytest.mark.parametrize("b,t,h,kv,dh", [(2, 100, 4, 2, 32), (1, 77, 8, 2, 64), (3, 130, 2, 2, 16),
                                         (2, 300, 6, 3, 48), (1, 20, 4, 1, 16)])
def test_matches_einsum_attention(b, t, h, kv, dh):
    assert cpu_attention.available()
    rng = np.random.default_rng(t)
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, dh)) * 2, jnp.float32) for n in (h, kv, kv))
    seg = _segments(b, t)
    real = (seg != 0)[:, :, None, None]

    def ref(q, k, v):
        return qwen2._einsum_attention(q, k, v, _mask(seg, t))

    def fused(q, k, v):
        return cpu_attention.fused_attention(q, k, v, seg)

    out = np.asarray(fused(q, k, v))
    np.testing.assert_allclose(np.where(real, out, 0), np.where(real, ref(q, k, v), 0), atol=2e-5, rtol=1e-5)
    assert np.all(out[~np.broadcast_to(np.asarray(real), out.shape)] == 0)
    w = jnp.asarray(rng.normal(size=(b, t, h, dh)), jnp.float32) * real

    def grads(fn):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * w), argnums=(0, 1, 2)))(q, k, v)

    for got, want in zip(grads(fused), grads(ref)):
        assert float(jnp.abs(want).max()) > 0
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_plain_causal_and_dispatch():
    """Without segment ids the kernel is plain causal attention; "auto" picks it on CPU; shapes it
    cannot run (head_dim 8, bf16) keep the einsum path."""
    assert qwen2.resolve_impl("auto", jnp.float32, True) == "cpu"
    rng = np.random.default_rng(0)
    t = 70
    q, k, v = (jnp.asarray(rng.normal(size=(2, t, n, 32)), jnp.float32) for n in (4, 2, 2))
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (2, t, t))
    np.testing.assert_allclose(qwen2.attention(q, k, v, "cpu"), qwen2._einsum_attention(q, k, v, causal), atol=3e-6)
    assert cpu_attention.supports(q, k)
    assert not cpu_attention.supports(q[..., :8], k[..., :8])
    assert not cpu_attention.supports(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16))
    q8, k8, v8 = q[..., :8], k[..., :8], v[..., :8]
    np.testing.assert_allclose(qwen2.attention(q8, k8, v8, "cpu"), qwen2._einsum_attention(q8, k8, v8, causal),
                               atol=3e-6)


def test_model_loss_and_gradients_match_einsum():
    """A whole tiny model with document masking: the loss and every parameter's gradient are the
    same with the kernel as with the XLA composition."""
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 2200, (2, 96)), jnp.int32)
    seg = jnp.asarray(np.repeat([[1] * 40 + [2] * 50 + [0] * 6], 2, axis=0), jnp.int32)

    def loss_and_grads(impl):
        from flax import nnx

        model = init_model(model_config("tiny", attention=impl), seed=0)
        graphdef, params = nnx.split(model, nnx.Param)

        def loss(p):
            logits = qwen2.forward(graphdef, p, tokens, segment_ids_BxT=seg)[:, :-1]
            nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
            return jnp.sum(nll * (seg[:, 1:] != 0)) / jnp.sum(seg[:, 1:] != 0)

        return jax.jit(jax.value_and_grad(loss))(params)

    (l0, g0), (l1, g1) = loss_and_grads("einsum"), loss_and_grads("cpu")
    assert float(l0) == pytest.approx(float(l1), rel=1e-6)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4)


def test_failed_build_warns_and_falls_back(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu_attention, "_state", {})
    monkeypatch.setenv("INTERPLAY_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "/bin/false")
    with pytest.warns(RuntimeWarning, match="fused CPU attention kernel is unavailable"):
        assert not cpu_attention.available()
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 20, n, 16)), jnp.float32) for n in (2, 1, 1))
    causal = jnp.tril(jnp.ones((20, 20), bool))[None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process, not one per call
        np.testing.assert_allclose(qwen2.attention(q, k, v, "cpu"), qwen2._einsum_attention(q, k, v, causal),
                                   atol=3e-6)
    monkeypatch.setenv("INTERPLAY_CPU_KERNELS", "0")
    monkeypatch.setattr(cpu_attention, "_state", {"ok": True})
    assert not cpu_attention.available()
