"""Unbiased pass@k and its aggregation over ops, contexts, modes and buckets (docs/metrics.md).

pass@k for one prompt with n samples of which c are correct is 1 - C(n-c, k) / C(n, k)
(Chen et al. 2021). We evaluate it in the numerically stable product form
``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never forms a large binomial.
The study reports k = 1, 2, 4, ..., n. Pure Python + numpy (no JAX).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping, Sequence

import numpy as np

# The study's buckets: name -> inclusive op range.
DEFAULT_BUCKETS: dict[str, tuple[int, int]] = {
    "ID": (2, 10),
    "OOD-edge": (11, 14),
    "OOD-hard": (15, 20),
}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples correct) from n samples, c correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k/i)
    i = np.arange(n - c + 1, n + 1, dtype=np.float64)
    return float(1.0 - np.prod(1.0 - k / i))


def ks_for(n: int) -> list[int]:
    """k = 1, 2, 4, ..., up to n (n itself appended when n is not a power of two)."""
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def bucket_of(op: int, buckets: Mapping[str, Sequence[int]] = DEFAULT_BUCKETS) -> str | None:
    """The first bucket whose inclusive [lo, hi] range holds ``op`` (None if none)."""
    for name, (lo, hi) in buckets.items():
        if lo <= op <= hi:
            return name
    return None


def prompt_pass_at_k(correct: Sequence[bool], ks: Iterable[int]) -> dict[int, float]:
    """pass@k of one prompt from its per-sample correctness flags."""
    n, c = len(correct), int(sum(bool(x) for x in correct))
    return {k: pass_at_k(n, c, k) for k in ks if k <= n}


def aggregate(prompts: Sequence[Mapping], *, key, ks: Sequence[int] | None = None,
              metrics: Mapping[str, str] = None) -> dict:
    """Mean pass@k over prompts grouped by ``key(prompt)`` (None -> dropped).

    Each prompt is a mapping with ``samples``: list of dicts holding boolean flags. ``metrics`` maps
    an output name to the sample field (default verified -> verified_correct, answer ->
    answer_correct). All prompts of a group must have the same n (ks default to ks_for(min n)).
    Returns {group: {metric: {k: value}, "n_prompts": int}}, groups sorted.
    """
    metrics = metrics or {"verified": "verified_correct", "answer": "answer_correct"}
    groups: dict = defaultdict(list)
    for p in prompts:
        g = key(p)
        if g is not None and p["samples"]:
            groups[g].append(p)
    out = {}
    for g in sorted(groups, key=lambda x: (str(type(x)), x)):
        ps = groups[g]
        n_min = min(len(p["samples"]) for p in ps)
        gks = [k for k in (ks or ks_for(n_min)) if k <= n_min]
        entry: dict = {"n_prompts": len(ps)}
        for name, field in metrics.items():
            vals = np.array([[prompt_pass_at_k([s[field] for s in p["samples"]], gks)[k] for k in gks]
                             for p in ps])
            entry[name] = {int(k): float(v) for k, v in zip(gks, vals.mean(axis=0))}
        out[g] = entry
    return out


def by_bucket(prompts, buckets=DEFAULT_BUCKETS, ks=None) -> dict:
    """pass@k per bucket (ID / OOD-edge / OOD-hard by default)."""
    res = aggregate(prompts, key=lambda p: bucket_of(p["op"], buckets), ks=ks)
    return {b: res[b] for b in buckets if b in res}  # keep the buckets' own order


def by_op(prompts, ks=None) -> dict:
    return aggregate(prompts, key=lambda p: int(p["op"]), ks=ks)


def by_field_and_bucket(prompts, field: str, buckets=DEFAULT_BUCKETS, ks=None) -> dict:
    """pass@k per (prompt[field], bucket): {value: {bucket: entry}} (ops outside every bucket dropped)."""
    res = aggregate(prompts, key=lambda p: (p[field], bucket_of(p["op"], buckets) or ""), ks=ks)
    out: dict = defaultdict(dict)
    for (value, b), v in res.items():
        if b:
            out[value][b] = v
    return dict(out)


def by_context(prompts, buckets=DEFAULT_BUCKETS, ks=None) -> dict:
    """pass@k per (context, bucket): {context: {bucket: entry}}."""
    return by_field_and_bucket(prompts, "context", buckets, ks)


def by_mode(prompts, buckets=DEFAULT_BUCKETS, ks=None) -> dict:
    """pass@k per (mode, bucket): {mode: {bucket: entry}}."""
    return by_field_and_bucket(prompts, "mode", buckets, ks)
