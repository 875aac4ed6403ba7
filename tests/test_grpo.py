"""GRPO losses (hand-computed values and gradients), the jitted step, and a toy task that RL solves."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from interplay_jax.model.qwen2 import Qwen2, model_config
from interplay_jax.rl import grpo
from interplay_jax.sampling.sampler import Sampler


# ------------------------------------------------------------------------------------------ advantages


def test_group_advantages_hand_values():
    r = np.array([1, 0, 0, 0, 1, 1, 1, 1, 3, 1, 2, 0], np.float32)
    a = grpo.group_advantages(r, 4)
    # group 0: mean .25, unbiased std sqrt(.75/3) = .5
    np.testing.assert_allclose(a[:4], np.array([.75, -.25, -.25, -.25]) / (.5 + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(a[4:8], 0.0)  # all equal -> no signal
    std = math.sqrt((2.25 + .25 + .25 + 2.25) / 3)
    np.testing.assert_allclose(a[8:], (np.array([3, 1, 2, 0]) - 1.5) / (std + 1e-6), rtol=1e-6)
    dr = grpo.group_advantages(r, 4, std_normalize=False)
    np.testing.assert_allclose(dr[:4], [.75, -.25, -.25, -.25], rtol=1e-6)
    # jax input gives the same numbers
    np.testing.assert_allclose(np.asarray(grpo.group_advantages(jnp.asarray(r), 4)), a, rtol=1e-6)
    np.testing.assert_allclose(grpo.group_advantages(np.array([1., 0.]), 1), 0.0)
    with pytest.raises(ValueError):
        grpo.group_advantages(r, 5)


# ---------------------------------------------------------------------------------------- policy loss


def test_policy_loss_clip_and_dual_clip_hand_values():
    ratio = np.array([1.0, 1.5, 0.5, 0.5, 5.0, 2.0, 1.1], np.float32)
    adv = np.array([1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -2.0], np.float32)
    old = np.zeros_like(ratio)
    loss, clipped, dual = grpo.policy_loss_terms(jnp.log(ratio), old, adv, 0.2, 3.0)
    # 1.0/A=1: -1 | 1.5/A=1: max(-1.5,-1.2)=-1.2 clipped | 0.5/A=1: max(-.5,-.8)=-.5
    # 0.5/A=-1: max(.5,.8)=.8 clipped | 5/A=-1: max(5,1.2)=5 -> dual min(5,3)=3
    # 2/A=-1: max(2,1.2)=2 < 3 | 1.1/A=-2: max(2.2, 2.2)=2.2 (inside the band)
    np.testing.assert_allclose(loss, [-1.0, -1.2, -0.5, 0.8, 3.0, 2.0, 2.2], rtol=1e-6)
    np.testing.assert_array_equal(clipped, [0, 1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(dual, [0, 0, 0, 0, 1, 0, 0])
    # without dual clip the 5x ratio token keeps its full loss
    loss_nd, _, dual_nd = grpo.policy_loss_terms(jnp.log(ratio), old, adv, 0.2, 0.0)
    assert float(loss_nd[4]) == pytest.approx(5.0) and float(dual_nd.sum()) == 0


def test_kl_k3_hand_values():
    logp = jnp.array([-1.0, -2.0, -0.5])
    ref = jnp.array([-1.0, -1.0, -1.5])
    d = np.array([0.0, 1.0, -1.0])
    np.testing.assert_allclose(grpo.kl_k3(logp, ref), np.exp(d) - d - 1, rtol=1e-6)
    assert float(grpo.kl_k3(logp, ref)[0]) == 0.0


def test_token_weights_variants():
    mask = jnp.array([[0, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]], jnp.int32)  # third row = padding row
    w = grpo.token_weights(mask, "token-mean")
    np.testing.assert_allclose(w, np.asarray(mask) / 4.0)
    w = grpo.token_weights(mask, "seq-mean-token-mean")
    np.testing.assert_allclose(w, [[0, 1 / 6, 1 / 6, 1 / 6], [0, .5, 0, 0], [0, 0, 0, 0]], rtol=1e-6)
    w = grpo.token_weights(mask, "dr_grpo", dr_grpo_constant=8.0)
    np.testing.assert_allclose(w, np.asarray(mask) / 16.0)
    with pytest.raises(ValueError):
        grpo.token_weights(mask, "sum")


def _hand_batch():
    # 2 rows, T = 4; tokens 2..3 are the response of row 0, token 3 of row 1.
    mask = np.array([[0, 0, 1, 1], [0, 0, 0, 1]], np.float32)
    old = np.array([[0, -1.0, -1.0, -2.0], [0, -1.0, -1.0, -1.0]], np.float32)
    logp = old + np.array([[0, 0, np.log(1.5), np.log(0.9)], [0, 0, 0, np.log(5.0)]], np.float32)
    ref = np.array([[0, 0, -0.5, -2.5], [0, 0, 0, -1.0]], np.float32)
    adv = np.array([1.0, -1.0], np.float32)
    ent = np.array([[0, 0, 0.7, 0.3], [0, 0, 0, 0.2]], np.float32)
    batch = {"old_logprobs": jnp.asarray(old), "advantages": jnp.asarray(adv), "response_mask": jnp.asarray(mask),
             "ref_logprobs": jnp.asarray(ref)}
    return batch, jnp.asarray(logp), jnp.asarray(ent), mask, ref, adv


@pytest.mark.parametrize("agg", grpo.LOSS_AGGS)
def test_grpo_loss_and_gradient_hand_values(agg):
    batch, logp, ent, mask, ref, adv = _hand_batch()
    cfg = grpo.GRPOConfig(kl_coef=0.1, entropy_coef=0.01, loss_agg=agg, dr_grpo_constant=4.0)
    w = np.asarray(grpo.token_weights(batch["response_mask"], agg, 4.0))
    if agg == "token-mean":
        expect_w = mask / 3
    elif agg == "seq-mean-token-mean":
        expect_w = mask / np.array([[2 * 2], [1 * 2]])
    else:
        expect_w = mask / (4.0 * 2)
    np.testing.assert_allclose(w, expect_w, rtol=1e-6)
    # per-token policy loss by hand: row0 t2 ratio 1.5 A=1 -> -1.2 (clipped, grad 0);
    # row0 t3 ratio .9 A=1 -> -.9 (grad -A*ratio = -.9); row1 t3 ratio 5 A=-1 -> dual clip 3 (grad 0)
    pg_tok = np.array([[0, 0, -1.2, -0.9], [0, 0, 0, 3.0]])
    dpg = np.array([[0, 0, 0, -0.9], [0, 0, 0, 0]])
    d = ref - np.asarray(logp)
    kl_tok = np.exp(d) - d - 1
    dkl = 1 - np.exp(d)
    expect_loss = np.sum(w * pg_tok) + 0.1 * np.sum(w * kl_tok) - 0.01 * np.sum(w * np.asarray(ent))
    loss, aux = grpo.grpo_loss_from_logprobs(logp, ent, batch, jnp.asarray(w), cfg)
    assert float(loss) == pytest.approx(expect_loss, rel=1e-5)
    assert float(aux["pg_loss"]) == pytest.approx(np.sum(w * pg_tok), rel=1e-5)
    assert float(aux["clipfrac_tokensum"]) == 1.0 and float(aux["dualclip_tokensum"]) == 1.0
    assert float(aux["tokens"]) == 3.0
    g_logp, g_ent = jax.grad(lambda lp, e: grpo.grpo_loss_from_logprobs(lp, e, batch, jnp.asarray(w), cfg)[0],
                             argnums=(0, 1))(logp, ent)
    np.testing.assert_allclose(g_logp, w * (dpg + 0.1 * dkl), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_ent, -0.01 * w, rtol=1e-5, atol=1e-9)


def test_kl_coef_zero_needs_no_reference():
    batch, logp, ent, *_ = _hand_batch()
    del batch["ref_logprobs"]
    cfg = grpo.GRPOConfig(kl_coef=0.0)
    loss, aux = grpo.grpo_loss_from_logprobs(logp, ent, batch, grpo.token_weights(batch["response_mask"]), cfg)
    assert "kl" not in aux and np.isfinite(float(loss))


def test_token_logprobs_match_log_softmax():
    from interplay_jax.model.logprobs import token_logprobs
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    tokens = rng.integers(0, 7, size=(2, 5))
    logp, ent = token_logprobs(jnp.asarray(logits), jnp.asarray(tokens), temperature=2.0, with_entropy=True)
    ls = logits / 2.0
    ls = ls - np.log(np.exp(ls).sum(-1, keepdims=True))
    np.testing.assert_allclose(logp, np.take_along_axis(ls, tokens[..., None], -1)[..., 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ent, -(np.exp(ls) * ls).sum(-1), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- the step


V = 32
TARGET = 7


def _micro_model(seed=0):
    cfg = model_config("micro", vocab_size=V, num_layers=1, max_position_embeddings=64)
    return Qwen2(cfg, rngs=nnx.Rngs(params=seed))


def _state(params, tx):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def _random_rollouts(n_rows=8, seed=0):
    rng = np.random.default_rng(seed)
    prompts = [list(rng.integers(4, V, size=rng.integers(2, 5))) for _ in range(n_rows // 2)]
    resp = rng.integers(4, V, size=(n_rows, 5))
    lengths = rng.integers(1, 6, size=n_rows)
    batch = grpo.assemble_rollouts(prompts, resp, lengths, np.repeat(np.arange(n_rows // 2), 2), seq_len=10)
    batch["advantages"] = grpo.group_advantages(rng.normal(size=n_rows).astype(np.float32), 2)
    return batch


def test_assemble_rollouts_layout():
    b = grpo.assemble_rollouts([[5, 6], [7, 8, 9]], np.array([[10, 11, 3], [12, 3, 1]]), [3, 2], [0, 1],
                               seq_len=7, pad_id=1, num_rows=3)
    np.testing.assert_array_equal(b["tokens"], [[5, 6, 10, 11, 3, 1, 1], [7, 8, 9, 12, 3, 1, 1], [1] * 7])
    np.testing.assert_array_equal(b["prompt_lens"], [2, 3, 1])
    np.testing.assert_array_equal(b["response_mask"], [[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="exceed seq_len"):
        grpo.assemble_rollouts([[5, 6, 7, 8, 9]], np.array([[10, 11, 3]]), [3], [0], seq_len=7)
    assert grpo.update_lengths(2048) == (512, 1024, 1536, 2048) and grpo.update_lengths(300) == (128, 256, 300)


def test_step_first_minibatch_has_ratio_one_and_micro_batches_are_exact():
    model = _micro_model()
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.sgd(0.1)
    batch = _random_rollouts()
    ref_fn = grpo.make_logprob_fn(graphdef)
    ref = ref_fn(params, batch)
    # reference = a perturbed copy so the KL term is non-trivial
    batch["ref_logprobs"] = np.asarray(ref) - 0.1 * np.asarray(batch["response_mask"])
    batch["ref_is_old"] = np.zeros(len(batch["tokens"]), bool)
    cfg = grpo.GRPOConfig(kl_coef=0.05)

    step = grpo.make_grpo_step(graphdef, tx, cfg, num_minibatches=1, donate=False)
    s1, m1 = step(_state(params, tx), batch)
    assert float(m1["ratio_mean"]) == pytest.approx(1.0, abs=1e-5)
    assert float(m1["clip_frac"]) == 0.0
    # at ratio 1: pg_loss = -sum_t w_t A_row (token-mean)
    mask = batch["response_mask"].astype(np.float32)
    expect_pg = -np.sum(mask * batch["advantages"][:, None]) / mask.sum()
    assert float(m1["pg_loss"]) == pytest.approx(expect_pg, abs=1e-5)
    d = -0.1
    assert float(m1["kl"]) == pytest.approx(math.exp(d) - d - 1, rel=1e-4)
    assert int(s1["step"]) == 1
    # gradient equals jax.grad of the plain loss written out here
    def plain_loss(p):
        logp, _ = grpo.response_logprobs(graphdef, p, {k: jnp.asarray(v) for k, v in batch.items()})
        logp_old = jax.lax.stop_gradient(logp)
        ratio = jnp.exp(logp - logp_old)
        w = mask / mask.sum()
        dk = batch["ref_logprobs"] - logp
        return jnp.sum(w * (-batch["advantages"][:, None] * ratio)) + 0.05 * jnp.sum(w * (jnp.exp(dk) - dk - 1))
    g = jax.grad(plain_loss)(params)
    assert float(m1["grad_norm"]) == pytest.approx(float(optax.tree.norm(g)), rel=1e-4)
    expect_params = jax.tree.map(lambda p, gi: p - 0.1 * gi, params, g)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(expect_params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

    # two mini-batches, with and without micro-batches: identical results
    step2 = grpo.make_grpo_step(graphdef, tx, cfg, num_minibatches=2, donate=False)
    step2m = grpo.make_grpo_step(graphdef, tx, cfg, num_minibatches=2, micro_batch_size=2, donate=False)
    s2, m2 = step2(_state(params, tx), batch)
    s2m, m2m = step2m(_state(params, tx), batch)
    for a, b in zip(jax.tree.leaves(s2["params"]), jax.tree.leaves(s2m["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(m2["loss"]) == pytest.approx(float(m2m["loss"]), rel=1e-4)
    # the second mini-batch sees updated params, so its ratio moves off 1
    assert float(m2["ratio_mean"]) != pytest.approx(1.0, abs=1e-7)


def _toy_reward(completions):
    return np.array([1.0 if c and c[0] == TARGET else 0.0 for c in completions], np.float32)


def _p_target(graphdef, params, prompts):
    """Exact mean probability that the first generated token is TARGET."""
    model = nnx.merge(graphdef, params)
    return float(np.mean([jax.nn.softmax(model(jnp.asarray([p]))[0, -1])[TARGET] for p in prompts]))


def test_toy_task_reward_rises_from_below_10_to_above_90_percent():
    """Reward = the first generated token is TARGET. A fresh micro model emits it ~1/V of the time."""
    model = _micro_model(seed=1)
    graphdef, params = nnx.split(model, nnx.Param)
    sampler = Sampler(graphdef, model.cfg, pad_id=1)
    tx = optax.adam(3e-2)
    n, prompts = 8, [[4, 5], [6, 7, 8], [9], [10, 11]]
    cfg = grpo.GRPOConfig(kl_coef=0.0)
    step = grpo.make_grpo_step(graphdef, tx, cfg, num_minibatches=2)
    state = _state(params, tx)
    assert _p_target(graphdef, params, prompts) < 0.10
    key = jax.random.key(0)
    history = []
    for it in range(40):
        res = sampler.sample(state["params"], prompts, n=n, max_new_tokens=3, temperature=1.0,
                             key=jax.random.fold_in(key, it))
        reward = _toy_reward(res.completions())
        history.append(float(reward.mean()))
        if it >= 5 and np.mean(history[-3:]) > 0.95:
            break
        batch = grpo.assemble_rollouts(prompts, res.tokens, res.lengths, res.prompt_index, seq_len=8)
        batch["advantages"] = grpo.group_advantages(reward, n)
        state, metrics = step(state, batch)
        assert np.isfinite(float(metrics["loss"]))
    assert history[0] < 0.2, history
    assert np.mean(history[-3:]) > 0.90, history
    assert _p_target(graphdef, state["params"], prompts) > 0.90


def _old_layout_loss(graphdef, params, prompts, resp, lengths, prompt_index, adv, ref_delta, cfg):
    """The GRPO loss of the former layout, written out: rows [left pad | prompt | response | pad] with
    segment ids (a masked attention), log-probs at every position aligned with the tokens."""
    from interplay_jax.model.logprobs import token_logprobs
    p_len = max(len(p) for p in prompts)
    n, r = resp.shape
    t = p_len + r
    tokens, valid, mask = np.ones((n, t), np.int32), np.zeros((n, t), np.int32), np.zeros((n, t), np.float32)
    for i in range(n):
        p = prompts[prompt_index[i]]
        tokens[i, p_len - len(p):p_len] = p
        tokens[i, p_len:p_len + lengths[i]] = resp[i, :lengths[i]]
        valid[i, p_len - len(p):p_len + lengths[i]] = 1
        mask[i, p_len:p_len + lengths[i]] = 1
    positions = np.maximum(np.cumsum(valid, 1) - 1, 0)
    logits = nnx.merge(graphdef, params)(jnp.asarray(tokens), positions_BxT=jnp.asarray(positions),
                                         segment_ids_BxT=jnp.asarray(valid))
    logp, ent = token_logprobs(logits[:, :-1], jnp.asarray(tokens[:, 1:]), with_entropy=True)
    pad = jnp.zeros((n, 1))
    logp, ent = jnp.concatenate([pad, logp], 1), jnp.concatenate([pad, ent], 1)
    old = jax.lax.stop_gradient(logp)
    batch = {"response_mask": jnp.asarray(mask), "advantages": jnp.asarray(adv), "old_logprobs": old,
             "ref_logprobs": old - ref_delta * jnp.asarray(mask)}
    return grpo.grpo_loss_from_logprobs(logp, ent, batch, grpo.token_weights(batch["response_mask"], cfg.loss_agg,
                                                                             cfg.dr_grpo_constant), cfg)[0]


@pytest.mark.parametrize("agg", grpo.LOSS_AGGS)
def test_right_aligned_layout_equals_the_left_padded_one(agg):
    """The update's layout (right-aligned rows, plain causal attention, logits only at response
    positions) gives the same loss and gradients as left-padded rows with a segment mask (fp32)."""
    graphdef, params = nnx.split(_micro_model(seed=3), nnx.Param)
    rng = np.random.default_rng(1)
    prompts = [list(rng.integers(4, V, size=k)) for k in (2, 5, 3)]
    prompt_index = np.array([0, 0, 1, 1, 2, 2])
    resp = rng.integers(4, V, size=(6, 6)).astype(np.int32)
    lengths = np.array([6, 1, 4, 3, 5, 2])
    adv = rng.normal(size=6).astype(np.float32)
    cfg = grpo.GRPOConfig(kl_coef=0.05, entropy_coef=0.01, loss_agg=agg, dr_grpo_constant=6.0)

    def new_loss(p):
        b = grpo.assemble_rollouts(prompts, resp, lengths, prompt_index, seq_len=16)
        b = {k: jnp.asarray(v) for k, v in b.items()}
        logp, ent = grpo.response_logprobs(graphdef, p, b)
        old = jax.lax.stop_gradient(logp)
        b.update(advantages=jnp.asarray(adv), old_logprobs=old, ref_logprobs=old - 0.3 * b["response_mask"])
        return grpo.grpo_loss_from_logprobs(logp, ent, b, grpo.token_weights(b["response_mask"], agg, 6.0), cfg)[0]

    old_loss = lambda p: _old_layout_loss(graphdef, p, prompts, resp, lengths, prompt_index, adv, 0.3, cfg)  # noqa
    l_new, g_new = jax.value_and_grad(new_loss)(params)
    l_old, g_old = jax.value_and_grad(old_loss)(params)
    assert float(l_new) == pytest.approx(float(l_old), rel=1e-5, abs=1e-6)
    for a, b in zip(jax.tree.leaves(g_new), jax.tree.leaves(g_old)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_remat_with_micro_batches_and_sampler_old_logprobs():
    """model.remat works inside the micro-batched update (it used to raise a TraceContextError) and
    gives the plain update's result; old log-probs handed in (as the sampler's) are used as given."""
    cfg = model_config("micro", vocab_size=V, num_layers=2, max_position_embeddings=64)
    graphdef, params = nnx.split(Qwen2(cfg, rngs=nnx.Rngs(params=0)), nnx.Param)
    remat_graphdef, _ = nnx.split(Qwen2(dataclasses.replace(cfg, remat=True), rngs=nnx.Rngs(params=0)), nnx.Param)
    tx = optax.sgd(0.1)
    batch = _random_rollouts()
    gcfg = grpo.GRPOConfig(kl_coef=0.0)
    plain = grpo.make_grpo_step(graphdef, tx, gcfg, num_minibatches=2, donate=False)
    remat = grpo.make_grpo_step(remat_graphdef, tx, gcfg, num_minibatches=2, micro_batch_size=2, donate=False)
    s1, m1 = plain(_state(params, tx), batch)
    s2, m2 = remat(_state(params, tx), batch)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(m1["first_ratio_dev"]) == pytest.approx(0.0, abs=1e-6)
    # old log-probs from outside (e.g. the sampler): shifted by 0.1 -> ratio e^0.1 on the first mini-batch
    old = np.asarray(grpo.make_logprob_fn(graphdef)(params, batch)) - 0.1
    s3, m3 = plain(_state(params, tx), dict(batch, old_logprobs=old))
    assert float(m3["first_ratio_dev"]) == pytest.approx(math.exp(0.1) - 1, rel=1e-4)
