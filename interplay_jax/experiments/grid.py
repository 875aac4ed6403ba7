"""Building blocks for the experiment grids: one function per stage at three scales.

Each scale is a preset of configs/*.py: ``paper`` (the study's exact numbers, for TPU/GPU), ``mini``
(a ``small`` model on one GPU: pre-training on op2-10 long enough that ID is mostly solved, RL on a
harder slice, evaluation up to op20 with n = 16) and ``cpu`` (a tiny model; minutes on this 2-core
machine: it exercises every stage and the runner end to end, far too small for the study's effects).
The grids add only what differs from a preset (the ``cpu`` runs are shorter than the configs' ``cpu``
presets so that a whole grid finishes in minutes).
"""
from __future__ import annotations

from interplay_jax.experiments.dag import Run

# overrides on top of the configs' ``cpu`` presets: a whole grid in minutes
CPU_PRETRAIN = {"seq_len": 512, "total_steps": 150, "ckpt_every": 50, "eval_every": 50, "eval.per_bucket": 8}
CPU_MIDTRAIN = {**CPU_PRETRAIN, "total_steps": 50}
CPU_RL = {"rl.num_prompts": 4, "rl.n": 4, "rl.max_response_len": 128, "rl.total_steps": 4, "ckpt_every": 2}
CPU_EVAL = {"eval.ops": "2,6,10,12,16", "eval.per_op": 3, "sampling.n": 4, "sampling.max_new_tokens": 160}
GRID = {"cpu": {"pretrain": CPU_PRETRAIN, "midtrain": CPU_MIDTRAIN, "rl": CPU_RL, "eval": CPU_EVAL}}

TOKENIZER = "tokenizer"
TOK_REF = {"tokenizer": (TOKENIZER, "tokenizer.json")}


def _grid(scale: str, stage: str) -> dict:
    return dict(GRID.get(scale, {}).get(stage, {}))


def tokenizer(scale: str) -> Run:
    """The experiment's tokenizer (every training run refers to it)."""
    return Run(TOKENIZER, "tokenizer.py", "tiny" if scale == "cpu" else "", note="byte-level BPE on generated text")


def pretrain(name: str, mixture: str, scale: str, note: str = "", **overrides) -> Run:
    return Run(name, "pretrain.py", f"{mixture},{scale}", {**_grid(scale, "pretrain"), **overrides}, note=note,
               refs=dict(TOK_REF))


def midtrain(name: str, parent: str, scale: str, steps: int | None = None, note: str = "", **overrides) -> Run:
    o = {**_grid(scale, "midtrain"), **overrides}
    if steps is not None:
        o["total_steps"] = int(steps)
    return Run(name, "midtrain.py", f"mid,{scale}", o, parent=parent, note=note, refs=dict(TOK_REF))


def rl(name: str, parent: str, data: str, scale: str, reward: str = "outcome", steps: int | None = None,
       note: str = "", **overrides) -> Run:
    o = {**_grid(scale, "rl"), **overrides}
    if steps is not None:
        o["rl.total_steps"] = int(steps)
    return Run(name, "rl.py", f"{data},{scale},{reward}", o, parent=parent, note=note, refs=dict(TOK_REF))


def evaluate(name: str, compare: list[str], scale: str, note: str = "", **overrides) -> Run:
    return Run(name, "eval.py", scale, {**_grid(scale, "eval"), **overrides}, compare=tuple(compare), note=note)
