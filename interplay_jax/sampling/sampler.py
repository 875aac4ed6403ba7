"""KV-cache sampling: a jitted prefill + ``lax.while_loop`` decode with static shapes.

Used by RL (GRPO rollouts) and evaluation (n samples per prompt).

* Prompts are LEFT-padded to a length bucket (powers of two by default, so a run compiles a few
  times, not per batch); the number of prompts is padded to a power of two as well (padding rows
  start ``done`` and are dropped from the result).
* Each prompt is tiled ``n`` times; row ``r`` of the result belongs to prompt ``r // n``.
* Decoding: temperature, top-k, top-p (nucleus), or greedy (``temperature=0``). A row stops after
  emitting any id of ``stop_ids`` (EOS, ``</answer>``...); the stop token is kept and counted in
  ``lengths``. A row that never stops is cut at ``max_new_tokens`` (``done`` stays False).
* ``logprobs[r, t]`` is the log-softmax of the RAW logits (temperature 1, no top-k/top-p) at the
  sampled token, i.e. the log-probability under the sampling-time policy as GRPO's "old" policy
  uses it (the study samples RL rollouts at T = 1, top-p 1, where both coincide). Positions after
  the end hold ``pad_id`` and logprob 0.
* The RNG key is an argument: decode step ``t`` uses ``fold_in(key, t)``, so a resumed RL run that
  derives the key from its step samples the same rollouts.

The model contract (interplay_jax.model.qwen2): ``model.with_cache(tokens, cache, segment_ids_BxT=valid,
cache_index=0)`` prefills a left-padded chunk (segment id 0 = pad) and ``model.with_cache(tok_Bx1,
cache)`` decodes one token; both return (fp32 logits, new cache). The prefill runs on a
prompt-sized cache that is then padded by ``max_new_tokens`` slots.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from interplay_jax.model.logprobs import token_logprobs
from interplay_jax.model.qwen2 import init_cache
from interplay_jax.sampling.padding import DEFAULT_BUCKETS, bucket_length, next_pow2, pad

_SHARED_JIT: dict = {}  # (graphdef, cfg, cache dtype) -> {settings: jitted fn}, shared by Samplers
_TRACES: dict = {}      # (shared key, settings) -> times traced (compiled) so far


@dataclasses.dataclass
class SampleResult:
    tokens: np.ndarray  # [R, max_new_tokens] int32, pad_id after the end; R = len(prompts) * n
    lengths: np.ndarray  # [R] int32, generated tokens including the stop token
    logprobs: np.ndarray  # [R, max_new_tokens] float32, raw-logit (T=1) logprob of each sampled token
    done: np.ndarray  # [R] bool, True iff the row emitted a stop id (False = cut at max_new_tokens)
    prompt_index: np.ndarray  # [R] int32, index into the prompts passed to sample()

    def completions(self) -> list[list[int]]:
        """Generated ids per row, without padding (stop token included)."""
        return [self.tokens[r, : self.lengths[r]].tolist() for r in range(len(self.lengths))]

    @staticmethod
    def concat(parts: Sequence["SampleResult"]) -> "SampleResult":
        cat = lambda name: np.concatenate([getattr(r, name) for r in parts])  # noqa: E731
        return SampleResult(cat("tokens"), cat("lengths"), cat("logprobs"), cat("done"), cat("prompt_index"))


@struct.dataclass
class DecodeState:
    """The ``lax.while_loop`` carry of the decode (B = prompts x n rows, R = max_new_tokens)."""

    step: jax.Array            # []             int32, next column of tokens / logprobs to write
    logits_BxV: jax.Array      # [B, V]         fp32, logits predicting each row's next token
    cache: dict                # KV cache: k/v L x [B, S, K, Dh], valid [B, S], pos [B], index []
    tokens_BxR: jax.Array      # [B, R]         int32, sampled tokens (pad_id after a row's end)
    logprobs_BxR: jax.Array    # [B, R]         fp32, raw-logit logprob of each sampled token
    done_B: jax.Array          # [B]            bool, the row emitted a stop id
    lengths_B: jax.Array       # [B]            int32, tokens generated (stop token included)


def filter_logits(logits_BxV, *, top_k: int = 0, top_p: float = 1.0):
    """Mask (to -inf) tokens outside the top-k and outside the smallest top-p nucleus.

    Ties at the top-k threshold are all kept. The nucleus always keeps the most likely token.
    """
    neg = jnp.finfo(logits_BxV.dtype).min
    if top_k and top_k < logits_BxV.shape[-1]:
        kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
        logits_BxV = jnp.where(logits_BxV < kth_Bx1, neg, logits_BxV)
    if top_p < 1.0:
        sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
        probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
        cum_before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # mass strictly before each token
        keep_BxV = cum_before_BxV < top_p  # keeps the token that crosses top_p, and always the first
        n_keep_Bx1 = jnp.maximum(jnp.sum(keep_BxV, axis=-1, keepdims=True), 1)
        thresh_Bx1 = jnp.take_along_axis(sorted_BxV, n_keep_Bx1 - 1, axis=-1)
        logits_BxV = jnp.where(logits_BxV < thresh_Bx1, neg, logits_BxV)
    return logits_BxV


def sample_token(logits_BxV, key, *, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """One token per row from fp32 logits; temperature 0 = greedy (argmax)."""
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    scaled_BxV = filter_logits(logits_BxV / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(key, scaled_BxV, axis=-1).astype(jnp.int32)


def _prefill(model, cfg, cache_dtype, tokens_PxL, valid_PxL, n: int, max_new_tokens: int):
    """Prefill the prompts once on a prompt-sized cache, grow it by ``max_new_tokens`` slots and tile
    every row ``n`` times. Returns (logits_BxV of the last prompt position, cache), B = P * n."""
    num, length = tokens_PxL.shape
    cache = init_cache(cfg, num, length, cache_dtype)
    logits_PxLxV, cache = model.with_cache(tokens_PxL, cache, segment_ids_BxT=valid_PxL.astype(jnp.int32),
                                           cache_index=0)
    grow = lambda a: jnp.pad(a, [(0, 0), (0, max_new_tokens)] + [(0, 0)] * (a.ndim - 2))  # noqa: E731
    cache = dict(cache, k=tuple(map(grow, cache["k"])), v=tuple(map(grow, cache["v"])), valid=grow(cache["valid"]))
    logits_PxV = logits_PxLxV[:, -1]
    if n > 1:
        rep = lambda a: jnp.repeat(a, n, axis=0)  # noqa: E731
        logits_PxV = rep(logits_PxV)
        cache = dict(cache, k=tuple(map(rep, cache["k"])), v=tuple(map(rep, cache["v"])), valid=rep(cache["valid"]),
                     pos=rep(cache["pos"]))
    return logits_PxV.astype(jnp.float32), cache


def _generate(graphdef, cfg, cache_dtype, on_trace, params, tokens_PxL, valid_PxL, done0_P, key, *, n,
              max_new_tokens, temperature, top_k, top_p, stop_ids, pad_id):
    """The jitted body: prefill, then decode until every row is done or ``max_new_tokens`` are out."""
    on_trace()
    model = nnx.merge(graphdef, params)
    logits_BxV, cache = _prefill(model, cfg, cache_dtype, tokens_PxL, valid_PxL, n, max_new_tokens)
    b = logits_BxV.shape[0]
    stop_S = jnp.asarray(stop_ids, jnp.int32)

    def cond(s: DecodeState):
        return (s.step < max_new_tokens) & ~jnp.all(s.done_B)

    def body(s: DecodeState):
        tok_B = sample_token(s.logits_BxV, jax.random.fold_in(key, s.step), temperature=temperature, top_k=top_k,
                             top_p=top_p)
        lp_B = token_logprobs(s.logits_BxV[:, None], tok_B[:, None])[:, 0]
        tok_B = jnp.where(s.done_B, pad_id, tok_B)
        lp_B = jnp.where(s.done_B, 0.0, lp_B)
        logits_Bx1xV, cache = model.with_cache(tok_B[:, None], s.cache)
        return DecodeState(
            step=s.step + 1, logits_BxV=logits_Bx1xV[:, -1].astype(jnp.float32), cache=cache,
            tokens_BxR=jax.lax.dynamic_update_slice(s.tokens_BxR, tok_B[:, None], (0, s.step)),
            logprobs_BxR=jax.lax.dynamic_update_slice(s.logprobs_BxR, lp_B[:, None], (0, s.step)),
            done_B=s.done_B | jnp.any(tok_B[:, None] == stop_S[None, :], axis=-1),
            lengths_B=s.lengths_B + (~s.done_B).astype(jnp.int32))

    done_B = jnp.repeat(done0_P, n, axis=0) if n > 1 else done0_P
    state = DecodeState(step=jnp.zeros((), jnp.int32), logits_BxV=logits_BxV, cache=cache,
                        tokens_BxR=jnp.full((b, max_new_tokens), pad_id, jnp.int32),
                        logprobs_BxR=jnp.zeros((b, max_new_tokens), jnp.float32), done_B=done_B,
                        lengths_B=jnp.zeros((b,), jnp.int32))
    s = jax.lax.while_loop(cond, body, state)
    return s.tokens_BxR, s.logprobs_BxR, s.done_B, s.lengths_B


class Sampler:
    """Batched KV-cache sampler for a Qwen2 given as ``graphdef`` (of ``nnx.split(model, nnx.Param)``)
    and its ModelConfig; the weights are an argument of :meth:`sample`, so one sampler serves every RL
    step. Samplers of the same graph and config share their compiled functions (e.g. evaluating
    several checkpoints compiles once). ``compile_count`` counts the compilations this sampler caused.
    """

    def __init__(self, graphdef, cfg, *, pad_id: int = 1, prompt_buckets: Sequence[int] = DEFAULT_BUCKETS,
                 cache_dtype=None):
        self.graphdef, self.cfg = graphdef, cfg
        self.pad_id = int(pad_id)
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        self._share_key = (graphdef, cfg, str(cache_dtype))
        self._cache_dtype = cache_dtype
        self._compiled: dict = _SHARED_JIT.setdefault(self._share_key, {})
        self.compile_count = 0

    def _fn(self, static: dict):
        key = tuple(sorted(static.items()))
        if key not in self._compiled:
            trace_key = (self._share_key, key)

            def on_trace():
                _TRACES[trace_key] = _TRACES.get(trace_key, 0) + 1

            self._compiled[key] = jax.jit(functools.partial(_generate, self.graphdef, self.cfg, self._cache_dtype,
                                                            on_trace, **static))
        return self._compiled[key], (self._share_key, key)

    def sample(self, params, prompts: Sequence[Sequence[int]], *, n: int = 1, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, key,
               stop_ids: Sequence[int] = (), pad_prompts_to_pow2: bool = True) -> SampleResult:
        """Sample ``n`` completions for each prompt (lists of token ids, non-empty)."""
        if not prompts:
            z = np.zeros((0, max_new_tokens))
            return SampleResult(z.astype(np.int32), np.zeros(0, np.int32), z.astype(np.float32),
                                np.zeros(0, bool), np.zeros(0, np.int32))
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        num = len(prompts)
        rows = next_pow2(num) if pad_prompts_to_pow2 else num
        length = bucket_length(max(len(p) for p in prompts), self.prompt_buckets)
        tokens_PxL, valid_PxL = pad(prompts, length, self.pad_id, side="left", rows=rows)
        done0_P = np.arange(rows) >= num
        static = dict(n=int(n), max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=int(top_k),
                      top_p=float(top_p), stop_ids=tuple(int(s) for s in stop_ids), pad_id=self.pad_id)
        fn, trace_key = self._fn(static)
        before = _TRACES.get(trace_key, 0)
        out = fn(params, tokens_PxL, valid_PxL, done0_P, key)
        self.compile_count += _TRACES.get(trace_key, 0) - before
        toks, lps, done, lengths = jax.device_get(out)
        r = num * n
        return SampleResult(np.asarray(toks[:r]), np.asarray(lengths[:r]), np.asarray(lps[:r]),
                            np.asarray(done[:r]), np.repeat(np.arange(num, dtype=np.int32), n))
