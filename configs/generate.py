"""Configs for the ``generate`` stage: ``--config=configs/generate.py:<preset>``.

Presets: ``tiny`` (a few hundred records, seconds), and every named mixture of the study
(``base``, ``hard0.1``, ``hard5``, ``hard20``, ``hard33``, ``hard50``, ``ctxB0``, ``ctxB0.1``, ``ctxB1``,
``ctxB10``, ``mid``, ``rl7-10``, ``rl9-12``, ``rl11-14``, ``rl17-20``, ``rl_uniform``) at a modest
default size; scale with ``--config.splits.train=N``. ``mixture`` is a preset name or a list of
components ``{"ops": [...], "weight": w, "contexts": ["A", ...], "modes": [...]}``.
``tokens`` (e.g. ``configs/generate.py:base,tokens --config.train_tokens=1e9 --config.workers=16``): the
train split as pre-tokenized token shards (generate once, train many runs with ``data.source=tokens``);
``--config.source=jsonl --config.data_dir=DIR`` converts the published dataset's train split instead.
"""
import ml_collections

from interplay_jax.config import parse_preset
from interplay_jax.task.mixture import PRESETS


def get_config(arg=None):
    p = parse_preset(arg, "configs/generate.py", preset=(("tiny",) + tuple(PRESETS), "tiny"),
                     format=(("jsonl", "tokens"), "jsonl"))
    preset = p["preset"]
    c = ml_collections.ConfigDict()
    c.stage = "generate"
    c.workdir = f"runs/data/{preset}"
    c.seed = 0
    c.mixture = "base" if preset == "tiny" else preset
    c.modes = ("normalforward",)            # default mode mix of components that name none
    # written in this order; each split excludes the hashes of the splits before it
    c.splits = ml_collections.ConfigDict({"eval": 200, "heldout": 200, "train": 100_000})
    c.shard_size = 10_000
    # format "tokens": the train split as token shards in WORKDIR/tokens/ (train with data.source=tokens)
    c.format = p["format"]
    c.train_tokens = 100_000_000       # the train split's size in tokens (format tokens), rounded up to whole shards
    c.shard_docs = 65_536              # documents a token shard (~23M tokens of the base mixture; generated independently)
    c.workers = 0                      # processes generating shards (0: this one)
    c.tokenizer = ""                   # "" = the default tokenizer (built once, cached)
    c.source = "mixture"               # "mixture" | "jsonl": convert data_dir's train split (published layout)
    c.data_dir = ""
    c.progress = True
    if preset == "tiny":
        c.splits = ml_collections.ConfigDict({"eval": 20, "heldout": 20, "train": 300})
        c.shard_size = 100
        c.train_tokens = 200_000
        c.shard_docs = 100
    return c
