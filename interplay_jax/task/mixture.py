"""Mixtures over (op, context, mode) with weights, and the study's named presets.

A mixture is a list of components ``{"ops": [...], "weight": w, "contexts": [...], "modes": [...]}``;
within a component ops, contexts and modes are uniform. ``Mixture.record(seed, index)`` is a pure
function of (seed, index): the component, op, context, mode and the problem seed all come from a
SHA-256-seeded RNG of (seed, index), so any worker can produce any index.
"""
from __future__ import annotations

import bisect
import dataclasses

from interplay_jax.errors import ConfigError
from interplay_jax.task.contexts import get_context
from interplay_jax.task.generator import FORWARD, MODES, check_mode, check_op, generate_problem, stable_rng

ABC = ("A", "B", "C")


@dataclasses.dataclass(frozen=True)
class Component:
    ops: tuple
    weight: float
    contexts: tuple = ABC
    modes: tuple = (FORWARD,)


def _as_list(value, what):
    if isinstance(value, (str, int)):
        return [value]
    try:
        return list(value)
    except TypeError:
        raise ConfigError(f"mixture component {what} must be a list, got {value!r}") from None


def _component(spec, default_modes) -> Component:
    if isinstance(spec, Component):
        return spec
    if not hasattr(spec, "get"):
        raise ConfigError(f"mixture component must be a dict with ops/weight/contexts/modes, got {spec!r}")
    unknown = set(dict(spec)) - {"ops", "weight", "contexts", "modes"}
    if unknown:
        raise ConfigError(f"mixture component has unknown keys {sorted(unknown)}; allowed: ops, weight, contexts, modes")
    if "ops" not in spec:
        raise ConfigError(f"mixture component {dict(spec)!r} has no 'ops'")
    ops = tuple(check_op(op) for op in _as_list(spec["ops"], "ops"))
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight != weight or weight < 0:
        raise ConfigError(f"mixture weight must be a number >= 0, got {weight!r}")
    contexts = tuple(get_context(c).name for c in _as_list(spec.get("contexts", ABC), "contexts"))
    modes = tuple(check_mode(m) for m in _as_list(spec.get("modes", default_modes), "modes"))
    if not ops or not contexts or not modes:
        raise ConfigError(f"mixture component {dict(spec)!r} needs at least one op, context and mode")
    return Component(ops, float(weight), contexts, modes)


class Mixture:
    """Weighted components over (op, context, mode)."""

    def __init__(self, components, name: str = "custom", modes=(FORWARD,)):
        components = _as_list(components, "list")
        if not components:
            raise ConfigError("mixture has no components")
        self.name = name
        self.components = [_component(c, tuple(modes)) for c in components]
        total = sum(c.weight for c in self.components)
        if total <= 0:
            raise ConfigError(f"mixture {name!r}: weights sum to {total:g}; at least one must be > 0")
        self.probs = [c.weight / total for c in self.components]
        self._cum = []
        acc = 0.0
        for p in self.probs:
            acc += p
            self._cum.append(acc)
        self._cum[-1] = 1.0

    @property
    def ops(self) -> list[int]:
        return sorted({op for c in self.components if c.weight > 0 for op in c.ops})

    def op_probs(self) -> dict:
        """Marginal probability of each op."""
        out = {}
        for c, p in zip(self.components, self.probs):
            for op in c.ops:
                out[op] = out.get(op, 0.0) + p / len(c.ops)
        return dict(sorted(out.items()))

    def draw(self, seed: int, index: int):
        """(op, context, mode, problem_seed) of global record ``index``."""
        rng = stable_rng("interplay_jax.mixture.v1", seed, index)
        comp = self.components[bisect.bisect_right(self._cum, rng.random())]
        return (rng.choice(comp.ops), rng.choice(comp.contexts), rng.choice(comp.modes), rng.getrandbits(62))

    def record(self, seed: int, index: int) -> dict:
        op, context, mode, problem_seed = self.draw(seed, index)
        return generate_problem(op, context, mode, problem_seed)

    def __repr__(self):
        return f"Mixture({self.name!r}, {self.components})"


def _r(a, b):
    return list(range(a, b + 1))


def _three(w_easy, w_mid, w_hard):
    return [{"ops": _r(2, 4), "weight": w_easy}, {"ops": _r(5, 7), "weight": w_mid},
            {"ops": _r(8, 10), "weight": w_hard}]


def _ctx_b(share_percent):
    return [{"ops": _r(2, 20), "weight": 100.0 - share_percent, "contexts": ["A"]},
            {"ops": [2], "weight": share_percent, "contexts": ["B"]}]


PRESETS = {
    # pre-training (docs/mixtures.md): share of hard op8-10
    "base": _three(20, 30, 50),
    "hard0.1": _three(49.95, 49.95, 0.1),
    "hard5": _three(47.5, 47.5, 5),
    "hard20": _three(50, 30, 20),
    "hard33": [{"ops": _r(2, 10), "weight": 1}],
    "hard50": _three(20, 30, 50),
    # context study (E2): op2-20 context A + op2-only context B at a share
    "ctxB0": _ctx_b(0),
    "ctxB0.1": _ctx_b(0.1),
    "ctxB1": _ctx_b(1),
    "ctxB10": _ctx_b(10),
    # mid-training
    "mid": [{"ops": _r(2, 10), "weight": 20}, {"ops": _r(11, 14), "weight": 80}],
    # RL data regimes (E1)
    "rl7-10": [{"ops": _r(7, 10), "weight": 1}],
    "rl9-12": [{"ops": _r(9, 12), "weight": 1}],
    "rl11-14": [{"ops": _r(11, 14), "weight": 1}],
    "rl17-20": [{"ops": _r(17, 20), "weight": 1}],
    "rl_uniform": [{"ops": _r(2, 20), "weight": 1}],
}


def get_mixture(name_or_spec, modes=(FORWARD,)) -> Mixture:
    """A preset name (see PRESETS), a Mixture, a list of component dicts, or one component dict.

    ``modes`` is the default mode mix of components that do not name their own."""
    if isinstance(name_or_spec, Mixture):
        return name_or_spec
    if isinstance(modes, str):
        modes = [modes]
    modes = tuple(check_mode(m) for m in modes)
    if isinstance(name_or_spec, str):
        if name_or_spec not in PRESETS:
            raise ConfigError(f"unknown mixture {name_or_spec!r}; presets: {', '.join(PRESETS)}")
        return Mixture(PRESETS[name_or_spec], name=name_or_spec, modes=modes)
    if hasattr(name_or_spec, "get") and "components" in name_or_spec:
        return Mixture(name_or_spec["components"], name=name_or_spec.get("name", "custom"),
                       modes=name_or_spec.get("modes", modes))
    if hasattr(name_or_spec, "get"):
        return Mixture([name_or_spec], modes=modes)
    return Mixture(name_or_spec, modes=modes)


__all__ = ["ABC", "Component", "Mixture", "PRESETS", "get_mixture", "MODES"]
