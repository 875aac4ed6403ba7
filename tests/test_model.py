"""Qwen2 model: sizes, causality, document masking, KV cache == full forward, bf16, remat."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interplay_jax.errors import ConfigError
from interplay_jax.model import (
    PRESETS,
    Qwen2,
    abstract_model,
    count_params,
    forward,
    init_cache,
    init_model,
    model_config,
    model_config_from_dict,
)


@pytest.fixture(scope="module")
def micro():
    cfg = model_config("micro")
    return cfg, init_model(cfg, seed=0)


_JIT_FORWARD = jax.jit(forward, static_argnums=0)


def run(model, tokens, **kwargs):
    """model(tokens, **kwargs), jitted (eager NNX calls are slow on 2 cores)."""
    graphdef, params = nnx.split(model, nnx.Param)
    return _JIT_FORWARD(graphdef, params, tokens, **kwargs)


def _tokens(b, t, seed=1, vocab=2200):
    return jax.random.randint(jax.random.key(seed), (b, t), 0, vocab, dtype=jnp.int32)


def test_paper100m_param_count_matches_spec():
    cfg = model_config("paper100m")
    n = cfg.num_params()
    print(f"paper100m parameters: {n:,}")
    assert 102_000_000 < n < 104_000_000
    # Analytic count == the real (abstract, memory-free) module.
    assert count_params(abstract_model(cfg)) == n
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (768, 12, 12, 2, 64)
    assert cfg.tie_embeddings and cfg.rope_theta == 1e6 and cfg.vocab_size == 2200


def test_release45m_matches_the_release_difficulty_config():
    """The release's LLaMA-Factory/model_configs/difficulty_qwen2_100M: 12 x 576, 8 / 4 heads of 72."""
    cfg = model_config("release45m")
    assert (cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
            cfg.head_dim) == (576, 1536, 12, 8, 4, 72)
    assert cfg.num_heads * cfg.head_dim == cfg.hidden_size  # HF derives head_dim = hidden / heads
    assert cfg.tie_embeddings and cfg.rope_theta == 1e6 and cfg.vocab_size == 2200
    # analytic count == the abstract module's, and the hand count of the release's shapes
    d, f, v = 576, 1536, 2200
    per_layer = 2 * d + (d * 576 + 576) + 2 * (d * 288 + 288) + 576 * d + 3 * d * f
    assert cfg.num_params() == count_params(abstract_model(cfg)) == v * d + 12 * per_layer + d == 45_089_856


def test_head_dim_72_runs_every_path():
    """Head dim 72 (not a power of two): forward, KV-cache decode and the causal block skipping
    agree; nothing in the model rejects it."""
    cfg = model_config("release45m", num_layers=1, intermediate_size=64, vocab_size=300)
    model = init_model(cfg, seed=0)
    tokens = _tokens(2, 130, vocab=300)  # >= 128: the chunked causal path
    full = run(model, tokens)
    plain = model_config("release45m", num_layers=1, intermediate_size=64, vocab_size=300, attention="jax")
    ref = run(nnx.merge(nnx.graphdef(Qwen2(plain, rngs=nnx.Rngs(0))), nnx.state(model, nnx.Param)), tokens)
    np.testing.assert_allclose(np.asarray(full), np.asarray(ref), atol=2e-5)
    cache = init_cache(cfg, 2, 130)
    graphdef, params = nnx.split(model, nnx.Param)
    step = jax.jit(lambda p, t, c: nnx.merge(graphdef, p).with_cache(t, c))
    logits, cache = step(params, tokens[:, :129], cache)
    last, _ = step(params, tokens[:, 129:], cache)
    np.testing.assert_allclose(np.asarray(last[:, 0]), np.asarray(full[:, 129]), atol=2e-5)


def test_preset_sizes_and_counts():
    sizes = {name: model_config(name).num_params() for name in PRESETS}
    assert 0.5e6 < sizes["tiny"] < 2e6
    assert 5e6 < sizes["small"] < 15e6
    assert sizes["micro"] < 0.2e6
    cfg = model_config("tiny", tie_embeddings=False)
    assert count_params(init_model(cfg)) == cfg.num_params() == sizes["tiny"] + 128 * 2200


