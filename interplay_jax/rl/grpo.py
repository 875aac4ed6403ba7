"""GRPO losses and the pure, jitted GRPO update step (docs/budgets.md "RL").

Shapes use suffixes: N rollouts (= prompts × n), T tokens (left-padded prompt + response), V vocab.
Per-token quantities are *aligned with the tokens*: ``logp_NxT[:, t]`` is log p(tokens[:, t] | tokens[:, <t])
(column 0 is 0 and never counted), so one ``response_mask_NxT`` selects the tokens that are trained on.

Pieces (all pure functions on arrays):
- :func:`group_advantages`: A_i = (r_i − mean_g) / (std_g + 1e-6) per group of n rollouts (unbiased std);
  ``std_normalize=False`` gives Dr.GRPO's A_i = r_i − mean_g.
- :func:`token_weights`: how per-token losses are aggregated ("token-mean", "seq-mean-token-mean",
  "dr_grpo") written as per-token weights that sum the loss exactly, so micro-batching is exact.
- :func:`policy_loss_terms`: PPO clipped ratio (ε) with dual clip c for negative advantages.
- :func:`kl_k3`: exp(ref − logp) − (ref − logp) − 1.
- :func:`grpo_loss`: the whole objective from logits.
- :func:`make_grpo_step`: ``step(state, rollouts) -> (state, metrics)``: old log-probs from the current
  params, then ``num_minibatches`` sequential optimizer updates in one ``lax.scan`` (one pass).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from interplay_jax.model.logprobs import token_logprobs
from interplay_jax.train.accum import accumulate_gradients, split_rows, unsplit_rows

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


def token_weights(response_mask_NxT, loss_agg: str = "token-mean", dr_grpo_constant: float = 1024.0):
    """Per-token weights w with loss = Σ w · per_token_loss, over one mini-batch.

    token-mean: 1 / (response tokens in the mini-batch); seq-mean-token-mean: 1 / (len_i · N);
    dr_grpo: 1 / (constant · N). N counts the rows that have a response token; padding rows
    (all-zero mask, used to keep shapes static) get weight 0 and do not count.
    """
    m = response_mask_NxT.astype(jnp.float32)
    n_seq = jnp.maximum(jnp.sum(m.sum(axis=1) > 0), 1)  # padding rows (no response) do not count
    if loss_agg == "token-mean":
        return m / jnp.maximum(m.sum(), 1.0)
    if loss_agg == "seq-mean-token-mean":
        return m / (jnp.maximum(m.sum(axis=1, keepdims=True), 1.0) * n_seq)
    if loss_agg == "dr_grpo":
        return m / (dr_grpo_constant * n_seq)
    raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {', '.join(LOSS_AGGS)}")


# ------------------------------------------------------------------------------------- per-token terms


def shifted_logprobs(logits_NxTxV, tokens_NxT, temperature: float = 1.0):
    """log p(tokens[t] | tokens[<t]) aligned with the tokens (column 0 = 0) and the entropy of the
    predicting distribution at each position (column 0 = 0). Both [N, T] float32."""
    logp_NxT1, entropy_NxT1 = token_logprobs(logits_NxTxV[:, :-1], tokens_NxT[:, 1:], temperature=temperature,
                                             with_entropy=True)
    pad_Nx1 = jnp.zeros((logp_NxT1.shape[0], 1), jnp.float32)
    return jnp.concatenate([pad_Nx1, logp_NxT1], axis=1), jnp.concatenate([pad_Nx1, entropy_NxT1], axis=1)


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


def grpo_loss_from_logprobs(logp_NxT, entropy_NxT, batch, weights_NxT, cfg: GRPOConfig):
    """The GRPO objective given the policy's log-probs; returns (loss, aux metrics dict).

    ``batch`` holds old_logprobs [N, T], advantages [N], response_mask [N, T] and, when
    ``cfg.kl_coef > 0``, ref_logprobs [N, T]. Metric sums are weighted by ``weights_NxT`` (so they add
    up exactly over micro-batches); the plain token counts are returned for token-averaged metrics.
    """
    mask = batch["response_mask"].astype(jnp.float32)
    adv = batch["advantages"].astype(jnp.float32)[:, None]
    pg, clipped, dual = policy_loss_terms(logp_NxT, batch["old_logprobs"], adv, cfg.clip_eps, cfg.dual_clip)
    pg_loss = jnp.sum(weights_NxT * pg)
    loss = pg_loss
    aux = {"pg_loss": pg_loss}
    if cfg.kl_coef > 0:
        kl = kl_k3(logp_NxT, batch["ref_logprobs"])
        kl_loss = jnp.sum(weights_NxT * kl)
        loss = loss + cfg.kl_coef * kl_loss
        aux["kl"] = kl_loss
        aux["kl_tokensum"] = jnp.sum(mask * kl)
    ent_loss = jnp.sum(weights_NxT * entropy_NxT)
    if cfg.entropy_coef != 0:
        loss = loss - cfg.entropy_coef * ent_loss
    aux.update(
        entropy_tokensum=jnp.sum(mask * entropy_NxT),
        clipfrac_tokensum=jnp.sum(mask * clipped),
        dualclip_tokensum=jnp.sum(mask * dual),
        ratio_tokensum=jnp.sum(mask * jnp.exp(logp_NxT - batch["old_logprobs"])),
        tokens=jnp.sum(mask),
    )
    aux["loss"] = loss
    return loss, aux


# ------------------------------------------------------------------------------------------ model glue


def assemble_rollouts(prompts, response_tokens_NxR, lengths_N, prompt_index_N, *, prompt_len: int,
                      pad_id: int = 1, num_rows: int | None = None) -> dict:
    """Numpy rollout batch for :func:`make_grpo_step` from sampler output.

    Row r = prompt ``prompts[prompt_index_N[r]]`` left-padded to ``prompt_len`` followed by its first
    ``lengths_N[r]`` response tokens (right-padded to R). Returns tokens, valid_mask, response_mask
    ([num_rows, prompt_len + R]); rows beyond N (up to ``num_rows``) are all padding (masks 0), so the
    step keeps one static shape when prompts were filtered out.
    """
    resp = np.asarray(response_tokens_NxR, np.int32)
    n, r = resp.shape
    rows = n if num_rows is None else num_rows
    if rows < n:
        raise ValueError(f"num_rows={rows} < {n} rollouts")
    tokens = np.full((rows, prompt_len + r), pad_id, np.int32)
    valid = np.zeros((rows, prompt_len + r), np.int32)
    response = np.zeros((rows, prompt_len + r), np.int32)
    for i in range(n):
        p = list(prompts[int(prompt_index_N[i])])
        if len(p) > prompt_len:
            raise ValueError(f"prompt of {len(p)} tokens exceeds prompt_len={prompt_len}")
        length = int(lengths_N[i])
        tokens[i, prompt_len - len(p):prompt_len] = p
        tokens[i, prompt_len:prompt_len + length] = resp[i, :length]
        valid[i, prompt_len - len(p):prompt_len + length] = 1
        response[i, prompt_len:prompt_len + length] = 1
    return {"tokens": tokens, "valid_mask": valid, "response_mask": response}


def positions_and_segments(valid_NxT):
    """Positions counted from each row's first real token (left padding) and segment ids
    (1 = real token, 0 = padding), the inputs the model and sampler use for left-padded rows."""
    v = valid_NxT.astype(jnp.int32)
    positions = jnp.maximum(jnp.cumsum(v, axis=1) - 1, 0)
    return positions, v


def _forward_logprobs(graphdef, params, batch, temperature):
    model = nnx.merge(graphdef, params)
    positions_NxT, segments_NxT = positions_and_segments(batch["valid_mask"])
    logits_NxTxV = model(batch["tokens"], positions_BxT=positions_NxT, segment_ids_BxT=segments_NxT)
    return shifted_logprobs(logits_NxTxV, batch["tokens"], temperature)


def _logprobs(graphdef, params, tokens_NxT, valid_NxT, temperature, micro_batch_size):
    batch = {"tokens": tokens_NxT, "valid_mask": valid_NxT}
    n = tokens_NxT.shape[0]
    mb = micro_batch_size or n
    if mb >= n:
        return _forward_logprobs(graphdef, params, batch, temperature)[0]

    def body(_, micro):
        return None, _forward_logprobs(graphdef, params, micro, temperature)[0]
    _, out = jax.lax.scan(body, None, split_rows(batch, n // mb))
    return unsplit_rows(out)


def make_logprob_fn(graphdef, *, temperature: float = 1.0, micro_batch_size: int | None = None,
                    mesh=None, param_shardings=None, batch_sharding=None) -> Callable:
    """Jitted ``logprobs(params, tokens_NxT, valid_NxT) -> logp_NxT`` (no gradient; aligned with the
    tokens), run over micro-batches of ``micro_batch_size`` rows (all rows at once when None).
    Used for the frozen reference policy's log-probs."""

    def fn(params, tokens, valid):
        return _logprobs(graphdef, params, tokens, valid, temperature, micro_batch_size)

    if mesh is None:
        return jax.jit(fn)
    return jax.jit(fn, in_shardings=(param_shardings, batch_sharding, batch_sharding),
                   out_shardings=batch_sharding)


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
    struct with ``.replace``). ``rollouts`` is a dict of arrays with N rows (N divisible by
    ``num_minibatches`` and, within a mini-batch, by ``micro_batch_size``):
      tokens [N, T] int32 — left-padded prompt + response (padding after the response is fine);
      valid_mask [N, T] — 1 on real tokens (prompt and response), 0 on padding;
      response_mask [N, T] — 1 on the generated tokens that are trained on;
      advantages [N] float32;
      ref_logprobs [N, T] float32 — required when ``cfg.kl_coef > 0`` (see :func:`make_logprob_fn`).
    Mini-batch j takes rows j, j+k, j+2k, ... (k = num_minibatches; strided so a row-sharded batch stays
    sharded); advantages are computed before the step, so how groups fall into mini-batches does not
    change the objective.

    Old log-probs come from a forward pass with the current params at the start of the step (so the
    ratio is 1 on the first mini-batch), then ``num_minibatches`` optimizer updates run in order in one
    ``lax.scan``. Each mini-batch may be split into micro-batches whose gradients are summed exactly
    (the aggregation weights are computed over the whole mini-batch).
    Metrics: loss, pg_loss, kl, entropy, clip_frac, dual_clip_frac, ratio_mean (token-averaged over the
    step), grad_norm (mean over mini-batches), response_tokens.
    """
    def micro_loss(params, micro):
        logp_NxT, ent_NxT = _forward_logprobs(graphdef, params, micro, cfg.temperature)
        return grpo_loss_from_logprobs(logp_NxT, ent_NxT, micro, micro["weights"], cfg)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def micro_grads(params, micro):  # -> (aux metric sums, grads)
        (_, aux), grads = grad_fn(params, micro)
        return aux, grads

    def step(state, rollouts):
        params = _get(state, "params")
        batch = {k: rollouts[k] for k in ("tokens", "valid_mask", "response_mask", "advantages")}
        if cfg.kl_coef > 0:
            batch["ref_logprobs"] = rollouts["ref_logprobs"].astype(jnp.float32)
        batch["old_logprobs"] = jax.lax.stop_gradient(_logprobs(
            graphdef, params, batch["tokens"], batch["valid_mask"], cfg.temperature, micro_batch_size))
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
    return jax.jit(step, in_shardings=(state_shardings, batch_sharding),
                   out_shardings=(state_shardings, NamedSharding(mesh, PartitionSpec())),
                   donate_argnums=(0,) if donate else ())
