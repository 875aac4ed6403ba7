"""Building blocks for the experiment grids: one function per stage at three scales.

``paper``: the study's exact numbers (configs' ``paper`` presets, for TPU/GPU).
``mini``: the same DAG on a ``small`` model with budgets one small GPU finishes in about 30 minutes
(or this 2-core CPU overnight), chosen so the mechanism (RL at the edge of competence extends
pass@k beyond the pre-training range) can show: pre-training on op2-10 long enough that ID is mostly
solved, RL on a harder slice, evaluation up to op20 with n = 16 samples.
"""
from __future__ import annotations

from interplay_jax.experiments.dag import Run

MINI_MODEL = {"model.preset": "small"}
MINI_PRETRAIN = {**MINI_MODEL, "seq_len": 1024, "batch_size": 32, "total_steps": 2000, "ckpt_every": 250,
                 "eval_every": 250}
MINI_MID_STEP_TOKENS = 32 * 1024
MINI_RL = {"rl.num_prompts": 32, "rl.n": 8, "rl.max_response_len": 768, "rl.total_steps": 60,
           "ckpt_every": 10}
# ``cpu``: the same DAG in minutes on this 2-core machine (tiny model): it exercises every stage and
# the runner end to end; it is far too small for the study's effects to show.
CPU_PRETRAIN = {"model.preset": "tiny", "seq_len": 512, "batch_size": 8, "total_steps": 150, "ckpt_every": 50,
                "eval_every": 50, "eval.per_bucket": 8}
CPU_RL = {"rl.num_prompts": 4, "rl.n": 4, "rl.max_response_len": 128, "rl.total_steps": 4, "ckpt_every": 2}
CPU_EVAL = {"eval.ops": "2,6,10,12,16", "eval.per_op": 3, "sampling.n": 4, "sampling.max_new_tokens": 160}
MINI_EVAL = {"eval.ops": "2-20", "eval.per_op": 16, "sampling.n": 16, "sampling.max_new_tokens": 768,
             "sampling.batch_prompts": 8}


TOKENIZER = "tokenizer"
TOK_REF = {"tokenizer": (TOKENIZER, "tokenizer.json")}


def tokenizer(scale: str) -> Run:
    """The experiment's tokenizer (every training run refers to it)."""
    return Run(TOKENIZER, "tokenizer.py", "tiny" if scale == "cpu" else "", note="byte-level BPE on generated text")


def pretrain(name: str, mixture: str, scale: str, note: str = "", **overrides) -> Run:
    if scale == "paper":
        return Run(name, "pretrain.py", f"{mixture},paper", dict(overrides), note=note, refs=dict(TOK_REF))
    base = CPU_PRETRAIN if scale == "cpu" else MINI_PRETRAIN
    return Run(name, "pretrain.py", f"{mixture},cpu", {**base, **overrides}, note=note, refs=dict(TOK_REF))


def midtrain(name: str, parent: str, scale: str, steps: int | None = None, note: str = "", **overrides) -> Run:
    o = dict(overrides)
    if steps is not None:
        o["total_steps"] = int(steps)
    if scale == "paper":
        return Run(name, "midtrain.py", "mid,paper", o, parent=parent, note=note, refs=dict(TOK_REF))
    base = {**CPU_PRETRAIN, "total_steps": 50} if scale == "cpu" else {**MINI_PRETRAIN, "total_steps": 1000}
    return Run(name, "midtrain.py", "mid,cpu", {**base, **o}, parent=parent, note=note, refs=dict(TOK_REF))


def rl(name: str, parent: str, data: str, scale: str, reward: str = "outcome", steps: int | None = None,
       note: str = "", **overrides) -> Run:
    o = dict(overrides)
    if steps is not None:
        o["rl.total_steps"] = int(steps)
    arg_scale = "paper" if scale == "paper" else "cpu"
    base = {"paper": {}, "cpu": CPU_RL}.get(scale, MINI_RL)
    return Run(name, "rl.py", f"{data},{arg_scale},{reward}", {**base, **o}, parent=parent, note=note,
               refs=dict(TOK_REF))


def evaluate(name: str, compare: list[str], scale: str, note: str = "", **overrides) -> Run:
    if scale == "paper":
        return Run(name, "eval.py", "paper", dict(overrides), compare=tuple(compare), note=note)
    base = CPU_EVAL if scale == "cpu" else MINI_EVAL
    return Run(name, "eval.py", "cpu", {**base, **overrides}, compare=tuple(compare), note=note)