def test_bad_configs_raise_one_line():
    with pytest.raises(ConfigError, match="num_heads=12 is not a multiple of model.num_kv_heads=5"):
        model_config("paper100m", num_kv_heads=5)
    with pytest.raises(ConfigError, match="unknown model preset"):
        model_config("huge")
    with pytest.raises(ConfigError, match="unknown model field"):
        model_config("tiny", n_layers=3)
    with pytest.raises(ConfigError, match="dtype"):
        model_config("tiny", dtype="float8")
    cfg = model_config_from_dict({"preset": "tiny", "num_layers": 2, "remat": None})
    assert cfg.num_layers == 2 and cfg.hidden_size == 128


def test_only_param_state(micro):
    cfg, model = micro
    _, params = nnx.split(model, nnx.Param)
    assert len(jax.tree.leaves(nnx.state(model))) == len(jax.tree.leaves(params))
    std = float(np.std(np.asarray(model.layers[0].gate_kernel[...])))
    assert 0.015 < std < 0.025


def test_causal(micro):
    cfg, model = micro
    tok = _tokens(2, 12)
    changed = tok.at[:, 8].set((tok[:, 8] + 1) % cfg.vocab_size)
    a, b = run(model, tok), run(model, changed)
    assert a.shape == (2, 12, cfg.vocab_size) and a.dtype == jnp.float32
    np.testing.assert_allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert np.abs(np.asarray(a[:, 8:] - b[:, 8:])).max() > 1e-4


def test_document_masking_packed_equals_separate(micro):
    cfg, model = micro
    d1, d2 = _tokens(1, 5, seed=2), _tokens(1, 7, seed=3)
    packed = jnp.concatenate([d1, d2, jnp.ones((1, 3), jnp.int32)], axis=1)  # + 3 pads
    seg = jnp.array([[1] * 5 + [2] * 7 + [0] * 3], jnp.int32)
    out = run(model, packed, segment_ids_BxT=seg)
    np.testing.assert_allclose(out[:, :5], run(model, d1), atol=1e-5)
    np.testing.assert_allclose(out[:, 5:12], run(model, d2), atol=1e-5)
    assert np.isfinite(np.asarray(out)).all()
    # Without masking the second document sees the first.
    assert np.abs(np.asarray(run(model, packed)[:, 5:12] - run(model, d2))).max() > 1e-4


@pytest.mark.parametrize("attention", ["einsum", "jax"])
def test_cache_decode_equals_full_forward_with_left_padding(attention):
    cfg = model_config("micro", attention=attention)
    model = init_model(cfg, seed=0)
    lengths, total = [4, 7, 2], 12
    b, p = len(lengths), max(lengths)
    rows = [_tokens(1, total, seed=10 + i)[0] for i in range(b)]
    # Left-padded prompts of different lengths.
    prompt = jnp.stack([jnp.concatenate([jnp.ones(p - n, jnp.int32), r[:n]]) for r, n in zip(rows, lengths)])
    valid = jnp.array([[0] * (p - n) + [1] * n for n in lengths], jnp.int32)
    cache = init_cache(cfg, b, p + total)
    gd, params = nnx.split(model, nnx.Param)
    step = jax.jit(lambda prm, t, c, seg=None: nnx.merge(gd, prm).with_cache(t, c, segment_ids_BxT=seg))
    logits, cache = step(params, prompt, cache, valid)
    seqs = [list(np.asarray(r[:n])) for r, n in zip(rows, lengths)]
    nxt = jnp.argmax(logits[:, -1], axis=-1)
    steps_logits = [logits[:, -1]]
    for _ in range(5):  # greedy decode, one token at a time
        for i in range(b):
            seqs[i].append(int(nxt[i]))
        logits, cache = step(params, nxt[:, None].astype(jnp.int32), cache)
        steps_logits.append(logits[:, 0])
        nxt = jnp.argmax(logits[:, 0], axis=-1)
    # Each row's full forward (no padding, no cache) agrees with the cached logits.
    for i in range(b):
        full = run(model, jnp.array([seqs[i]], jnp.int32))[0]
        n = lengths[i]
        for j, lg in enumerate(steps_logits):
            np.testing.assert_allclose(lg[i], full[n - 1 + j], atol=1e-5, rtol=0)
        assert [int(x) for x in jnp.argmax(full[n - 1:], axis=-1)[:5]] == seqs[i][n:]
    # The same batch through the full forward with left padding (segment ids) agrees too.
    full_padded = run(model, prompt, segment_ids_BxT=valid, positions_BxT=jnp.maximum(jnp.cumsum(valid, 1) - 1, 0))
    for i in range(b):
        np.testing.assert_allclose(full_padded[i, -1], steps_logits[0][i], atol=1e-5, rtol=0)


