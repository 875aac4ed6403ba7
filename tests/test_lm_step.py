"""lm_step / optim: loss and gradient vs a straightforward reference, masking, schedule, grad
accumulation, clipping and weight decay (1 CPU device, the ~0.1M "micro" model)."""
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interplay_jax.errors import ConfigError
from interplay_jax.model.qwen2 import model_config
from interplay_jax.train import lm_step, optim
from interplay_jax.train import sharding as shd

V = 64
CFG = model_config("micro", vocab_size=V)


def ocfg(**kw):
    base = dict(lr=1e-3, min_lr=1e-4, warmup_steps=2, warmup_frac=None, total_steps=10, schedule="cosine",
                b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, grad_clip=1.0, grad_accum_steps=1)
    base.update(kw)
    return types.SimpleNamespace(**base)


def make_batch(seed=0, b=4, t=16):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, V, (b, t)).astype(np.int32)
    seg = np.zeros((b, t), np.int32)
    for r in range(b):  # 1..3 documents of random length, then padding
        pos, doc = 0, 1
        while pos < t - 2 and doc <= 3:
            n = int(rng.integers(2, 8))
            seg[r, pos:pos + n] = doc
            pos, doc = pos + n, doc + 1
    seg[0, -3:] = 0  # at least one row ends in padding
    positions = np.zeros_like(seg)
    for r in range(b):
        for i in range(t):
            positions[r, i] = 0 if i == 0 or seg[r, i] != seg[r, i - 1] else positions[r, i - 1] + 1
    return dict(tokens=tokens, segment_ids=seg, positions=positions)


O = ocfg(warmup_steps=0, lr=1e-3)
SCHED = optim.make_schedule(O)
TX = optim.make_optimizer(O, SCHED)


@pytest.fixture(scope="module")
def mesh1():
    return shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def init(mesh1):
    return lm_step.init_state(CFG, TX, 0, mesh1)


@pytest.fixture(scope="module")
def model_parts(init):
    graphdef, state = init
    return graphdef, state["params"]


def reference_targets(batch, document_mask):
    """Rows fed to the model and (row, position, target) triples, built with plain Python loops.

    document_mask=True: every document on its own row (right-padded, positions from 0), i.e. no
    packing at all; False: the packed rows as they are, targets inside one document only."""
    tokens, seg = batch["tokens"], batch["segment_ids"]
    if document_mask:
        docs = [tokens[r][seg[r] == d] for r in range(len(tokens)) for d in sorted(set(seg[r].tolist()) - {0})]
        width = max(len(d) for d in docs)
        rows = np.zeros((len(docs), width), np.int32)
        triples = []
        for i, doc in enumerate(docs):
            rows[i, :len(doc)] = doc
            triples += [(i, j, doc[j + 1]) for j in range(len(doc) - 1)]
        return rows, np.array(triples)
    triples = [(r, i, tokens[r, i + 1]) for r in range(tokens.shape[0]) for i in range(tokens.shape[1] - 1)
               if seg[r, i + 1] != 0 and seg[r, i + 1] == seg[r, i]]
    return tokens, np.array(triples)


def reference_loss(params, graphdef, rows, triples):
    logp = jax.nn.log_softmax(nnx.merge(graphdef, params)(rows), axis=-1)
    return -logp[triples[:, 0], triples[:, 1], triples[:, 2]].mean()


@pytest.mark.parametrize("document_mask", [False, True])
def test_loss_and_grad_match_reference(model_parts, document_mask):
    graphdef, params = model_parts
    batch = make_batch(1)
    vg = jax.jit(jax.value_and_grad(lm_step.lm_loss, has_aux=True), static_argnums=(1, 3))
    (loss, aux), grads = vg(params, graphdef, batch, document_mask)
    rows, triples = reference_targets(batch, document_mask)
    ref, ref_grads = jax.jit(jax.value_and_grad(reference_loss), static_argnums=1)(params, graphdef, rows, triples)
    assert int(aux["tokens"]) == len(triples) > 0
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
    for g, rg in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(rg), atol=2e-6, rtol=1e-4)


def test_masking_excludes_pads_and_boundaries(model_parts):
    graphdef, params = model_parts
    tokens = np.arange(12, dtype=np.int32)[None] % V
    seg = np.array([[1, 1, 1, 1, 2, 2, 2, 3, 3, 0, 0, 0]], np.int32)
    batch = dict(tokens=tokens, segment_ids=seg)
    _, aux = lm_step.lm_loss(params, graphdef, batch)
    assert int(aux["tokens"]) == 3 + 2 + 1  # targets inside each document only
    # Tokens in the pad region never change the loss (causal attention, targets masked).
    changed = dict(tokens=tokens.copy(), segment_ids=seg)
    changed["tokens"][0, 9:] = 5
    np.testing.assert_allclose(float(lm_step.lm_loss(params, graphdef, changed)[0]),
                               float(lm_step.lm_loss(params, graphdef, batch)[0]), rtol=1e-6)
    # An all-pad batch: zero tokens, finite zero loss.
    empty = dict(tokens=tokens, segment_ids=np.zeros_like(seg))
    loss, aux = lm_step.lm_loss(params, graphdef, empty)
    assert int(aux["tokens"]) == 0 and float(loss) == 0.0


