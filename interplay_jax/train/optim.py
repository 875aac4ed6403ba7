"""Optimizer and learning-rate schedule (the study's AdamW + warmup/cosine; constant for RL).

``make_schedule(ocfg)``: linear warmup from 0 to ``lr`` over the warmup steps, then cosine decay to
``min_lr`` at ``total_steps`` (held there afterwards); or ``"constant"`` (``lr`` throughout, after the
optional warmup). Same curve as HF ``get_cosine_with_min_lr_schedule_with_warmup`` used by the
original LLaMA-Factory runs (its first update also runs at lr 0 when warmup > 0).

``make_optimizer(ocfg)``: global-norm clip (``grad_clip``; 0/None = off) then AdamW
(``b1, b2, eps, weight_decay``). Weight decay applies to parameters with ndim >= 2 (embedding and
projection matrices) and not to biases or norm scales: exactly what the HF Trainer does for this
model (it excludes "bias" and norm weights). Gradient accumulation is NOT an optax wrapper: the
compiled step (``lm_step.make_lm_step``) averages microbatch gradients itself, so every call of the
step is one whole optimizer update.

``ocfg`` is an ml_collections ConfigDict or any attribute object with fields ``lr, min_lr,
warmup_steps | warmup_frac, total_steps, schedule, b1, b2, eps, weight_decay, grad_clip``.
"""
from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import optax

from interplay_jax.errors import ConfigError

SCHEDULES = ("cosine", "constant")


def _get(ocfg, name, default=None):
    try:
        value = getattr(ocfg, name)
    except (AttributeError, KeyError):
        return default
    return default if value is None else value


def warmup_steps(ocfg) -> int:
    """Warmup length in steps: ``warmup_steps`` if given (> 0), else ceil(warmup_frac * total_steps)."""
    steps = _get(ocfg, "warmup_steps", 0)
    if steps:
        return int(steps)
    frac = float(_get(ocfg, "warmup_frac", 0.0))
    if not 0.0 <= frac < 1.0:
        raise ConfigError(f"optimizer warmup_frac={frac} must be in [0, 1)")
    return int(math.ceil(frac * int(_get(ocfg, "total_steps", 0))))


def make_schedule(ocfg) -> optax.Schedule:
    """step -> learning rate (jnp float32); pure, usable inside jit."""
    kind = _get(ocfg, "schedule", "cosine")
    if kind not in SCHEDULES:
        raise ConfigError(f"optimizer schedule={kind!r}; expected one of {', '.join(SCHEDULES)}")
    peak = float(ocfg.lr)
    floor = float(_get(ocfg, "min_lr", 0.0))
    total = int(_get(ocfg, "total_steps", 0))
    warm = warmup_steps(ocfg)
    if kind == "cosine" and total <= warm:
        raise ConfigError(f"optimizer total_steps={total} must exceed warmup steps={warm} for a cosine schedule")

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm_lr = peak * step / max(warm, 1)
        if kind == "constant":
            after = jnp.float32(peak)
        else:
            progress = jnp.clip((step - warm) / (total - warm), 0.0, 1.0)
            after = floor + (peak - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warm, warm_lr, after).astype(jnp.float32)

    return schedule


def decay_mask(params):
    """True for leaves that get weight decay: matrices (ndim >= 2), not biases or norm scales."""
    return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(ocfg, schedule: optax.Schedule | None = None) -> optax.GradientTransformation:
    """clip_by_global_norm(grad_clip) -> AdamW(schedule, b1, b2, eps, weight_decay on matrices)."""
    schedule = schedule or make_schedule(ocfg)
    parts = []
    clip = float(_get(ocfg, "grad_clip", 0.0))
    if clip > 0:
        parts.append(optax.clip_by_global_norm(clip))
    parts.append(optax.adamw(
        learning_rate=schedule,
        b1=float(_get(ocfg, "b1", 0.9)),
        b2=float(_get(ocfg, "b2", 0.999)),
        eps=float(_get(ocfg, "eps", 1e-8)),
        weight_decay=float(_get(ocfg, "weight_decay", 0.0)),
        mask=decay_mask,
    ))
    return optax.chain(*parts)


def optimizer_for(ocfg, total_steps: int) -> tuple[optax.Schedule, optax.GradientTransformation]:
    """(schedule, optimizer) of a config's ``optimizer`` block for a run of ``total_steps`` steps."""
    fields = ocfg.to_dict() if hasattr(ocfg, "to_dict") else dict(ocfg)
    o = types.SimpleNamespace(**{**fields, "total_steps": int(total_steps)})
    schedule = make_schedule(o)
    return schedule, make_optimizer(o, schedule)
