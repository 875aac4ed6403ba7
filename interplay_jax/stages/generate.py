"""Stage ``generate``: write a dataset of synthetic problems (JSONL shards, published schema).

    python -m interplay_jax.main --config=configs/generate.py:tiny
    python -m interplay_jax.main --config=configs/generate.py:base --config.workdir=/data/base

Output: ``{workdir}/{split}/op{op}/shard-*.jsonl`` + ``manifest.json``; rerunning the same command
resumes an interrupted run (done shards are kept, the unfinished one is regenerated).
"""
from __future__ import annotations

import pathlib

from interplay_jax.config import as_dict, parse_list, require
from interplay_jax.task.mixture import get_mixture
from interplay_jax.task.writer import write_dataset


def run(config):
    mixture = get_mixture(as_dict(config.mixture), modes=parse_list(config.get("modes", "normalforward")))
    splits = {str(k): int(v) for k, v in as_dict(config.splits).items()}
    out = pathlib.Path(config.workdir)
    manifest = write_dataset(out, mixture, splits, seed=int(config.seed), shard_size=int(config.shard_size),
                             progress=bool(config.get("progress", True)))
    total = sum(sh["count"] for s in manifest["splits"].values() for sh in s["shards"])
    print(f"generate: wrote {total} records ({', '.join(f'{k}={v}' for k, v in splits.items())}) to {out}")
    return manifest


def validate(config, check_files: bool = True) -> None:
    for key in ("workdir", "seed", "mixture", "splits", "shard_size"):
        require(key in config, f"generate config has no {key!r} field")
    require(bool(str(config.workdir)), "generate: workdir must be a non-empty path")
    require(isinstance(config.seed, int), f"generate: seed must be an integer, got {config.seed!r}")
    require(isinstance(config.shard_size, int) and config.shard_size > 0,
            f"generate: shard_size must be a positive integer, got {config.shard_size!r}")
    splits = as_dict(config.splits)
    require(len(splits) > 0, "generate: splits is empty; give e.g. {'train': 1000}")
    for name, size in splits.items():
        require(isinstance(size, int) and size >= 0, f"generate: split {name!r} size must be an integer >= 0, "
                                                     f"got {size!r}")
    get_mixture(as_dict(config.mixture), modes=parse_list(config.get("modes", "normalforward")))
