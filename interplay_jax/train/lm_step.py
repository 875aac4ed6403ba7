"""Pure, sharded next-token training and eval steps (pre-training and mid-training).

Train state: a plain dict pytree ``{"step": int32 [], "params": nnx.State (Params only),
"opt_state": optax state}``; the model's structure lives in a separate static ``graphdef`` and is
rebuilt inside the jitted function with ``nnx.merge`` (functional split/merge: no NNX in-place
mutation crosses the jit boundary).

Batch: ``{"tokens": int32 [B, T], "segment_ids": int32 [B, T] (0 = pad, documents 1.. within a
row), "positions": int32 [B, T] (optional)}``. Targets are ``tokens[:, 1:]``; a target counts iff
``segment_ids[:, 1:] != 0`` and ``segment_ids[:, 1:] == segment_ids[:, :-1]`` (pads and the first
token of the next packed document are excluded). ``document_mask=False`` is the original's plain
causal attention over the packed row with positions 0..T-1 (batch positions unused);
``document_mask=True`` passes segment ids (attention within a document) and the batch positions
(if absent the model restarts positions at each document).

Loss: mean token cross-entropy over counted targets of the whole (global) batch. With
``grad_accum_steps = k`` the batch is split into k micro-batches (interplay_jax.train.accum: row j goes
to micro-batch j mod k, so every device keeps its share); summed gradients are divided by the total
token count, i.e. exactly the gradient of the big batch's mean loss.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from interplay_jax.errors import ConfigError
from interplay_jax.model.qwen2 import Qwen2
from interplay_jax.train import sharding as shd
from interplay_jax.train.accum import accumulate_gradients


# ------------------------------------------------------------------------------------------ state


def _build(model_cfg, tx, seed):
    model = Qwen2(model_cfg, rngs=nnx.Rngs(params=seed))
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def abstract_state(model_cfg, tx):
    """(graphdef, state of ShapeDtypeStructs): shapes only, no memory."""
    box = {}

    def init():
        graphdef, state = _build(model_cfg, tx, 0)
        box["graphdef"] = graphdef
        return state

    abstract = jax.eval_shape(init)
    return box["graphdef"], abstract


def init_state(model_cfg, tx, seed: int, mesh):
    """(graphdef, state) with every parameter and optimizer moment created already sharded."""
    shd.check_divisibility(model_cfg, mesh)
    graphdef, abstract = abstract_state(model_cfg, tx)
    shardings = shd.state_shardings(abstract, mesh)
    state = jax.jit(lambda: _build(model_cfg, tx, seed)[1], out_shardings=shardings)()
    return graphdef, state


def shardings_of(state):
    """The sharding of every leaf of a (concrete) state: what make_lm_step wants."""
    return jax.tree.map(lambda x: x.sharding, state)


# ------------------------------------------------------------------------------------------ loss


def token_nll(params, graphdef, batch, document_mask: bool = False):
    """(nll [B, T-1] fp32 with uncounted targets zeroed, counted mask [B, T-1] bool)."""
    tokens_BxT = jnp.asarray(batch["tokens"], jnp.int32)
    seg_BxT = jnp.asarray(batch["segment_ids"], jnp.int32)
    model = nnx.merge(graphdef, params)
    if document_mask:
        x_BxTxD, _ = model.hidden_states(tokens_BxT, positions_BxT=batch.get("positions"), segment_ids_BxT=seg_BxT)
    else:
        x_BxTxD, _ = model.hidden_states(tokens_BxT)
    # The last position predicts nothing: drop it before the vocabulary projection, not after (no
    # sliced copy of the [B, T, V] logits, the largest activation, and no padded gradient for it).
    logits_BxT1xV = model.logits(x_BxTxD[:, :-1])
    counted_BxT1 = (seg_BxT[:, 1:] != 0) & (seg_BxT[:, 1:] == seg_BxT[:, :-1])
    nll_BxT1 = optax.softmax_cross_entropy_with_integer_labels(logits_BxT1xV.astype(jnp.float32), tokens_BxT[:, 1:])
    return jnp.where(counted_BxT1, nll_BxT1, 0.0), counted_BxT1


def lm_loss(params, graphdef, batch, document_mask: bool = False):
    """(mean next-token loss, {"loss_sum": [], "tokens": []}) over the counted targets."""
    nll, counted = token_nll(params, graphdef, batch, document_mask)
    total, count = nll.sum(), counted.sum(dtype=jnp.int32)
    return total / jnp.maximum(count, 1).astype(jnp.float32), dict(loss_sum=total, tokens=count)


def _sum_loss(params, graphdef, batch, document_mask):
    nll, counted = token_nll(params, graphdef, batch, document_mask)
    return nll.sum(), counted.sum(dtype=jnp.int32)


# ------------------------------------------------------------------------------------------ steps


def make_lm_step(graphdef, tx, schedule, *, mesh, state_shardings, grad_accum_steps: int = 1,
                 document_mask: bool = False):
    """``step(state, batch) -> (state, metrics)``, jitted once (state donated).

    metrics (replicated jnp scalars): loss (mean over target tokens), lr (used by this update),
    grad_norm (global, before clipping), tokens (target-token count).
    """
    k = int(grad_accum_steps)
    if k < 1:
        raise ConfigError(f"grad_accum_steps={grad_accum_steps} must be >= 1")
    bsh = shd.batch_sharding(mesh)
    dp = shd.batch_size_multiple(mesh)
    grad_fn = jax.value_and_grad(_sum_loss, has_aux=True)

    def micro_grads(params, micro):  # -> ((loss_sum, count), grads)
        return grad_fn(params, graphdef, micro, document_mask)

    def step(state, batch):
        params = state["params"]
        b = batch["tokens"].shape[0]
        if b % (dp * k):  # trace-time check (Python), before anything is compiled
            raise ConfigError(f"batch={b} does not divide by mesh data x fsdp={dp} x grad_accum_steps={k}")
        (loss_sum, count), grad_sum = accumulate_gradients(micro_grads, params, batch, k, batch_sharding=bsh,
                                                           grad_sharding=state_shardings["params"])
        denom = jnp.maximum(count, 1).astype(jnp.float32)
        grads = jax.tree.map(lambda g: g / denom, grad_sum)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = dict(step=state["step"] + 1, params=optax.apply_updates(params, updates),
                         opt_state=opt_state)
        metrics = dict(loss=loss_sum / denom, lr=jnp.asarray(schedule(state["step"]), jnp.float32),
                       grad_norm=optax.tree.norm(grads), tokens=count)
        return new_state, metrics

    return jax.jit(shd.traced_under(step, mesh), in_shardings=(state_shardings, bsh),
                   out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=0)


def make_eval_step(graphdef, *, mesh, param_shardings, document_mask: bool = False):
    """``eval_step(params, batch) -> {"loss_sum": [B], "tokens": [B]}`` (fp32 / int32, replicated).

    Per-example sums so a caller can bucket held-out loss by op (mean = sum(loss_sum)/sum(tokens)).
    """
    def evaluate(params, batch):
        nll, counted = token_nll(params, graphdef, batch, document_mask)
        return dict(loss_sum=nll.sum(axis=1), tokens=counted.sum(axis=1, dtype=jnp.int32))

    return jax.jit(shd.traced_under(evaluate, mesh), in_shardings=(param_shardings, shd.batch_sharding(mesh)),
                   out_shardings=shd.replicated(mesh))