def test_eval_step_sums_per_example(model_parts, mesh1):
    graphdef, params = model_parts
    mesh = mesh1
    batch = make_batch(2)
    ev = lm_step.make_eval_step(graphdef, mesh=mesh, param_shardings=shd.state_shardings(params, mesh))
    out = ev(params, batch)
    assert out["loss_sum"].shape == (4,) and out["tokens"].shape == (4,)
    loss, aux = lm_step.lm_loss(params, graphdef, batch)
    np.testing.assert_allclose(float(out["loss_sum"].sum() / out["tokens"].sum()), float(loss), rtol=1e-6)
    assert int(out["tokens"].sum()) == int(aux["tokens"])


def test_schedule_values():
    s = optim.make_schedule(ocfg(lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=110))
    got = [float(s(i)) for i in (0, 5, 10, 60, 110, 500)]
    np.testing.assert_allclose(got, [0.0, 5e-4, 1e-3, (1e-3 + 1e-4) / 2, 1e-4, 1e-4], rtol=1e-5, atol=1e-9)
    q = 10 + 25  # a quarter of the cosine
    np.testing.assert_allclose(float(s(q)), 1e-4 + 0.9e-3 * 0.5 * (1 + math.cos(math.pi / 4)), rtol=1e-5)
    # warmup_frac: ceil(0.05 * 1000) = 50 steps, as HF's warmup_ratio.
    f = optim.make_schedule(ocfg(warmup_steps=0, warmup_frac=0.05, total_steps=1000))
    assert optim.warmup_steps(ocfg(warmup_steps=0, warmup_frac=0.05, total_steps=1000)) == 50
    np.testing.assert_allclose(float(f(25)), 5e-4, rtol=1e-5)
    c = optim.make_schedule(ocfg(schedule="constant", lr=1e-6, warmup_steps=0))
    assert float(c(0)) == float(c(1000)) == pytest.approx(1e-6)
    with pytest.raises(ConfigError, match="schedule"):
        optim.make_schedule(ocfg(schedule="linear"))


def test_clipping_scales_the_update():
    # b1 = b2 = 0 and a huge eps make Adam's update ~ lr * g / eps: linear in the (clipped) gradient.
    params = {"w": jnp.ones((3, 4))}
    grads = {"w": jnp.full((3, 4), 10.0 / math.sqrt(12))}  # global norm 10
    def update(clip):
        tx = optim.make_optimizer(ocfg(schedule="constant", warmup_steps=0, b1=0.0, b2=0.0, eps=1e6,
                                       weight_decay=0.0, grad_clip=clip))
        return tx.update(grads, tx.init(params), params)[0]["w"]
    ratio = np.asarray(update(1.0)) / np.asarray(update(0.0))
    np.testing.assert_allclose(ratio, 0.1, rtol=1e-4)


def test_weight_decay_on_matrices_only(model_parts):
    _, params = model_parts
    tx = optim.make_optimizer(ocfg(schedule="constant", warmup_steps=0, lr=1e-2, weight_decay=0.1))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates = jax.jit(lambda z, p: tx.update(z, tx.init(p), p)[0])(zero, params)
    flat_u = dict(jax.tree_util.tree_leaves_with_path(updates))
    for path, p in jax.tree_util.tree_leaves_with_path(params):
        expected = -1e-2 * 0.1 * np.asarray(p) if p.ndim >= 2 else np.zeros(p.shape)
        np.testing.assert_allclose(np.asarray(flat_u[path]), expected, atol=1e-9, err_msg=jax.tree_util.keystr(path))


def test_grad_accumulation_equals_big_batch(init, mesh1):
    graphdef, state0 = init
    batch = make_batch(3, b=4)  # rows carry different token counts: averaging must weight by tokens
    results = []
    for k in (1, 2):
        state = jax.tree.map(jnp.copy, state0)  # the step donates its input
        step = lm_step.make_lm_step(graphdef, TX, SCHED, mesh=mesh1, state_shardings=lm_step.shardings_of(state),
                                    grad_accum_steps=k)
        state, m1 = step(state, batch)
        state, m2 = step(state, batch)
        results.append((jax.device_get(state["params"]), jax.device_get(m1), jax.device_get(m2)))
    (p1, a1, b1), (p2, a2, b2) = results
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(a1[key], a2[key], rtol=1e-5)
        np.testing.assert_allclose(b1[key], b2[key], rtol=1e-5)
    assert int(a1["tokens"]) == int(a2["tokens"])
    assert float(a1["lr"]) == pytest.approx(1e-3)
    assert int(jax.device_get(state["step"])) == 2
    for x, y in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_allclose(x, y, atol=1e-5)  # Adam amplifies fp32 summation-order noise
    # the step really trains: second loss on the same batch is lower
    assert float(a1["loss"]) > float(b1["loss"])


def test_batch_not_divisible_by_accum_fails_before_compiling(mesh1):
    graphdef, abstract = lm_step.abstract_state(CFG, TX)
    step = lm_step.make_lm_step(graphdef, TX, SCHED, mesh=mesh1,
                                state_shardings=shd.state_shardings(abstract, mesh1), grad_accum_steps=3)
    with pytest.raises(ConfigError, match="batch=4 does not divide"):
        step.lower(abstract, make_batch(0, b=4))  # tracing only: nothing is compiled
