"""KV-cache sampling: a flash-attention prefill, then decode in chunks that drop finished rows.

Used by RL (GRPO rollouts) and evaluation (n samples per prompt).

* Prompts are RIGHT-padded to a length bucket L (so a run compiles a few times, not per batch) and
  prefilled with plain causal attention (flash attention on GPU: padding only follows the real
  tokens); the number of prompts is padded to a power of two (padding rows start ``done``). Each
  prompt is tiled ``n`` times; row ``r`` of the result belongs to prompt ``r // n``.
* Decoding runs in chunks of ``decode_chunk`` steps (0: one chunk of ``max_new_tokens``); between
  chunks the rows still running are gathered into the smallest power-of-two batch that holds them
  (at least ``min_rows``), so finished rows stop costing compute. Each batch size compiles once per
  run. Each step attends over the whole cache in one masked pass (``qwen2.cached_attention``); on the
  CPU path its softmax is shifted by each query's own score instead of the row max (``self_shift``,
  checked: a call whose log-probs come out non-finite is rerun with the exact softmax).
* Sampling: temperature, top-k, top-p (nucleus), or greedy (``temperature=0``); one uniform number
  per row and step by inverse CDF, keyed by ``fold_in(fold_in(key, step), row)``: a row's samples do
  not depend on which other rows share its batch (so chunking and compaction do not change them).
  A row stops after emitting any id of ``stop_ids`` (EOS, ``</answer>``...); the stop token is kept
  and counted in ``lengths``. A row that never stops is cut at ``max_new_tokens`` (``done`` False).
* ``logprobs[r, t]`` is the log-softmax of the RAW logits (temperature 1, no top-k/top-p) at the
  sampled token: the log-probability under the sampling-time policy as GRPO's "old" policy uses it
  (the study samples RL rollouts at T = 1, top-p 1, where both coincide). After the end: ``pad_id``
  and logprob 0.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from interplay_jax.model.logprobs import token_logprobs
from interplay_jax.sampling.padding import DEFAULT_BUCKETS, bucket_length, next_pow2, pad

DECODE_KERNELS = ("xla", "pallas")  # the decode step's attention (Sampler(decode_kernel=...))

_SHARED_JIT: dict = {}  # (graphdef, cfg, cache dtype) -> {(kind, static settings): jitted fn}
_TRACES: dict = {}      # (shared key, fn key) -> times traced (compiled) so far


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
    """The decode carry (B rows in the current batch, C steps per chunk)."""

    step: jax.Array            # []             int32, the next token's index in the response
    logits_BxV: jax.Array      # [B, V]         fp32, logits predicting each row's next token
    cache: dict                # KV cache: k/v L x [B, K, S, Dh], valid [B, S], pos [B], index []
    row_ids_B: jax.Array       # [B]            int32, each row's index in the full result (keys the RNG)
    tokens_BxC: jax.Array      # [B, C]         int32, this chunk's sampled tokens (pad_id after a row's end)
    logprobs_BxC: jax.Array    # [B, C]         fp32, raw-logit logprob of each sampled token
    done_B: jax.Array          # [B]            bool, the row emitted a stop id
    lengths_B: jax.Array       # [B]            int32, tokens generated so far (stop token included)


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


def sample_token(logits_BxV, keys_B, *, temperature: float, top_k: int = 0, top_p: float = 1.0):
    """One token per row from fp32 logits (``keys_B``: one PRNG key per row); temperature 0 = greedy.

    Inverse-CDF sampling: one uniform number per row instead of V Gumbel numbers (on CPU the
    threefry generator dominated the step)."""
    if temperature == 0.0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    u_B = jax.vmap(lambda k: jax.random.uniform(k, ()))(keys_B)
    return inverse_cdf(filter_logits(logits_BxV / temperature, top_k=top_k, top_p=top_p), u_B)


def inverse_cdf(logits_BxV, u_B):
    """The token of each row whose cumulative (unnormalised) probability first exceeds ``u`` times the
    row's total, for ``u`` in [0, 1): a draw from softmax(logits) per uniform number.

    In two levels: the vocabulary in ~sqrt(V) blocks, the cumulative sum of the block sums picks the
    block that holds the threshold, then a cumulative sum inside that block alone. A cumulative sum
    over the whole vocabulary cost ~3x more on CPU (620 vs 187 µs for 32 x 2,200; a whole tiny-model
    rollout call ran 1.03-1.07x faster)."""
    b, v = logits_BxV.shape
    size = -(-v // max(1, math.isqrt(v)))                  # tokens per block
    blocks = -(-v // size)
    x = logits_BxV.astype(jnp.float32)
    e_BxV = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    e_BxNxS = jnp.pad(e_BxV, ((0, 0), (0, blocks * size - v))).reshape(b, blocks, size)
    sums_BxN = e_BxNxS.sum(axis=-1)
    cum_BxN = jnp.cumsum(sums_BxN, axis=-1)
    t_B = u_B.astype(jnp.float32) * cum_BxN[:, -1]
    blk_B = jnp.minimum(jnp.sum(cum_BxN < t_B[:, None], axis=-1), blocks - 1)
    take = lambda a: jnp.take_along_axis(a, blk_B[:, None], axis=1)[:, 0]  # noqa: E731
    before_B = take(cum_BxN) - take(sums_BxN)
    row_BxS = jnp.take_along_axis(e_BxNxS, blk_B[:, None, None], axis=1)[:, 0]
    within_B = jnp.sum(before_B[:, None] + jnp.cumsum(row_BxS, axis=-1) < t_B[:, None], axis=-1)
    return jnp.minimum(blk_B * size + within_B, v - 1).astype(jnp.int32)


def _prefill(graphdef, cache_dtype, on_trace, params, tokens_PxL, lengths_P, done0_P, *, n, max_new_tokens,
             chunk):
    """Prefill the prompts once, tile every row ``n`` times; the first DecodeState (B = P * n)."""
    on_trace()
    model = nnx.merge(graphdef, params)
    length = tokens_PxL.shape[1]
    logits_PxV, cache = model.prefill(tokens_PxL, lengths_P, length + max_new_tokens, cache_dtype)
    rep = (lambda a: jnp.repeat(a, n, axis=0)) if n > 1 else (lambda a: a)  # noqa: E731
    cache = dict(cache, k=tuple(map(rep, cache["k"])), v=tuple(map(rep, cache["v"])), valid=rep(cache["valid"]),
                 pos=rep(cache["pos"]))
    b = tokens_PxL.shape[0] * n
    return DecodeState(step=jnp.zeros((), jnp.int32), logits_BxV=rep(logits_PxV), cache=cache,
                       row_ids_B=jnp.arange(b, dtype=jnp.int32), tokens_BxC=jnp.zeros((b, chunk), jnp.int32),
                       logprobs_BxC=jnp.zeros((b, chunk), jnp.float32), done_B=rep(done0_P),
                       lengths_B=jnp.zeros((b,), jnp.int32))


def _decode_chunk(graphdef, on_trace, params, state: DecodeState, key, *, max_new_tokens, temperature, top_k, top_p,
                  stop_ids, pad_id, self_shift, decode_kernel="xla"):
    """Up to C decode steps (fewer when every row is done or ``max_new_tokens`` is reached);
    ``self_shift``: the model's self-shifted decode softmax; ``decode_kernel``: its attention
    ("xla" or "pallas", see ``Qwen2.with_cache``)."""
    on_trace()
    model = nnx.merge(graphdef, params)
    stop_S = jnp.asarray(stop_ids, jnp.int32)
    start, chunk = state.step, state.tokens_BxC.shape[1]

    def cond(s: DecodeState):
        return (s.step < jnp.minimum(start + chunk, max_new_tokens)) & ~jnp.all(s.done_B)

    def body(s: DecodeState):
        keys_B = jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(key, s.step), r))(s.row_ids_B)
        tok_B = sample_token(s.logits_BxV, keys_B, temperature=temperature, top_k=top_k, top_p=top_p)
        lp_B = token_logprobs(s.logits_BxV[:, None], tok_B[:, None])[:, 0]
        tok_B = jnp.where(s.done_B, pad_id, tok_B)
        lp_B = jnp.where(s.done_B, 0.0, lp_B)
        logits_Bx1xV, cache = model.with_cache(tok_B[:, None], s.cache, self_shift=self_shift,
                                               decode_kernel=decode_kernel)
        col = s.step - start
        return s.replace(
            step=s.step + 1, logits_BxV=logits_Bx1xV[:, -1], cache=cache,
            tokens_BxC=jax.lax.dynamic_update_slice(s.tokens_BxC, tok_B[:, None], (0, col)),
            logprobs_BxC=jax.lax.dynamic_update_slice(s.logprobs_BxC, lp_B[:, None], (0, col)),
            done_B=s.done_B | jnp.any(tok_B[:, None] == stop_S[None, :], axis=-1),
            lengths_B=s.lengths_B + (~s.done_B).astype(jnp.int32))

    fresh = state.replace(tokens_BxC=jnp.full_like(state.tokens_BxC, pad_id),
                          logprobs_BxC=jnp.zeros_like(state.logprobs_BxC))
    return jax.lax.while_loop(cond, body, fresh)


def _take_rows(state: DecodeState, idx_B):
    """The rows ``idx_B`` of every per-row array of the state (compaction between chunks)."""
    take = lambda a: jnp.take(a, idx_B, axis=0)  # noqa: E731
    cache = dict(state.cache, k=tuple(map(take, state.cache["k"])), v=tuple(map(take, state.cache["v"])),
                 valid=take(state.cache["valid"]), pos=take(state.cache["pos"]))
    return state.replace(logits_BxV=take(state.logits_BxV), cache=cache, row_ids_B=take(state.row_ids_B),
                         tokens_BxC=take(state.tokens_BxC), logprobs_BxC=take(state.logprobs_BxC),
                         done_B=take(state.done_B), lengths_B=take(state.lengths_B))


class Sampler:
    """Batched KV-cache sampler for a Qwen2 given as ``graphdef`` (of ``nnx.split(model, nnx.Param)``)
    and its ModelConfig; the weights are an argument of :meth:`sample`, so one sampler serves every RL
    step. Samplers of the same graph and config share their compiled functions (e.g. evaluating
    several checkpoints compiles once). ``compile_count`` counts the compilations this sampler caused.

    ``decode_chunk``: decode steps per chunk (0: all in one chunk, no compaction); ``min_rows``: the
    smallest batch compaction shrinks to. ``self_shift``: decode with the model's self-shifted softmax
    (on the CPU path; see ``qwen2.cached_attention``); should a call's log-probs come out non-finite,
    the call is rerun with the exact softmax and the sampler keeps to it (``stats["exact_reruns"]``).
    ``decode_kernel``: "xla" (one masked pass over every cache slot) or "pallas" (the Pallas decode
    kernel of ``model/gpu_decode.py``: only the slots below the write pointer; for GPUs, interpret
    mode elsewhere).
    """

    def __init__(self, graphdef, cfg, *, pad_id: int = 1, prompt_buckets: Sequence[int] = DEFAULT_BUCKETS,
                 cache_dtype=None, decode_chunk: int = 0, min_rows: int = 8, self_shift: bool = True,
                 decode_kernel: str = "xla"):
        if decode_kernel not in DECODE_KERNELS:
            raise ValueError(f"decode_kernel={decode_kernel!r}; expected one of {', '.join(DECODE_KERNELS)}")
        self.decode_kernel = decode_kernel
        self.graphdef, self.cfg = graphdef, cfg
        self.pad_id = int(pad_id)
        self.prompt_buckets = tuple(sorted(prompt_buckets))
        self.decode_chunk, self.min_rows = int(decode_chunk), int(min_rows)
        self._share_key = (graphdef, cfg, str(cache_dtype))
        self._cache_dtype = cache_dtype
        self._compiled: dict = _SHARED_JIT.setdefault(self._share_key, {})
        self.compile_count = 0
        self.self_shift = bool(self_shift)
        # decode work done vs without compaction; calls rerun with the exact softmax
        self.stats = {"row_steps": 0, "row_steps_full": 0, "exact_reruns": 0}

    def _jit(self, kind: str, **static):
        key = (kind, tuple(sorted(static.items())))
        if key not in self._compiled:
            trace_key = (self._share_key, key)

            def on_trace():
                _TRACES[trace_key] = _TRACES.get(trace_key, 0) + 1

            if kind == "prefill":
                fn = functools.partial(_prefill, self.graphdef, self._cache_dtype, on_trace, **static)
                self._compiled[key] = jax.jit(fn)
            else:
                fn = functools.partial(_decode_chunk, self.graphdef, on_trace, **static)
                self._compiled[key] = jax.jit(fn, donate_argnums=(1,))
        return self._compiled[key], (self._share_key, key)

    def _call(self, kind: str, static: dict, *args):
        fn, trace_key = self._jit(kind, **static)
        before = _TRACES.get(trace_key, 0)
        out = fn(*args)
        self.compile_count += _TRACES.get(trace_key, 0) - before
        return out

    def decode_settings(self, *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                        stop_ids: Sequence[int] = ()) -> dict:
        """The decode program's static settings (its compilation key) for these sampling settings."""
        return dict(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_k=int(top_k),
                    top_p=float(top_p), stop_ids=tuple(int(s) for s in stop_ids), pad_id=self.pad_id,
                    self_shift=self.self_shift, decode_kernel=self.decode_kernel)

    def sample(self, params, prompts: Sequence[Sequence[int]], *, n: int = 1, max_new_tokens: int,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, key,
               stop_ids: Sequence[int] = (), pad_prompts_to_pow2: bool = True) -> SampleResult:
        """Sample ``n`` completions for each prompt (lists of token ids, non-empty)."""
        kw = dict(n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k, key=key,
                  stop_ids=stop_ids, pad_prompts_to_pow2=pad_prompts_to_pow2)
        result = self._sample(params, prompts, **kw)
        if result is None:  # the self-shifted softmax overflowed (or the weights are not finite)
            warnings.warn("sampler: non-finite log-probs with the self-shifted decode softmax (attention scores far "
                          "above a token's own, or non-finite weights); rerunning with the exact softmax from now on",
                          RuntimeWarning, stacklevel=2)
            self.self_shift = False
            self.stats["exact_reruns"] += 1
            result = self._sample(params, prompts, **kw)
        return result

    def _sample(self, params, prompts, *, n, max_new_tokens, temperature, top_p, top_k, key, stop_ids,
                pad_prompts_to_pow2) -> SampleResult | None:
        """:meth:`sample`; None when a self-shifted decode gave a non-finite log-prob."""
        r_max = int(max_new_tokens)
        if not prompts:
            z = np.zeros((0, r_max))
            return SampleResult(z.astype(np.int32), np.zeros(0, np.int32), z.astype(np.float32),
                                np.zeros(0, bool), np.zeros(0, np.int32))
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        num = len(prompts)
        rows = next_pow2(num) if pad_prompts_to_pow2 else num
        length = bucket_length(max(len(p) for p in prompts), self.prompt_buckets)
        padded = list(prompts) + [[self.pad_id]] * (rows - num)
        tokens_PxL, _ = pad(padded, length, self.pad_id, side="right")
        lengths_P = np.array([len(p) for p in padded], np.int32)
        chunk = min(self.decode_chunk or r_max, r_max)
        state = self._call("prefill", dict(n=int(n), max_new_tokens=r_max, chunk=chunk), params, tokens_PxL,
                           lengths_P, np.arange(rows) >= num)
        settings = self.decode_settings(max_new_tokens=r_max, temperature=temperature, top_k=top_k, top_p=top_p,
                                        stop_ids=stop_ids)
        b = rows * n
        out_tokens = np.full((b, r_max), self.pad_id, np.int32)
        out_lps = np.zeros((b, r_max), np.float32)
        out_done, out_lengths = np.zeros(b, bool), np.zeros(b, np.int32)
        for c in range(math.ceil(r_max / chunk)):
            batch_rows = int(state.done_B.shape[0])
            state = self._call("decode", settings, params, state, key)
            steps_run = int(state.step) - c * chunk
            row_ids, toks, lps, done, lens = jax.device_get(
                (state.row_ids_B, state.tokens_BxC, state.logprobs_BxC, state.done_B, state.lengths_B))
            if settings["self_shift"] and not np.isfinite(lps).all():
                return None
            cols = slice(c * chunk, c * chunk + chunk)
            out_tokens[row_ids, cols], out_lps[row_ids, cols] = toks[:, :r_max - c * chunk], lps[:, :r_max - c * chunk]
            out_done[row_ids], out_lengths[row_ids] = done, lens
            self.stats["row_steps"] += batch_rows * steps_run
            self.stats["row_steps_full"] += b * steps_run
            live = np.flatnonzero(~done)
            if live.size == 0 or int(state.step) >= r_max:
                break
            keep = max(next_pow2(live.size), min(self.min_rows, batch_rows))
            if keep < batch_rows:  # compact: the live rows first, then finished filler rows
                filler = np.flatnonzero(done)[:keep - live.size]
                state = _take_rows(state, jnp.asarray(np.concatenate([live, filler]), jnp.int32))
        r = num * n
        return SampleResult(out_tokens[:r], out_lengths[:r], out_lps[:r], out_done[:r],
                            np.repeat(np.arange(num, dtype=np.int32), n))
