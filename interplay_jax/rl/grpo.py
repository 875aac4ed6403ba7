"""GRPO losses and the pure, jitted GRPO update step (docs/budgets.md "RL").

Shapes use suffixes: N rollouts (= prompts × n), T tokens of a row (prompt, response, padding:
right-aligned, so plain causal attention is exact and runs as flash attention), R response tokens
(the sampler's max_new_tokens), V vocab. Per-token quantities are *response-major*: ``logp_NxR[:, j]``
is log p(response token j | prompt, response tokens < j), and ``response_mask_NxR`` selects the ones
that are trained on; logits are computed only at those R positions (see :func:`response_logprobs`).

Pieces (all pure functions on arrays):
- :func:`group_advantages`: A_i = (r_i − mean_g) / (std_g + 1e-6) per group of n rollouts (unbiased std);
  ``std_normalize=False`` gives Dr.GRPO's A_i = r_i − mean_g.
- :func:`token_weights`: how per-token losses are aggregated ("token-mean", "seq-mean-token-mean",
  "dr_grpo") written as per-token weights that sum the loss exactly, so micro-batching is exact.
- :func:`policy_loss_terms`: PPO clipped ratio (ε) with dual clip c for negative advantages.
- :func:`kl_k3`: exp(ref − logp) − (ref − logp) − 1.
- :func:`grpo_loss_from_logprobs`: the whole objective from the policy's log-probs.
- :func:`make_grpo_step`: ``step(state, rollouts) -> (state, metrics)``: old log-probs from the sampler
  or the current params, then ``num_minibatches`` sequential optimizer updates in one ``lax.scan``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from interplay_jax.model.logprobs import token_logprobs
from interplay_jax.train.accum import accumulate_gradients, split_rows, unsplit_rows
from interplay_jax.train.sharding import traced_under

LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "dr_grpo")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """Numbers of the GRPO objective (defaults: the study's)."""

    clip_eps: float = 0.2            # PPO ratio clip ε (symmetric)
    dual_clip: float = 3.0           # dual clip c for negative advantages (<= 1 disables)
    kl_coef: float = 1e-3            # k3 KL to the frozen reference; 0 skips the reference forward
    entropy_coef: float = 0.0        # entropy bonus (subtracted from the loss)
    loss_agg: str = "token-mean"     # one of LOSS_AGGS
    dr_grpo_constant: float = 1024.0  # Dr.GRPO divides each sequence's token sum by this constant
    temperature: float = 1.0         # logits are divided by it before log-softmax (match the sampler)

    def __post_init__(self):
        if self.loss_agg not in LOSS_AGGS:
            raise ValueError(f"unknown loss_agg {self.loss_agg!r}; expected one of {', '.join(LOSS_AGGS)}")


# ------------------------------------------------------------------------------------------- advantages


def group_advantages(rewards_N, n: int, *, std_normalize: bool = True, eps: float = 1e-6):
    """Group-normalised advantages; rows ``g*n .. g*n+n-1`` are the n rollouts of prompt g.

    Works on numpy or jax arrays (returns the same kind). With n == 1 every advantage is 0.
    """
    xp = jnp if isinstance(rewards_N, jax.Array) else np
    r = xp.asarray(rewards_N, dtype=xp.float32)
    if r.shape[0] % n:
        raise ValueError(f"{r.shape[0]} rewards do not split into groups of n={n}")
    r_GxN = r.reshape(-1, n)
    mean = r_GxN.mean(axis=1, keepdims=True)
    adv = r_GxN - mean
    if n == 1:
        return xp.zeros_like(r)
    if std_normalize:
        std = xp.sqrt(((r_GxN - mean) ** 2).sum(axis=1, keepdims=True) / (n - 1))
        adv = adv / (std + eps)
    return adv.reshape(-1)


# ------------------------------------------------------------------------------------------ aggregation


def token_weights(response_mask_NxR, loss_agg: str = "token-mean", dr_grpo_constant: float = 1024.0):
    """Per-token weights w with loss = Σ w · per_token_loss, over one mini-batch.

    token-mean: 1 / (response tokens in the mini-batch); seq-mean-token-mean: 1 / (len_i · N);
    dr_grpo: 1 / (constant · N). N counts the rows that have a response token; padding rows
    (all-zero mask, used to keep shapes static) get weight 0 and do not count.
    """
    m = response_mask_NxR.astype(jnp.float32)
    n_seq = jnp.maximum(jnp.sum(m.sum(axis=1) > 0), 1)  # padding rows (no response) do not count
    if loss_agg == "token-mean":
        return m / jnp.maximum(m.sum(), 1.0)
    if loss_agg == "seq-mean-token-mean":
        return m / (jnp.maximum(m.sum(axis=1, keepdims=True), 1.0) * n_seq)
    if loss_agg == "dr_grpo":
        return m / (dr_grpo_constant * n_seq)
    raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {', '.join(LOSS_AGGS)}")


# ------------------------------------------------------------------------------------- per-token terms


def policy_loss_terms(logp, old_logp, adv, clip_eps: float = 0.2, dual_clip: float = 3.0):
    """Per-token PPO loss with dual clip. ``adv`` broadcasts against ``logp`` (e.g. [N, 1]).

    loss = max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)); for A < 0 it is further capped at −A·c (dual clip).
    Returns (loss, clipped, dual_clipped) with the two indicator arrays as float32.
    """
    ratio = jnp.exp(logp - old_logp)
    l1 = -adv * ratio
    l2 = -adv * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = jnp.maximum(l1, l2)
    clipped = (l2 > l1).astype(jnp.float32)
    if dual_clip > 1.0:
        l3 = -adv * dual_clip
        dual = jnp.logical_and(adv < 0, l3 < loss)
        loss = jnp.where(adv < 0, jnp.minimum(loss, l3), loss)
        dual_clipped = dual.astype(jnp.float32)
    else:
        dual_clipped = jnp.zeros_like(loss)
    return loss, clipped, dual_clipped


def kl_k3(logp, ref_logp):
    """k3 estimator of KL(π || π_ref) per token: exp(ref − logp) − (ref − logp) − 1 (>= 0)."""
    d = ref_logp - logp
    return jnp.exp(d) - d - 1.0


def grpo_loss_from_logprobs(logp_NxR, entropy_NxR, batch, weights_NxR, cfg: GRPOConfig):
    """The GRPO objective given the policy's log-probs; returns (loss, aux metrics dict).

    ``batch`` holds old_logprobs [N, R], advantages [N], response_mask [N, R] and, when
    ``cfg.kl_coef > 0``, ref_logprobs [N, R]. Metric sums are weighted by ``weights_NxR`` (so they add
    up exactly over micro-batches); the plain token counts are returned for token-averaged metrics.
    """
    mask = batch["response_mask"].astype(jnp.float32)
    adv = batch["advantages"].astype(jnp.float32)[:, None]
    pg, clipped, dual = policy_loss_terms(logp_NxR, batch["old_logprobs"], adv, cfg.clip_eps, cfg.dual_clip)
    pg_loss = jnp.sum(weights_NxR * pg)
    loss = pg_loss
    aux = {"pg_loss": pg_loss}
    if cfg.kl_coef > 0:
        kl = kl_k3(logp_NxR, batch["ref_logprobs"])
        kl_loss = jnp.sum(weights_NxR * kl)
        loss = loss + cfg.kl_coef * kl_loss
        aux["kl"] = kl_loss
        aux["kl_tokensum"] = jnp.sum(mask * kl)
    ratio = jnp.exp(logp_NxR - batch["old_logprobs"])
    ent_loss = jnp.sum(weights_NxR * entropy_NxR)
    if cfg.entropy_coef != 0:
        loss = loss - cfg.entropy_coef * ent_loss
    aux.update(
        entropy_tokensum=jnp.sum(mask * entropy_NxR),
        clipfrac_tokensum=jnp.sum(mask * clipped),
        dualclip_tokensum=jnp.sum(mask * dual),
        ratio_tokensum=jnp.sum(mask * ratio),
        ratio_dev_tokensum=jnp.sum(mask * jnp.abs(jax.lax.stop_gradient(ratio) - 1.0)),
        tokens=jnp.sum(mask),
    )
    aux["loss"] = loss
    return loss, aux


# ------------------------------------------------------------------------------------------ model glue


def update_lengths(max_len: int, n: int = 4, multiple: int = 128) -> tuple[int, ...]:
    """The few padded row lengths of the update (each compiles once): ``max_len`` split into ``n``
    steps, rounded up to a multiple of ``multiple`` (and never above ``max_len``)."""
    out = {min(max_len, -(-(max_len * k // n) // multiple) * multiple) for k in range(1, n + 1)}
    return tuple(sorted(out))


def assemble_rollouts(prompts, response_tokens_NxR, lengths_N, prompt_index_N, *, seq_len: int,
                      pad_id: int = 1, num_rows: int | None = None) -> dict:
    """Numpy rollout batch for :func:`make_grpo_step` from sampler output, RIGHT-aligned.

    Row r = prompt ``prompts[prompt_index_N[r]]``, then its first ``lengths_N[r]`` response tokens,
    then ``pad_id`` up to ``seq_len`` (positions 0..T-1, plain causal attention is exact: padding only
    follows the real tokens). Returns ``tokens`` [rows, seq_len], ``prompt_lens`` [rows] and
    ``response_mask`` [rows, R] (R = the sampler's max_new_tokens: response token j of row r is
    ``tokens[r, prompt_lens[r] + j]``). Rows beyond N (up to ``num_rows``) are padding (mask 0), so the
    step keeps one static shape when prompts were filtered out.
    """
    resp = np.asarray(response_tokens_NxR, np.int32)
    n, r = resp.shape
    rows = n if num_rows is None else num_rows
    if rows < n:
        raise ValueError(f"num_rows={rows} < {n} rollouts")
    tokens = np.full((rows, seq_len), pad_id, np.int32)
    prompt_lens = np.ones((rows,), np.int32)
    response = np.zeros((rows, r), np.int32)
    for i in range(n):
        p = list(prompts[int(prompt_index_N[i])])
        length = int(lengths_N[i])
        if len(p) + length > seq_len:
            raise ValueError(f"prompt of {len(p)} + response of {length} tokens exceed seq_len={seq_len}")
        tokens[i, :len(p)] = p
        tokens[i, len(p):len(p) + length] = resp[i, :length]
        prompt_lens[i] = len(p)
        response[i, :length] = 1
    return {"tokens": tokens, "prompt_lens": prompt_lens, "response_mask": response}


def response_logprobs(graphdef, params, batch, temperature: float = 1.0):
    """log p(response token j | everything before it) and the entropy of each predicting distribution,
    both [N, R] fp32, from one plain-causal forward of the right-aligned rows. Logits are computed
    only at the R positions that predict response tokens (the prompt's positions cost no logits)."""
    model = nnx.merge(graphdef, params)
    tokens_NxT = batch["tokens"]
    t, r = tokens_NxT.shape[1], batch["response_mask"].shape[1]
    x_NxTxD, _ = model.hidden_states(tokens_NxT)
    pred_NxR = jnp.clip(batch["prompt_lens"][:, None] - 1 + jnp.arange(r, dtype=jnp.int32)[None, :], 0, t - 1)
    h_NxRxD = jnp.take_along_axis(x_NxTxD, pred_NxR[..., None], axis=1)
    targets_NxR = jnp.take_along_axis(tokens_NxT, jnp.minimum(pred_NxR + 1, t - 1), axis=1)
    return token_logprobs(model.logits(h_NxRxD), targets_NxR, temperature=temperature, with_entropy=True)


def _logprobs(graphdef, params, batch, temperature, micro_batch_size):
    """Response log-probs of every row, ``micro_batch_size`` rows at a time (no gradient)."""
    batch = {k: batch[k] for k in ("tokens", "prompt_lens", "response_mask")}
    n = batch["tokens"].shape[0]
    mb = micro_batch_size or n
    if mb >= n:
        return response_logprobs(graphdef, params, batch, temperature)[0]

    def body(_, micro):
        return None, response_logprobs(graphdef, params, micro, temperature)[0]
    _, out = jax.lax.scan(body, None, split_rows(batch, n // mb))
    return unsplit_rows(out)


def make_logprob_fn(graphdef, *, temperature: float = 1.0, micro_batch_size: int | None = None,
                    mesh=None, param_shardings=None, batch_sharding=None) -> Callable:
    """Jitted ``logprobs(params, rollouts) -> logp_NxR`` (no gradient), ``micro_batch_size`` rows at a
    time (all at once when None): the frozen reference policy's log-probs."""

    def fn(params, rollouts):
        return _logprobs(graphdef, params, rollouts, temperature, micro_batch_size)

    if mesh is None:
        return jax.jit(fn)
    return jax.jit(traced_under(fn, mesh), in_shardings=(param_shardings, batch_sharding), out_shardings=batch_sharding)


def _get(state, name):
    return state[name] if isinstance(state, dict) else getattr(state, name)


def _replace(state, **kw):
    if isinstance(state, dict):
        return {**state, **kw}
    return state.replace(**kw)


def make_grpo_step(graphdef, tx: optax.GradientTransformation, cfg: GRPOConfig = GRPOConfig(), *,
                   num_minibatches: int = 1, micro_batch_size: int | None = None,
                   mesh=None, state_shardings=None, batch_sharding=None, donate: bool = True) -> Callable:
    """Build the jitted GRPO update ``step(state, rollouts) -> (state, metrics)``.

    ``state`` has ``step``, ``params`` (nnx.Param state of ``graphdef``) and ``opt_state`` (a dict or a
    struct with ``.replace``). ``rollouts`` (see :func:`assemble_rollouts`; N rows divisible by
    ``num_minibatches`` and, within a mini-batch, by ``micro_batch_size``):
      tokens [N, T] int32 — prompt, response, then padding (right-aligned);
      prompt_lens [N] int32; response_mask [N, R] — 1 on the response tokens that are trained on;
      advantages [N] float32;
      old_logprobs [N, R] float32 — optional: the sampler's log-probs of the rollouts; without it the
        step computes them with a forward pass of the current params first (ratio exactly 1 on the
        first mini-batch);
      ref_logprobs [N, R] float32 and ref_is_old [N] bool — when ``cfg.kl_coef > 0``; rows with
        ``ref_is_old`` (the first RL step, whose policy IS the reference) use the old log-probs as
        reference, so the reference forward can be skipped then.
    Mini-batch j takes rows j, j+k, j+2k, ... (k = num_minibatches; strided so a row-sharded batch
    stays sharded); advantages are computed before the step, so how groups fall into mini-batches does
    not change the objective. ``num_minibatches`` optimizer updates run in order in one ``lax.scan``;
    each mini-batch's gradient is accumulated over micro-batches exactly (the aggregation weights are
    computed over the whole mini-batch).
    Metrics: loss, pg_loss, kl, entropy, clip_frac, dual_clip_frac, ratio_mean (token-averaged over the
    step), first_ratio_dev (mean |ratio - 1| on the first mini-batch: 0 with recomputed old log-probs,
    the sampler-vs-forward deviation otherwise), grad_norm (mean over mini-batches), response_tokens.
    """
    def micro_loss(params, micro):
        logp_NxR, ent_NxR = response_logprobs(graphdef, params, micro, cfg.temperature)
        return grpo_loss_from_logprobs(logp_NxR, ent_NxR, micro, micro["weights"], cfg)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def micro_grads(params, micro):  # -> (aux metric sums, grads)
        (_, aux), grads = grad_fn(params, micro)
        return aux, grads

    def step(state, rollouts):
        params = _get(state, "params")
        batch = {k: rollouts[k] for k in ("tokens", "prompt_lens", "response_mask", "advantages")}
        if "old_logprobs" in rollouts:
            batch["old_logprobs"] = rollouts["old_logprobs"].astype(jnp.float32)
        else:
            batch["old_logprobs"] = jax.lax.stop_gradient(
                _logprobs(graphdef, params, batch, cfg.temperature, micro_batch_size))
        if cfg.kl_coef > 0:
            batch["ref_logprobs"] = jnp.where(rollouts["ref_is_old"][:, None], batch["old_logprobs"],
                                              rollouts["ref_logprobs"].astype(jnp.float32))
        minis = split_rows(batch, num_minibatches)
        minis["weights"] = jax.vmap(lambda m: token_weights(m, cfg.loss_agg, cfg.dr_grpo_constant))(
            minis["response_mask"])

        def update(carry, mini):
            params, opt_state = carry
            n = mini["tokens"].shape[0]
            k = n // micro_batch_size if micro_batch_size and micro_batch_size < n else 1
            aux, grads = accumulate_gradients(micro_grads, params, mini, k)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            aux["grad_norm"] = optax.tree.norm(grads)
            return (params, opt_state), aux

        (params, opt_state), auxs = jax.lax.scan(update, (params, _get(state, "opt_state")), minis)
        tokens = jnp.maximum(auxs["tokens"].sum(), 1.0)
        metrics = {
            "loss": auxs["loss"].mean(),
            "pg_loss": auxs["pg_loss"].mean(),
            "entropy": auxs["entropy_tokensum"].sum() / tokens,
            "clip_frac": auxs["clipfrac_tokensum"].sum() / tokens,
            "dual_clip_frac": auxs["dualclip_tokensum"].sum() / tokens,
            "ratio_mean": auxs["ratio_tokensum"].sum() / tokens,
            "first_ratio_dev": auxs["ratio_dev_tokensum"][0] / jnp.maximum(auxs["tokens"][0], 1.0),
            "grad_norm": auxs["grad_norm"].mean(),
            "response_tokens": auxs["tokens"].sum(),
        }
        if cfg.kl_coef > 0:
            metrics["kl"] = auxs["kl_tokensum"].sum() / tokens
        new_state = _replace(state, step=_get(state, "step") + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    if mesh is None:
        return jax.jit(step, donate_argnums=(0,) if donate else ())
    if batch_sharding is None:
        batch_sharding = NamedSharding(mesh, PartitionSpec(tuple(a for a in ("data", "fsdp") if a in mesh.shape)))
    return jax.jit(traced_under(step, mesh), in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())),
                   donate_argnums=(0,) if donate else ())
