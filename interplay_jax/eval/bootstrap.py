"""95% bootstrap intervals over prompts for pass@k, and paired intervals for differences.

The eval set has a fixed number of prompts per op, so resampling is stratified by op: each
replicate draws, within every op, as many prompts as it has, with replacement, and averages the
per-prompt pass@k (the same estimator as :mod:`interplay_jax.eval.passk`). The interval is the
percentile interval of the replicate means (``level`` = 0.95 -> 2.5th and 97.5th percentiles).
A difference between two checkpoints evaluated on the same prompts is paired: a replicate draws
prompt indices once and applies them to both, so prompt difficulty cancels. Sample-level noise
(n samples per prompt) is inside each prompt's pass@k and is not resampled separately.
Seeded (``seed``): the same inputs give the same interval. Pure numpy.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np

from interplay_jax.eval import passk

N_BOOT = 1000
LEVEL = 0.95
METRICS = {"verified": "verified_correct", "answer": "answer_correct"}


def prompt_values(prompts: Sequence[Mapping], ks: Sequence[int], field: str) -> np.ndarray:
    """[P, K] per-prompt pass@k of ``field`` (prompts with no samples must be dropped first)."""
    return np.array([[passk.prompt_pass_at_k([s[field] for s in p["samples"]], ks)[k] for k in ks]
                     for p in prompts], dtype=np.float64).reshape(len(prompts), len(ks))


def replicate_means(values: np.ndarray, strata: Sequence, *, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """[n_boot, ...] means of ``values`` ([P, ...]) over stratified resamples of its rows."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    groups = defaultdict(list)
    for i, s in enumerate(strata):
        groups[s].append(i)
    total = np.zeros((n_boot,) + values.shape[1:])
    for s in sorted(groups, key=str):               # fixed order: the draws do not depend on dict order
        idx = np.asarray(groups[s])
        pick = idx[rng.integers(0, len(idx), size=(n_boot, len(idx)))]
        total += values[pick].sum(axis=1)
    return total / max(len(values), 1)


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of replicate means along axis 0."""
    a = (1.0 - level) / 2.0
    return np.quantile(replicates, a, axis=0), np.quantile(replicates, 1.0 - a, axis=0)


def _scored(prompts):
    return [p for p in prompts if p.get("samples")]


def _group_intervals(prompts, ks, *, n_boot, seed, level) -> dict:
    out = {}
    strata = [int(p["op"]) for p in prompts]
    for name, field in METRICS.items():
        vals = prompt_values(prompts, ks, field)
        lo, hi = interval(replicate_means(vals, strata, n_boot=n_boot, seed=seed), level)
        out[name] = {int(k): [float(a), float(b)] for k, a, b in zip(ks, lo, hi)}
    return out


def bucket_intervals(prompts: Sequence[Mapping], buckets=passk.DEFAULT_BUCKETS, ks: Sequence[int] | None = None,
                     *, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> dict:
    """``{bucket: {"verified": {k: [lo, hi]}, "answer": {...}}}`` (strict and answer-only pass@k)."""
    by_bucket = defaultdict(list)
    for p in _scored(prompts):
        b = passk.bucket_of(p["op"], buckets)
        if b is not None:
            by_bucket[b].append(p)
    out = {}
    for b in buckets:
        ps = by_bucket.get(b)
        if not ps:
            continue
        n_min = min(len(p["samples"]) for p in ps)
        gks = [k for k in (ks or passk.ks_for(n_min)) if k <= n_min]
        out[b] = _group_intervals(ps, gks, n_boot=n_boot, seed=seed, level=level)
    return out


def op_intervals(prompts: Sequence[Mapping], ks: Sequence[int] | None = None, *, n_boot: int = N_BOOT,
                 seed: int = 0, level: float = LEVEL) -> dict:
    """``{op: {"verified": {k: [lo, hi]}, "answer": {...}}}`` (resampling the op's prompts)."""
    by_op = defaultdict(list)
    for p in _scored(prompts):
        by_op[int(p["op"])].append(p)
    out = {}
    for op in sorted(by_op):
        ps = by_op[op]
        n_min = min(len(p["samples"]) for p in ps)
        gks = [k for k in (ks or passk.ks_for(n_min)) if k <= n_min]
        out[op] = _group_intervals(ps, gks, n_boot=n_boot, seed=seed, level=level)
    return out


def paired_deltas(base_prompts: Sequence[Mapping], other_prompts: Sequence[Mapping],
                  buckets=passk.DEFAULT_BUCKETS, ks: Sequence[int] | None = None, *, n_boot: int = N_BOOT,
                  seed: int = 0, level: float = LEVEL) -> dict:
    """``other - base`` per bucket over the prompts both scored (matched by id), with a paired
    interval: ``{bucket: {"n_prompts": P, "verified": {k: {"delta": d, "ci": [lo, hi]}}, "answer": ...}}``."""
    base = {p["id"]: p for p in _scored(base_prompts)}
    pairs = defaultdict(list)
    for p in _scored(other_prompts):
        q = base.get(p["id"])
        b = passk.bucket_of(p["op"], buckets)
        if q is not None and b is not None:
            pairs[b].append((q, p))
    out = {}
    for b in buckets:
        pp = pairs.get(b)
        if not pp:
            continue
        n_min = min(min(len(q["samples"]), len(p["samples"])) for q, p in pp)
        gks = [k for k in (ks or passk.ks_for(n_min)) if k <= n_min]
        strata = [int(p["op"]) for _, p in pp]
        entry: dict = {"n_prompts": len(pp)}
        for name, field in METRICS.items():
            d = (prompt_values([p for _, p in pp], gks, field) - prompt_values([q for q, _ in pp], gks, field))
            lo, hi = interval(replicate_means(d, strata, n_boot=n_boot, seed=seed), level)
            mean = d.mean(axis=0)
            entry[name] = {int(k): {"delta": float(m), "ci": [float(a), float(c)]}
                           for k, m, a, c in zip(gks, mean, lo, hi)}
        out[b] = entry
    return out
