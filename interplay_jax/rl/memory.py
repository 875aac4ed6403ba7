"""Device memory of the RL stage's compiled programs, known before the first rollout.

XLA reports, for a compiled program, the temporary (activations, workspace), argument and output
bytes it will use (``compiled.memory_analysis()``). The RL stage uses that to

* pick ``rl.micro_batch_size`` when it is 0: the largest micro-batch whose update fits the device
  (two small compilations give the bytes per rollout; the pick is then compiled to confirm);
* refuse, in one line naming the setting to change, a sampler or update that would not fit.

``benchmarks/rl_memory.py`` uses the same functions against a virtual H200 on a machine without one.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from interplay_jax.sampling.padding import bucket_length, next_pow2

GIB = 2.0 ** 30


def program_bytes(compiled) -> int:
    """Temporary + argument + output bytes of a compiled program (aliased outputs counted once)."""
    m = compiled.memory_analysis()
    if m is None:
        return 0
    alias = getattr(m, "alias_size_in_bytes", 0) or 0
    return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - alias)


def device_bytes(device=None) -> int | None:
    """The device's memory (None where unknown, e.g. CPU)."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


def _abstract(shape, dtype, sharding):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def update_inputs(rows: int, seq_len: int, response_len: int, *, kl: bool, sampler_old: bool, sharding=None) -> dict:
    """Abstract rollouts of the GRPO update (see ``grpo.make_grpo_step``)."""
    out = {"tokens": _abstract((rows, seq_len), jnp.int32, sharding),
           "prompt_lens": _abstract((rows,), jnp.int32, sharding),
           "response_mask": _abstract((rows, response_len), jnp.int32, sharding),
           "advantages": _abstract((rows,), jnp.float32, sharding)}
    if sampler_old:
        out["old_logprobs"] = _abstract((rows, response_len), jnp.float32, sharding)
    if kl:
        out["ref_logprobs"] = _abstract((rows, response_len), jnp.float32, sharding)
        out["ref_is_old"] = _abstract((rows,), jnp.bool_, sharding)
    return out


def update_bytes(step, abstract_state, rows, seq_len, response_len, *, kl, sampler_old, sharding=None) -> int:
    """Device bytes of one compiled GRPO update ``step`` (a jitted function) at these shapes."""
    batch = update_inputs(rows, seq_len, response_len, kl=kl, sampler_old=sampler_old, sharding=sharding)
    return program_bytes(step.lower(abstract_state, batch).compile())


@dataclasses.dataclass
class MicroChoice:
    micro: int                 # rollouts per forward/backward
    bytes: int                 # the compiled update's device bytes at that micro-batch
    budget: int | None         # the device bytes it had to fit in (None: unknown)


def pick_micro_batch(make_step, abstract_state, *, mini_rows: int, rows: int, seq_len: int, response_len: int,
                     kl: bool, sampler_old: bool, budget: int | None, multiple: int = 1, sharding=None,
                     headroom: float = 0.9) -> MicroChoice:
    """The largest micro-batch (a divisor of ``mini_rows``, multiple of ``multiple``) whose update fits
    ``headroom * budget``. ``make_step(micro) -> jitted step``. With no budget: the whole mini-batch."""
    cands = [m for m in range(multiple, mini_rows + 1, multiple) if mini_rows % m == 0]
    measure = lambda m: update_bytes(make_step(m), abstract_state, rows, seq_len, response_len, kl=kl,  # noqa
                                     sampler_old=sampler_old, sharding=sharding)
    if budget is None:
        return MicroChoice(mini_rows, 0, None)
    lo = cands[0]
    b_lo = measure(lo)
    hi = next((m for m in cands if m >= 2 * lo), None)
    if hi is None:
        return MicroChoice(lo, b_lo, budget)
    per_row = max((measure(hi) - b_lo) / (hi - lo), 1.0)
    fits = [m for m in cands if b_lo + per_row * (m - lo) <= headroom * budget] or [lo]
    for m in sorted(fits, reverse=True):
        b = b_lo if m == lo else measure(m)
        if b <= headroom * budget or m == lo:
            return MicroChoice(m, b, budget)
    return MicroChoice(lo, b_lo, budget)


def sampler_programs(sampler, abstract_params, *, prompts: int, prompt_len: int, n: int, max_new_tokens: int,
                     stop_ids=(), sharding=None) -> tuple:
    """The sampler's compiled prefill and widest decode chunk (all rows, every slot) at these shapes,
    from abstract inputs: (prefill, decode)."""
    rows = next_pow2(prompts)
    length = bucket_length(prompt_len, sampler.prompt_buckets)
    chunk = min(sampler.decode_chunk or max_new_tokens, max_new_tokens)
    prefill, _ = sampler._jit("prefill", n=int(n), max_new_tokens=int(max_new_tokens), chunk=chunk)
    args = (abstract_params, _abstract((rows, length), jnp.int32, sharding), _abstract((rows,), jnp.int32, sharding),
            _abstract((rows,), jnp.bool_, sharding))
    p_compiled = prefill.lower(*args).compile()
    state = jax.eval_shape(prefill, *args)
    if sharding is not None:
        state = jax.tree.map(lambda s: _abstract(s.shape, s.dtype, sharding), state)
    decode, _ = sampler._jit("decode", **sampler.decode_settings(max_new_tokens=max_new_tokens, stop_ids=stop_ids))
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding)   # a raw PRNGKey, as the RL stage passes
    return p_compiled, decode.lower(abstract_params, state, key).compile()


def sampler_bytes(sampler, abstract_params, *, prompts: int, prompt_len: int, n: int, max_new_tokens: int,
                  stop_ids=(), sharding=None) -> int:
    """Device bytes of the sampler's prefill plus its widest decode chunk (all rows, every slot)."""
    prefill, decode = sampler_programs(sampler, abstract_params, prompts=prompts, prompt_len=prompt_len, n=n,
                                       max_new_tokens=max_new_tokens, stop_ids=stop_ids, sharding=sharding)
    # the decode donates the state (cache) the prefill produced: the larger of the two is live at once
    return max(program_bytes(prefill), program_bytes(decode))


def gib(x: float) -> float:
    return float(np.round(x / GIB, 2))