def test_bf16_compute_close_to_fp32():
    cfg = model_config("micro")
    model = init_model(cfg, seed=0)
    bf = Qwen2(model_config("micro", dtype="bfloat16"), rngs=nnx.Rngs(params=0))
    nnx.update(bf, nnx.state(model, nnx.Param))
    tok = _tokens(2, 16)
    a, b = run(model, tok), run(bf, tok)
    assert b.dtype == jnp.float32
    assert bf.embed[...].dtype == jnp.float32  # params stay fp32
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=5e-2)
    assert float(jnp.mean(jnp.argmax(a, -1) == jnp.argmax(b, -1))) > 0.8


def test_remat_same_grads():
    tok = _tokens(2, 10)

    def grads(cfg):
        model = init_model(cfg, seed=0)
        gd, params = nnx.split(model, nnx.Param)

        def loss(p):
            logits = forward(gd, p, tok[:, :-1])
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, 1:, None], -1))

        return jax.jit(jax.grad(loss))(params)

    g0, g1 = grads(model_config("micro")), grads(model_config("micro", remat=True))
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g0)) > 0


def test_causal_chunked_attention_matches_full():
    from interplay_jax.model import qwen2

    t = 300  # > chunk (64): 5 query chunks, the last one partial
    q, k, v = (jax.random.normal(jax.random.key(i), (2, t, h, 16)) for i, h in enumerate((8, 2, 2)))
    seg = jnp.array([[1] * 100 + [2] * 150 + [0] * 50, [1] * t])
    mask = jnp.tril(jnp.ones((t, t), bool))[None] & (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0)
    assert qwen2.causal_chunk(t) == 64
    chunked = qwen2.attention(q, k, v, "einsum", segment_ids_BxT=seg)
    full = qwen2._einsum_attention(q, k, v, mask)
    real = np.asarray(seg != 0)  # padding query rows attend nowhere: their value is unspecified
    np.testing.assert_allclose(np.asarray(chunked)[real], np.asarray(full)[real], atol=2e-6)
    np.testing.assert_allclose(np.asarray(qwen2.attention(q, k, v, "jax", segment_ids_BxT=seg))[real],
                               np.asarray(full)[real], atol=2e-6)
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (2, t, t))
    np.testing.assert_allclose(np.asarray(qwen2.attention(q, k, v, "einsum")),
                               np.asarray(qwen2._einsum_attention(q, k, v, causal)), atol=2e-6)


@pytest.mark.parametrize("t", [1, 3])
def test_cached_attention_matches_reference(t):
    """Attention over a transposed-key cache (the CPU decode's unrolled scores at T = 1, the matmul
    otherwise) equals a plain softmax(q k^T / sqrt(Dh)) v over the unmasked slots, GQA included,
    with invalid slots holding large garbage."""
    from interplay_jax.model.qwen2 import cached_attention
    rng = np.random.default_rng(t)
    b, h, kv, s, dh = 3, 4, 2, 40, 8
    q = rng.normal(size=(b, t, h, dh)).astype(np.float32)
    k = (rng.normal(size=(b, kv, s, dh)) * 3).astype(np.float32)
    v = rng.normal(size=(b, kv, s, dh)).astype(np.float32)
    mask = rng.random((b, t, s)) > 0.3
    mask[:, :, 0] = True
    k[~mask.any(1)[:, None, :, None].repeat(kv, 1).repeat(dh, 3)] = 1e4   # garbage the mask must hide
    got = cached_attention(jnp.asarray(q), jnp.asarray(k.transpose(0, 1, 3, 2)), jnp.asarray(v), jnp.asarray(mask))
    want = np.zeros((b, t, h, dh), np.float32)
    for bi in range(b):
        for ti in range(t):
            for hi in range(h):
                ki = hi // (h // kv)
                sc = k[bi, ki] @ q[bi, ti, hi] / np.sqrt(dh)
                sc = np.where(mask[bi, ti], sc, -np.inf)
                p = np.exp(sc - sc.max())
                want[bi, ti, hi] = (p / p.sum()) @ v[bi, ki]
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


