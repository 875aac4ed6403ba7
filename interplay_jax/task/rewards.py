"""RL rewards (docs/metrics.md "Rewards"), all functions of one :class:`~interplay_jax.task.verify.Verdict`.

Names accepted by :func:`get_reward`:

==========================  =====================================================================
``outcome``                 1 if the extracted answer equals the gold answer, else 0.
``mixed<α>``                paper Eq. 3: α·R_out + (1−α)·ProcessAcc, α in [0, 1] (``mixed0.5``,
                            ``mixed0.2``; ``mixed1.0`` equals ``outcome``).
``strict``                  R_out if the whole process verifies (VerifiedCorrect), else 0.
``original_mixed<α>``       the released code: R_process = max(0, 1 − (value + dependency + missing
                            mismatches + min(extra, N) + answer mismatch)/N), N = max(#gold nodes, 1);
                            R = clip(α·R_out + (1−α)·R_process, 0, 1), forced to 0 when the answer
                            is wrong (its default was α = 0.2: ``original_mixed0.2``).
``original_strict``         as ``original_mixed`` but also 0 on any process mismatch, extra nodes
                            included: 1 iff the answer is right and the graph matches exactly.
==========================  =====================================================================

Every reward has the signature ``reward(gold_solution, response) -> float``; ``reward.from_verdict``
reuses a verdict and ``reward.batch(golds, responses)`` scores lists.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable

from interplay_jax.errors import ConfigError
from interplay_jax.task.verify import Verdict, verify

KNOWN = ("outcome", "mixed<α>", "strict", "original_mixed<α>", "original_strict")
_MIXED = re.compile(r"(original_)?mixed(\d*\.?\d+)")


def outcome(v: Verdict) -> float:
    return 1.0 if v.answer_correct else 0.0


def strict(v: Verdict) -> float:
    return 1.0 if v.verified_correct else 0.0


def mixed(alpha: float) -> Callable[[Verdict], float]:
    """α·R_out + (1−α)·ProcessAcc (paper Eq. 3)."""
    def fn(v: Verdict) -> float:
        return alpha * outcome(v) + (1.0 - alpha) * v.process_acc
    return fn


def original_process(v: Verdict) -> float:
    """The released code's process reward: max(0, 1 − penalties / N)."""
    n = max(v.n_gold, 1)
    penalty = (v.value_mismatch + v.dependency_mismatch + v.missing_node + min(v.extra_nodes, n)
               + v.answer_mismatch)
    return max(0.0, 1.0 - penalty / n)


def original_mixed(alpha: float) -> Callable[[Verdict], float]:
    def fn(v: Verdict) -> float:
        if not v.answer_correct:
            return 0.0
        return min(1.0, max(0.0, alpha * 1.0 + (1.0 - alpha) * original_process(v)))
    return fn


def original_strict(v: Verdict) -> float:
    return 1.0 if v.answer_correct and v.process_exact else 0.0


class Reward:
    """A named reward: ``reward(gold_solution, response) -> float``."""

    def __init__(self, name: str, fn: Callable[[Verdict], float]):
        self.name = name
        self.from_verdict = fn

    def __call__(self, gold_solution: str, response: str) -> float:
        return self.from_verdict(verify(gold_solution, response))

    def batch(self, gold_solutions: Iterable[str], responses: Iterable[str]) -> list[float]:
        return [self.from_verdict(verify(g, r)) for g, r in zip(gold_solutions, responses, strict=True)]

    def __repr__(self) -> str:
        return f"Reward({self.name!r})"


def get_reward(name: str) -> Reward:
    """The reward called ``name`` (see the module docstring); ConfigError for an unknown name."""
    if not isinstance(name, str):
        raise ConfigError(f"reward name must be a string, got {name!r}; known: {', '.join(KNOWN)}")
    key = name.strip()
    if key == "outcome":
        return Reward(key, outcome)
    if key == "strict":
        return Reward(key, strict)
    if key == "original_strict":
        return Reward(key, original_strict)
    match = _MIXED.fullmatch(key)
    if match:
        alpha = float(match.group(2))
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"reward {name!r}: α must be in [0, 1], got {alpha}")
        return Reward(key, original_mixed(alpha) if match.group(1) else mixed(alpha))
    raise ConfigError(f"unknown reward {name!r}; known: {', '.join(KNOWN)} "
                      "(e.g. mixed0.5, mixed0.2, original_mixed0.2)")


def compute_rewards(name: str, gold_solutions: Iterable[str], responses: Iterable[str]) -> list[float]:
    """``get_reward(name).batch(gold_solutions, responses)``."""
    return get_reward(name).batch(gold_solutions, responses)
