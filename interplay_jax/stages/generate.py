"""Stage ``generate``: write a dataset of synthetic problems (JSONL shards, published schema).

    python -m interplay_jax.main --config=configs/generate.py:tiny
    python -m interplay_jax.main --config=configs/generate.py:base --config.workdir=/data/base

Output: ``{workdir}/{split}/op{op}/shard-*.jsonl`` + ``manifest.json``; rerunning the same command
resumes an interrupted run (done shards are kept, the unfinished one is regenerated).
"""
from __future__ import annotations

import pathlib

from interplay_jax.task.mixture import get_mixture
from interplay_jax.task.writer import write_dataset


def _plain(value):
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


def run(config):
    mixture = get_mixture(_plain(config.mixture), modes=tuple(config.get("modes", ("normalforward",))))
    splits = {str(k): int(v) for k, v in _plain(config.splits).items()}
    out = pathlib.Path(config.workdir)
    manifest = write_dataset(out, mixture, splits, seed=int(config.seed), shard_size=int(config.shard_size),
                             progress=bool(config.get("progress", True)))
    total = sum(sh["count"] for s in manifest["splits"].values() for sh in s["shards"])
    print(f"generate: wrote {total} records ({', '.join(f'{k}={v}' for k, v in splits.items())}) to {out}")
    return manifest
