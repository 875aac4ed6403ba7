"""Gradient accumulation over micro-batches: the one helper the LM step and the GRPO step share.

Rows are split *strided*: row r of an [N, ...] batch goes to micro-batch r mod k, so a batch whose
rows are sharded over devices stays sharded inside every micro-batch. Gradients (and any auxiliary
sums) of the micro-batches are added in order inside one ``lax.scan``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def split_rows(tree, k: int):
    """[N, ...] leaves -> [k, N/k, ...]; part j holds rows j, j+k, j+2k, ..."""
    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"{x.shape[0]} rows do not split into {k} parts")
        return x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)
    return jax.tree.map(split, tree)


def unsplit_rows(tree):
    """The inverse of :func:`split_rows`: [k, N/k, ...] -> [N, ...]."""
    return jax.tree.map(lambda x: x.swapaxes(0, 1).reshape((-1,) + x.shape[2:]), tree)


def accumulate_gradients(grad_fn: Callable, params, batch, k: int, *, batch_sharding=None, grad_sharding=None):
    """Sum ``grad_fn(params, micro) -> (aux, grads)`` over ``k`` micro-batches of ``batch``.

    Returns (summed aux, summed grads); ``aux`` is any pytree of arrays (summed leaf-wise). With
    ``k == 1`` this is one call on the whole batch. ``batch_sharding`` / ``grad_sharding``, when
    given, constrain each micro-batch and the running gradient sum (keeps FSDP layouts stable).
    """
    if k == 1:
        return grad_fn(params, batch)
    micro = split_rows(batch, k)
    aux_shape, _ = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], micro))

    def body(carry, mb):
        aux_acc, g_acc = carry
        if batch_sharding is not None:
            mb = jax.lax.with_sharding_constraint(mb, batch_sharding)
        aux, g = grad_fn(params, mb)
        g_acc = jax.tree.map(jnp.add, g_acc, g)
        if grad_sharding is not None:
            g_acc = jax.lax.with_sharding_constraint(g_acc, grad_sharding)
        return (jax.tree.map(jnp.add, aux_acc, aux), g_acc), None

    zeros_aux = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
    zeros_g = jax.tree.map(jnp.zeros_like, params)
    (aux, grads), _ = jax.lax.scan(body, (zeros_aux, zeros_g), micro)
    return aux, grads
