"""RL prompts (docs/mixtures.md): which problems GRPO trains on, deterministically from the step index.

Sources:
- ``generator``: prompt ``i`` is a record of the mixture drawn with the RL split seed
  ``split_seed(seed, "rl")`` (a different SHA-256-derived stream from the pre-training ``train``,
  ``heldout`` and ``eval`` streams). Any record whose content hash is in ``exclude`` (e.g. every
  record of an eval / held-out JSONL directory) is redrawn from a retry stream, so the RL prompts are
  disjoint by hash from those sets.
- ``jsonl``: the records of one split of a data directory in the published layout (default
  ``heldout``: the split the pre-training stage never trains on), minus excluded hashes, shuffled once
  by the seed and re-shuffled every epoch.

Mixtures (contexts A/B/C in equal thirds unless named): the task layer's ``rl7-10``, ``rl9-12``,
``rl11-14``, ``rl17-20``, ``rl_uniform`` (aliases ``op7-10`` ... ``uniform``) and the context mixes
``ctxmixB<share>`` (share of context B in percent, the rest context A: 0, 1, 2, 10, 50, 100; ops
``CTXMIX_OPS`` unless the config names ``ops``).

``PromptSource.step_records(step, num_prompts)`` returns the records of step ``step`` (0-based):
global prompt indices ``step * num_prompts ...``; with a ``budget`` (prompts per epoch, 204.8K at paper
scale) index ``i`` maps to epoch ``i // budget``. This module has no JAX import.
"""
from __future__ import annotations

import pathlib
from typing import Sequence

from interplay_jax.config import parse_list
from interplay_jax.errors import ConfigError
from interplay_jax.task.generator import stable_rng
from interplay_jax.task.mixture import PRESETS as TASK_PRESETS
from interplay_jax.task.mixture import Mixture, get_mixture
from interplay_jax.task.writer import hashes_of_paths, read_jsonl, record_hash, split_files, split_seed

CTXMIX_OPS = tuple(range(2, 21))   # the context study's op range (op2-20)
CTXMIX_SHARES = (0, 1, 2, 10, 50, 100)
ALIASES = {"op7-10": "rl7-10", "op9-12": "rl9-12", "op11-14": "rl11-14", "op17-20": "rl17-20",
           "uniform": "rl_uniform"}
SOURCES = ("generator", "jsonl")


def context_mix(share_b: float, ops: Sequence[int] = CTXMIX_OPS) -> list[dict]:
    """Components: ``share_b`` % context B, the rest context A, uniform over ``ops``."""
    comps = []
    if share_b < 100:
        comps.append({"ops": list(ops), "weight": 100.0 - share_b, "contexts": ["A"]})
    if share_b > 0:
        comps.append({"ops": list(ops), "weight": float(share_b), "contexts": ["B"]})
    return comps


def rl_mixture(name: str, modes=("normalforward",), ops: Sequence[int] | None = None) -> Mixture:
    """The RL prompt mixture called ``name`` (see the module docstring); ``ops`` overrides its ops."""
    name = str(name).strip()
    key = ALIASES.get(name, name)
    if key.startswith("ctxmixB"):
        try:
            share = float(key[len("ctxmixB"):])
        except ValueError:
            raise ConfigError(f"RL mixture {name!r}: expected ctxmixB<share in percent>, e.g. ctxmixB10") from None
        if not 0 <= share <= 100:
            raise ConfigError(f"RL mixture {name!r}: the context-B share must be in [0, 100]")
        return get_mixture({"components": context_mix(share, ops or CTXMIX_OPS), "name": key}, modes=modes)
    if key not in TASK_PRESETS:
        known = ", ".join(list(ALIASES) + [f"ctxmixB{s}" for s in CTXMIX_SHARES] + list(TASK_PRESETS))
        raise ConfigError(f"unknown RL mixture {name!r}; known: {known}")
    if ops:
        comps = [{"ops": list(ops), "weight": c.get("weight", 1.0), "contexts": c.get("contexts", ["A", "B", "C"])}
                 for c in TASK_PRESETS[key]]
        return get_mixture({"components": comps, "name": f"{key}[ops]"}, modes=modes)
    return get_mixture(key, modes=modes)


