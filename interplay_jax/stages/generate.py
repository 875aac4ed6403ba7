"""Stage ``generate``: write a dataset of synthetic problems.

    python -m interplay_jax.main --config=configs/generate.py:tiny
    python -m interplay_jax.main --config=configs/generate.py:base --config.workdir=/data/base
    python -m interplay_jax.main --config=configs/generate.py:base,tokens --config.train_tokens=1e9

``format=jsonl``: ``{workdir}/{split}/op{op}/shard-*.jsonl`` + ``manifest.json`` (the published
schema). ``format=tokens``: the non-train splits as JSONL as above, and the train split as token shards
in ``{workdir}/tokens/`` (interplay_jax.data.shards: ``train_tokens`` tokens, ``shard_docs``
documents a shard, ``workers`` processes) for ``data.source=tokens`` training; ``source=jsonl`` converts
the train split of a directory in the published layout (``data_dir``) instead of generating. Either
way rerunning the same command resumes an interrupted run (finished shards are kept).
"""
from __future__ import annotations

import builtins
import concurrent.futures
import multiprocessing
import pathlib

from tqdm.auto import tqdm

from interplay_jax.config import as_dict, parse_list, require
from interplay_jax.data.shards import ShardJob, ShardWriter
from interplay_jax.stages.skeleton import load_tokenizer
from interplay_jax.task.mixture import get_mixture
from interplay_jax.task.writer import iter_split, record_hash, split_files, split_seed, write_dataset

TOKENS_DIR = "tokens"


def run(config):
    mixture = get_mixture(as_dict(config.mixture), modes=parse_list(config.get("modes", "normalforward")))
    splits = {str(k): int(v) for k, v in as_dict(config.splits).items()}
    out = pathlib.Path(config.workdir)
    tokens = str(config.get("format", "jsonl")) == "tokens"
    jsonl_splits = {k: v for k, v in splits.items() if not (tokens and k == "train")}
    manifest = write_dataset(out, mixture, jsonl_splits, seed=int(config.seed), shard_size=int(config.shard_size),
                             progress=bool(config.get("progress", True)))
    total = sum(sh["count"] for s in manifest["splits"].values() for sh in s["shards"])
    print(f"generate: wrote {total} records ({', '.join(f'{k}={v}' for k, v in jsonl_splits.items())}) to {out}")
    if not tokens:
        return manifest
    exclude = {record_hash(r) for split in jsonl_splits for r in iter_split(out, split)}
    return write_train_tokens(config, mixture, out / TOKENS_DIR, exclude)


def write_train_tokens(config, mixture, root: pathlib.Path, exclude: set[str]) -> dict:
    """The train split as token shards: shard k holds stream records [k·D, (k+1)·D) (D = shard_docs)
    minus the excluded ones, so shards are independent (written by worker processes, in order)."""
    tokenizer, tok_info = load_tokenizer(config)
    source = str(config.get("source", "mixture"))
    settings = {"source": source, "mixture": repr(mixture) if source == "mixture" else str(config.data_dir),
                "seed": int(config.seed), "shard_docs": int(config.shard_docs), "tokenizer": tok_info}
    writer = ShardWriter(root, settings)
    budget, per_shard = int(float(config.train_tokens)), int(config.shard_docs)
    job = ShardJob(source=source, mixture=mixture, seed=split_seed(int(config.seed), "train"),
                   data_dir=str(config.get("data_dir", "")), per_shard=per_shard, tokenizer=tok_info["path"],
                   exclude=frozenset(exclude))
    bar = tqdm(total=budget, initial=min(writer.tokens, budget), desc="generate tokens", unit="tok", unit_scale=True,
               disable=not bool(config.get("progress", True)))
    workers = int(config.get("workers", 0) or 0)
    k = writer.next_shard
    with _pool(workers) as pool:
        while writer.tokens < budget:
            shards = writer.manifest["shards"]
            per = sum(x["tokens"] for x in shards) / len(shards) if shards else 0   # tokens a shard, so far
            need = -(-(budget - writer.tokens) // int(per)) if per else max(workers, 1)
            ahead = [k + i for i in range(max(1, min(max(workers, 1), need)))]
            for shard in (pool or builtins).map(job, ahead):
                if writer.tokens >= budget:
                    break
                docs, ops, start, end = shard
                if not docs:
                    require(source != "jsonl", f"generate: {config.data_dir} holds fewer than {budget} train tokens "
                                               f"({writer.tokens} written)")
                entry = writer.write_shard(docs, ops, extra={"start": start, "end": end})
                bar.update(min(entry["tokens"], budget - bar.n))
            k = ahead[-1] + 1
    bar.close()
    manifest = writer.finish(tokens=writer.tokens, docs=sum(s["docs"] for s in writer.manifest["shards"]))
    print(f"generate: {manifest['tokens']:,} train tokens in {len(manifest['shards'])} shards at {root} "
          f"(tokenizer {tok_info['path']})")
    return manifest


class _pool:
    """A spawn-context process pool of ``workers`` processes (None for 0: map in this process)."""

    def __init__(self, workers: int):
        self.workers, self.pool = workers, None

    def __enter__(self):
        if self.workers > 0:
            self.pool = concurrent.futures.ProcessPoolExecutor(self.workers,
                                                               mp_context=multiprocessing.get_context("spawn"))
        return self.pool

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        return False


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
    fmt = str(config.get("format", "jsonl"))
    require(fmt in ("jsonl", "tokens"), f"generate: format={fmt!r}; expected jsonl or tokens")
    if fmt == "tokens":
        require(float(config.train_tokens) > 0, f"generate: train_tokens={config.train_tokens} must be > 0")
        require(int(config.shard_docs) > 0, f"generate: shard_docs={config.shard_docs} must be > 0")
        require(int(config.get("workers", 0)) >= 0, f"generate: workers={config.get('workers')} must be >= 0")
        source = str(config.get("source", "mixture"))
        require(source in ("mixture", "jsonl"), f"generate: source={source!r}; expected mixture or jsonl")
        if source == "jsonl" and check_files:
            require(bool(split_files(str(config.data_dir), "train")),
                    f"generate: data_dir={config.data_dir!r} has no train/*.jsonl to convert")
        tok = str(config.get("tokenizer", "") or "")
        require(not check_files or not tok or pathlib.Path(tok).is_file(), f"generate: tokenizer {tok} does not exist")
