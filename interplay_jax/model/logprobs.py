"""Token log-probabilities from logits: the one log-softmax-and-gather of the codebase.

Used by the sampler (the log-probability of each sampled token), the GRPO update (policy, old and
reference log-probs) and evaluation (gold-solution NLL).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs(logits_NxTxV, targets_NxT, *, temperature: float = 1.0, with_entropy: bool = False):
    """log p(targets[n, t]) under softmax(logits[n, t] / temperature), fp32 [N, T].

    With ``with_entropy=True`` returns (logp_NxT, entropy_NxT), the entropy of each predicting
    distribution. Computed as ``logit[target] - logsumexp(logits)`` in fp32.
    """
    logits_NxTxV = logits_NxTxV.astype(jnp.float32)
    if temperature != 1.0:
        logits_NxTxV = logits_NxTxV / temperature
    logz_NxT = jax.nn.logsumexp(logits_NxTxV, axis=-1)
    picked_NxT = jnp.take_along_axis(logits_NxTxV, targets_NxT[..., None], axis=-1)[..., 0]
    logp_NxT = picked_NxT - logz_NxT
    if not with_entropy:
        return logp_NxT
    probs_NxTxV = jax.nn.softmax(logits_NxTxV, axis=-1)
    entropy_NxT = logz_NxT - jnp.sum(probs_NxTxV * logits_NxTxV, axis=-1)
    return logp_NxT, entropy_NxT
