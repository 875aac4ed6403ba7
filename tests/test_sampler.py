"""KV-cache sampler: cached greedy == uncached greedy; sampling statistics; top-k/top-p; stop ids."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interplay_jax.model.qwen2 import Qwen2, model_config
from interplay_jax.sampling.padding import bucket_length
from interplay_jax.sampling.rollouts import rollout
from interplay_jax.sampling.sampler import Sampler, filter_logits, inverse_cdf

PAD = 1


@pytest.fixture(scope="module")
def toy():
    # Large init + untied head so random logits are far from uniform and greedy is not degenerate.
    cfg = model_config("micro", vocab_size=24, init_std=0.5, tie_embeddings=False)
    model = Qwen2(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    return model, Sampler(graphdef, cfg, pad_id=PAD), params


def _full_logits(model, seq, width=32):
    """Uncached full forward; right padding to a fixed width (one compile) is harmless under causality."""
    fwd = _full_logits.__dict__.setdefault(id(model), nnx.jit(lambda m, x: m(x)))
    return fwd(model, jnp.asarray([list(seq) + [PAD] * (width - len(seq))]))[0, : len(seq)]


def _uncached_greedy(model, prompt, steps):
    seq = list(prompt)
    for _ in range(steps):
        seq.append(int(jnp.argmax(_full_logits(model, seq)[-1])))
    return seq[len(prompt):]


def test_cached_greedy_equals_uncached(toy):
    model, sampler, params = toy
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 2, 3], [20]]
    steps = 10
    res = sampler.sample(params, prompts, n=2, max_new_tokens=steps, temperature=0.0, key=jax.random.key(0))
    assert res.tokens.shape == (6, steps)
    assert res.lengths.tolist() == [steps] * 6 and not res.done.any()
    for i, p in enumerate(prompts):
        want = _uncached_greedy(model, p, steps)
        assert res.tokens[2 * i].tolist() == want
        assert res.tokens[2 * i + 1].tolist() == want
    assert res.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]


def test_logprobs_are_raw_logit_logprobs(toy):
    model, sampler, params = toy
    prompt = [4, 5, 6]
    res = sampler.sample(params, [prompt], n=4, max_new_tokens=3, temperature=0.7, key=jax.random.key(1))
    for r in range(4):
        seq = prompt + res.tokens[r].tolist()
        logits = _full_logits(model, seq)
        for t in range(3):
            want = jax.nn.log_softmax(logits[len(prompt) - 1 + t])[seq[len(prompt) + t]]
            np.testing.assert_allclose(res.logprobs[r, t], want, atol=1e-4)


def _first_token_counts(sampler, params, prompt, n, key, **kw):
    res = sampler.sample(params, [prompt], n=n, max_new_tokens=1, key=key, **kw)
    return np.bincount(res.tokens[:, 0], minlength=24)


def test_sample_frequencies_match_softmax(toy):
    model, sampler, params = toy
    prompt, temp, n = [3, 9, 4, 11], 0.7, 4096
    counts = _first_token_counts(sampler, params, prompt, n, jax.random.key(2), temperature=temp)
    probs = np.asarray(jax.nn.softmax(model(jnp.asarray([prompt]))[0, -1] / temp))
    expected = probs * n
    big = expected >= 5  # chi-square over well-populated cells; the rest pooled into one cell
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] < 5:
        obs, exp = obs[:-1], exp[:-1]
    chi2 = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1
    assert dof >= 3, "toy distribution too peaked for the test"
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)  # ~ > 5 sigma would fail
    # a wrong temperature must be detectable by the same statistic
    exp_wrong = np.asarray(jax.nn.softmax(model(jnp.asarray([prompt]))[0, -1]))[big] * n
    assert ((counts[big] - exp_wrong) ** 2 / exp_wrong).sum() > chi2


@pytest.mark.parametrize("v", [2200, 97, 1, 7])
def test_inverse_cdf_matches_a_float64_reference(v):
    """The two-level search (block sums, then one block) picks the token of a full float64 cumulative
    sum, for vocabularies that do and do not split evenly, with masked (filtered) tokens, and never a
    masked token; thresholds within 1e-5 of a boundary are skipped (float rounding may go either way)."""
    rng = np.random.default_rng(v)
    logits = rng.normal(size=(64, v)).astype(np.float32) * 3
    if v > 1:
        logits[::3, rng.integers(0, v, size=v // 2)] = np.finfo(np.float32).min   # filtered out
    u = rng.random(64).astype(np.float32)
    got = np.asarray(inverse_cdf(jnp.asarray(logits), jnp.asarray(u)))
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    cdf = np.cumsum(p, -1) / p.sum(-1, keepdims=True)
    want = np.minimum((cdf < u[:, None].astype(np.float64)).sum(-1), v - 1)
    clear = np.abs(cdf - u[:, None]).min(-1) > 1e-5
    assert clear.sum() > 50
    np.testing.assert_array_equal(got[clear], want[clear])
    assert (logits[np.arange(64), got] > np.finfo(np.float32).min).all()


def test_top_k_and_top_p_restrict_support(toy):
    model, sampler, params = toy
    prompt = [3, 9, 4, 11]
    logits = np.asarray(model(jnp.asarray([prompt]))[0, -1])
    order = np.argsort(-logits)
    counts = _first_token_counts(sampler, params, prompt, 1024, jax.random.key(3), temperature=1.0, top_k=3)
    assert set(np.nonzero(counts)[0]) <= set(order[:3].tolist())
    assert len(np.nonzero(counts)[0]) == 3
    probs = np.asarray(jax.nn.softmax(logits))[order]
    top_p = float(probs[:2].sum()) - 1e-3  # the nucleus is exactly the two most likely tokens
    counts = _first_token_counts(sampler, params, prompt, 1024, jax.random.key(4), temperature=1.0, top_p=top_p)
    assert set(np.nonzero(counts)[0]) == set(order[:2].tolist())
    # filter_logits directly: tiny top_p keeps only the argmax
    kept = np.asarray(filter_logits(jnp.asarray(logits[None]), top_p=1e-6))[0]
    assert (kept > -1e30).sum() == 1 and kept.argmax() == order[0]


def test_stop_ids_end_sequences(toy):
    _, sampler, params = toy
    stop = (5, 7, 9, 11)
    res = sampler.sample(params, [[3, 4], [6, 6, 6]], n=16, max_new_tokens=12, temperature=1.0,
                         key=jax.random.key(5), stop_ids=stop)
    assert res.done.any(), "no row stopped: pick other stop ids"
    for r in range(res.tokens.shape[0]):
        row, length = res.tokens[r].tolist(), int(res.lengths[r])
        hits = [t for t, tok in enumerate(row) if tok in stop]
        if res.done[r]:
            assert hits and hits[0] == length - 1
            assert all(tok == PAD for tok in row[length:])
            assert np.all(res.logprobs[r, length:] == 0)
        else:
            assert length == 12 and not hits


def test_buckets_limit_recompiles_and_rollout_filters(toy):
    _, sampler, params = toy
    kw = dict(n=2, max_new_tokens=4, temperature=1.0, stop_ids=())
    assert bucket_length(17) == 32 and bucket_length(3000) == 4096
    sampler.sample(params, [[2] * 20, [3] * 5], key=jax.random.key(0), **kw)
    compiled = sampler.compile_count
    sampler.sample(params, [[2] * 30, [4] * 9], key=jax.random.key(1), **kw)  # same buckets: no retrace
    assert sampler.compile_count == compiled
    prompts = [[2] * 5, [3] * 40, [4] * 7, [5] * 12]
    out = rollout(sampler, params, prompts, max_prompt_len=16, batch_prompts=2, key=jax.random.key(2), **kw)
    assert out.num_filtered == 1 and out.kept == [0, 2, 3]
    assert out.result.tokens.shape == (6, 4)
    assert out.result.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]


def test_chunked_decode_with_compaction_samples_the_same_rows(toy):
    """Decoding in chunks that read only written slots and drop finished rows gives exactly the
    tokens of one long decode (a row's randomness is keyed by its row, not its place in the batch),
    and does less work when rows finish early."""
    model, _, params = toy
    graphdef, _ = nnx.split(model, nnx.Param)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [15]]
    kw = dict(n=4, max_new_tokens=32, temperature=1.0, stop_ids=(3,), key=jax.random.key(7))
    whole = Sampler(graphdef, model.cfg, pad_id=PAD).sample(params, prompts, **kw)
    chunked_sampler = Sampler(graphdef, model.cfg, pad_id=PAD, decode_chunk=4, min_rows=2)
    chunked = chunked_sampler.sample(params, prompts, **kw)
    assert whole.done.any() and not whole.done.all(), "pick other stop ids: some rows must stop early"
    np.testing.assert_array_equal(chunked.tokens, whole.tokens)
    np.testing.assert_array_equal(chunked.lengths, whole.lengths)
    np.testing.assert_array_equal(chunked.done, whole.done)
    np.testing.assert_allclose(chunked.logprobs, whole.logprobs, rtol=1e-4, atol=1e-5)
    s = chunked_sampler.stats
    assert s["row_steps"] < s["row_steps_full"]


def test_self_shifted_decode_equals_exact_and_falls_back_on_overflow(toy):
    """The sampler's self-shifted decode softmax samples what the exact softmax samples; a policy
    whose attention scores overflow it (huge q/k kernels) is detected by its non-finite log-probs and
    the call is rerun exactly, giving the exact sampler's result."""
    model, _, params = toy
    graphdef, _ = nnx.split(model, nnx.Param)
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14]]
    kw = dict(n=2, max_new_tokens=12, temperature=1.0, key=jax.random.key(3))
    exact = Sampler(graphdef, model.cfg, pad_id=PAD, self_shift=False).sample(params, prompts, **kw)
    shifted_sampler = Sampler(graphdef, model.cfg, pad_id=PAD, self_shift=True)
    shifted = shifted_sampler.sample(params, prompts, **kw)
    np.testing.assert_array_equal(shifted.tokens, exact.tokens)
    np.testing.assert_allclose(shifted.logprobs, exact.logprobs, rtol=1e-4, atol=1e-5)
    assert shifted_sampler.stats["exact_reruns"] == 0

    hot = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 300.0 if any(getattr(k, "key", None) in ("q_kernel", "k_kernel") for k in path) else x,
        params)
    exact = Sampler(graphdef, model.cfg, pad_id=PAD, self_shift=False).sample(hot, prompts, **kw)
    assert np.isfinite(exact.logprobs).all()
    sampler = Sampler(graphdef, model.cfg, pad_id=PAD, self_shift=True)
    with pytest.warns(RuntimeWarning, match="exact softmax"):
        got = sampler.sample(hot, prompts, **kw)
    assert sampler.stats["exact_reruns"] == 1 and not sampler.self_shift
    np.testing.assert_array_equal(got.tokens, exact.tokens)
    np.testing.assert_array_equal(got.logprobs, exact.logprobs)