def read_split(data_dir, split: str) -> list[dict]:
    """Every record of ``data_dir/split/**/*.jsonl`` (file order); DataError names file:line."""
    files = split_files(data_dir, split)
    if not files:
        raise ConfigError(f"no JSONL files under {pathlib.Path(data_dir) / split} (RL data.source=jsonl needs "
                          f"data_dir/{split}/...)")
    return [r for f in files for r in read_jsonl(f)]


class PromptSource:
    """Deterministic RL prompts: ``record(i)`` and ``step_records(step, num_prompts)``."""

    def __init__(self, *, mixture: Mixture | None = None, records: Sequence[dict] | None = None, seed: int = 0,
                 budget: int = 0, exclude: set[str] | None = None, max_redraws: int = 64):
        if (mixture is None) == (records is None):
            raise ValueError("give exactly one of mixture= (generator) or records= (jsonl)")
        self.mixture = mixture
        self.seed = int(seed)
        self.rl_seed = split_seed(self.seed, "rl")
        self.exclude = set(exclude or ())
        self.max_redraws = int(max_redraws)
        self.budget = int(budget)
        self.excluded = 0
        self.records = None
        if records is not None:
            kept = [r for r in records if record_hash(r) not in self.exclude]
            self.excluded = len(records) - len(kept)
            if not kept:
                raise ConfigError(f"no RL prompts left: all {len(records)} records are excluded (they appear in "
                                  f"the excluded eval / held-out data)")
            self.records = kept
            self.budget = self.budget or len(kept)
        self._perm: dict[int, list[int]] = {}

    def __len__(self) -> int:
        return self.budget if self.budget else (len(self.records) if self.records is not None else 0)

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._perm:
            order = list(range(len(self.records)))
            stable_rng("interplay_jax.rl.shuffle", self.seed, epoch).shuffle(order)
            self._perm = {epoch: order}
        return self._perm[epoch]

    def record(self, index: int) -> dict:
        index = int(index)
        if self.records is not None:
            n = len(self.records)
            epoch, pos = divmod(index, n)
            return self.records[self._permutation(epoch)[pos]]
        if self.budget:  # a finite prompt set: epoch e repeats the same prompts
            index = index % self.budget
        for attempt in range(self.max_redraws):
            seed = self.rl_seed if attempt == 0 else split_seed(self.rl_seed, f"redraw{attempt}")
            rec = self.mixture.record(seed, index)
            if record_hash(rec) not in self.exclude:
                return rec
        raise ConfigError(f"RL prompt {index}: {self.max_redraws} draws in a row were excluded; the mixture is "
                          f"too close to the excluded data")

    def step_records(self, step: int, num_prompts: int) -> list[dict]:
        start = int(step) * int(num_prompts)
        return [self.record(start + j) for j in range(int(num_prompts))]


def prompt_source_from_config(config, edge: dict | None = None) -> PromptSource:
    """From the RL config's ``data`` block (see configs/rl.py); ``edge`` is an edge-of-competence
    choice (interplay_jax.rl.edge) for ``data.mixture == "edge"``: its prompts, or its ops uniformly."""
    d = config.data
    modes = parse_list(d.get("modes", "normalforward"))
    exclude = hashes_of_paths(parse_list(d.get("exclude", "")))
    budget = int(config.rl.prompt_budget)
    if d.source == "jsonl":
        data_dir = pathlib.Path(str(d.data_dir))
        split = str(d.get("split", "heldout"))
        # also keep out every other non-train split (eval sets) of the same directory
        others = [p for p in sorted(data_dir.iterdir()) if p.is_dir() and p.name not in ("train", split)] \
            if data_dir.is_dir() else []
        exclude |= hashes_of_paths(others)
        return PromptSource(records=read_split(data_dir, split), seed=int(config.seed), budget=budget,
                            exclude=exclude)
    if str(d.mixture) == "edge":
        if edge is None:
            raise ConfigError("rl: data.mixture=edge needs the edge choice (the rl stage probes the parent first)")
        if edge.get("prompts"):
            return PromptSource(records=edge["prompts"], seed=int(config.seed), budget=budget, exclude=exclude)
        return PromptSource(mixture=rl_mixture("rl_uniform", modes=modes, ops=edge["ops"]), seed=int(config.seed),
                            budget=budget, exclude=exclude)
    ops = [int(o) for o in d.get("ops", None) or []] or None
    return PromptSource(mixture=rl_mixture(d.mixture, modes=modes, ops=ops), seed=int(config.seed), budget=budget,
                        exclude=exclude)