def test_self_shifted_decode_softmax_matches_exact_and_fails_loudly():
    """The one-token decode softmax shifted by the query's own score (no max reduction) equals the
    exact one, invalid garbage slots included; a score ~300 above the own one overflows and the
    output is not finite (what the sampler checks for), while the exact softmax stays finite."""
    from interplay_jax.model.qwen2 import cached_attention
    rng = np.random.default_rng(5)
    b, h, kv, s, dh, own = 3, 4, 2, 40, 8, 17
    q = rng.normal(size=(b, 1, h, dh)).astype(np.float32)
    k = (rng.normal(size=(b, kv, dh, s)) * 3).astype(np.float32)
    v = rng.normal(size=(b, kv, s, dh)).astype(np.float32)
    mask = np.arange(s)[None, None, :] <= own
    mask = mask & (rng.random((b, 1, s)) > 0.3) | (np.arange(s) == own)
    k[:, :, :, ~mask[0, 0]] = 1e4                          # garbage the mask must hide (row 0's mask)
    mask[:] = mask[0]
    args = lambda k: (jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask))  # noqa: E731
    exact = np.asarray(cached_attention(*args(k)))
    shifted = np.asarray(cached_attention(*args(k), self_slot=own))
    np.testing.assert_allclose(shifted, exact, atol=1e-5, rtol=1e-5)
    far = k.copy()
    valid = np.flatnonzero(mask[0, 0])
    far[:, :, :, valid[0]] = q[:, 0].reshape(b, kv, -1, dh)[:, :, 0] * 1e3   # a key aligned with the queries
    assert np.isfinite(np.asarray(cached_attention(*args(far)))).all()
    assert not np.isfinite(np.asarray(cached_attention(*args(far), self_slot=own))).all()


@pytest.mark.parametrize("dtype,out_dtype", [(jnp.float32, None), (jnp.bfloat16, jnp.float32)])
def test_dense_gradient_equals_autodiff(dtype, out_dtype):
    """qwen2.dense's hand-written CPU gradient (2-D matmuls over the flattened rows) is the matmul's."""
    from interplay_jax.model import qwen2

    x = jax.random.normal(jax.random.key(0), (2, 7, 12)).astype(dtype)
    w = jax.random.normal(jax.random.key(1), (12, 5)).astype(dtype)
    r = jax.random.normal(jax.random.key(2), (2, 7, 5))

    def loss(f):
        return lambda x, w: jnp.sum(f(x, w).astype(jnp.float32) * r)

    plain = lambda x, w: jnp.matmul(x, w, preferred_element_type=out_dtype)  # noqa: E731
    ours = jax.grad(loss(lambda x, w: qwen2.dense(x, w, out_dtype)), argnums=(0, 1))(x, w)
    ref = jax.grad(loss(plain), argnums=(0, 1))(x, w)
    assert qwen2.dense(x, w, out_dtype).dtype == plain(x, w).dtype
    for a, b in zip(ours, ref):
        assert a.dtype == b.dtype
        tol = 1e-5 if dtype == jnp.float32 else 2e-2
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)


def test_model_grads_with_and_without_the_dense_gradient(monkeypatch):
    """The whole model's gradients on CPU equal those with autodiff's matmul gradient."""
    from interplay_jax.model import qwen2

    tok = _tokens(2, 10)
    cfg = model_config("micro")
    gd, params = nnx.split(init_model(cfg, seed=0), nnx.Param)

    def grads():
        def loss(p):
            logits = forward(gd, p, tok[:, :-1])
            return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tok[:, 1:, None], -1))
        return jax.grad(loss)(params)

    g0 = grads()
    monkeypatch.setattr(qwen2, "dense", lambda x, w, out_dtype=None: jnp.matmul(x, w, preferred_element_type=out_dtype))
    g1 = grads()
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5)
    assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g0)) > 0
