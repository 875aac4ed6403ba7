"""Rollouts for many prompts: drop over-long prompts, sample the rest in chunks, one result."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
from tqdm.auto import tqdm

from interplay_jax.sampling.sampler import SampleResult, Sampler


@dataclasses.dataclass
class Rollouts:
    result: SampleResult
    kept: list[int]  # indices (into the caller's prompt list) of the prompts that were sampled
    num_filtered: int  # prompts dropped for exceeding max_prompt_len


def rollout(sampler: Sampler, params, prompts: Sequence[Sequence[int]], *, max_prompt_len: int,
            batch_prompts: int | None = None, progress: bool = False, key, **sample_kwargs) -> Rollouts:
    """Drop (and count) prompts longer than ``max_prompt_len``, sample the rest in chunks of
    ``batch_prompts`` prompts (chunk c uses ``fold_in(key, c)``) and return one concatenated result
    whose ``prompt_index`` refers to positions in ``kept``."""
    kept = [i for i, p in enumerate(prompts) if 0 < len(p) <= max_prompt_len]
    batch_prompts = batch_prompts or max(len(kept), 1)
    parts = []
    starts = range(0, len(kept), batch_prompts)
    for ci, start in enumerate(tqdm(starts, desc="sampling", unit="batch", disable=not progress)):
        idx = kept[start:start + batch_prompts]
        res = sampler.sample(params, [prompts[i] for i in idx], key=jax.random.fold_in(key, ci), **sample_kwargs)
        res.prompt_index = res.prompt_index + start
        parts.append(res)
    if not parts:
        parts.append(sampler.sample(params, [], key=key, **sample_kwargs))
    return Rollouts(SampleResult.concat(parts), kept, len(prompts) - len(kept))
