"""Configs for the ``generate`` stage: ``--config=configs/generate.py:<preset>``.

Presets: ``tiny`` (a few hundred records, seconds), and every named mixture of the study
(``base``, ``hard0.1``, ``hard5``, ``hard20``, ``hard33``, ``hard50``, ``ctxB0``, ``ctxB0.1``, ``ctxB1``,
``ctxB10``, ``mid``, ``rl7-10``, ``rl9-12``, ``rl11-14``, ``rl17-20``, ``rl_uniform``) at a modest
default size; scale with ``--config.splits.train=N``. ``mixture`` is a preset name or a list of
components ``{"ops": [...], "weight": w, "contexts": ["A", ...], "modes": [...]}``.
"""
import ml_collections

from interplay_jax.config import parse_preset
from interplay_jax.task.mixture import PRESETS


def get_config(arg=None):
    preset = parse_preset(arg, "configs/generate.py", preset=(("tiny",) + tuple(PRESETS), "tiny"))["preset"]
    c = ml_collections.ConfigDict()
    c.stage = "generate"
    c.workdir = f"runs/data/{preset}"
    c.seed = 0
    c.mixture = "base" if preset == "tiny" else preset
    c.modes = ("normalforward",)            # default mode mix of components that name none
    # written in this order; each split excludes the hashes of the splits before it
    c.splits = ml_collections.ConfigDict({"eval": 200, "heldout": 200, "train": 100_000})
    c.shard_size = 10_000
    c.progress = True
    if preset == "tiny":
        c.splits = ml_collections.ConfigDict({"eval": 20, "heldout": 20, "train": 300})
        c.shard_size = 100
    return c
