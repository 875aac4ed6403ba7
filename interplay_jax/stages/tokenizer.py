"""Stage ``tokenizer``: train the byte-level BPE on formatted documents, save {workdir}/tokenizer.json.

See configs/tokenizer.py for the fields. Also writes {workdir}/tokenizer_stats.json (vocabulary size,
documents used, mean / max tokens per document on up to 1,000 of them).
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import pathlib

from tqdm import tqdm

from interplay_jax.config import as_dict, parse_list, require
from interplay_jax.errors import ConfigError
from interplay_jax.task import tokenizer as tok_lib
from interplay_jax.task.formats import format_document
from interplay_jax.task.mixture import get_mixture
from interplay_jax.task.writer import read_jsonl


def iter_records(config):
    """The records the tokenizer is trained on (generator mixture or JSONL files)."""
    n = int(config.num_docs)
    if config.source == "mixture":
        mixture = get_mixture(as_dict(config.mixture), modes=parse_list(config.get("modes", "normalforward")))
        return (mixture.record(int(config.seed), i) for i in range(n)), n
    if config.source == "jsonl":
        files = sorted(glob.glob(str(config.jsonl), recursive=True))
        if not files:
            raise ConfigError(f"tokenizer: jsonl pattern {config.jsonl!r} matches no file")
        records = itertools.chain.from_iterable(read_jsonl(f) for f in files)
        return (records if n <= 0 else itertools.islice(records, n)), (n if n > 0 else None)
    raise ConfigError(f"tokenizer: unknown source {config.source!r}; expected mixture, jsonl or file")


def run(config):
    os.makedirs(str(config.workdir), exist_ok=True)
    out = os.path.join(str(config.workdir), "tokenizer.json")
    sample: list = []
    n_docs = 0
    if config.source == "file":
        tokenizer = tok_lib.Tokenizer.load(str(config.file))
    else:
        records, total = iter_records(config)

        def documents():
            nonlocal n_docs
            for record in tqdm(records, total=total, desc="tokenizer docs", disable=not config.get("progress", True)):
                n_docs += 1
                if len(sample) < 1000:
                    sample.append(record)
                yield format_document(record)

        tokenizer = tok_lib.train_tokenizer(documents(), vocab_size=int(config.vocab_size),
                                            min_frequency=int(config.min_frequency))
        if n_docs == 0:
            raise ConfigError("tokenizer: no training documents (num_docs is 0 or the files are empty)")
    path = tokenizer.save(out)
    lengths = [len(tokenizer.encode_document(r)) for r in sample]
    stats = {"vocab_size": tokenizer.vocab_size, "source": str(config.source), "num_docs": n_docs,
             "mean_tokens_per_doc": sum(lengths) / len(lengths) if lengths else None,
             "max_tokens_per_doc": max(lengths) if lengths else None}
    with open(os.path.join(str(config.workdir), "tokenizer_stats.json"), "w") as f:
        json.dump(stats, f, indent=2)
    print(f"tokenizer: {path} ({tokenizer.vocab_size} entries, {n_docs} documents"
          + (f", {stats['mean_tokens_per_doc']:.0f} tokens/doc" if lengths else "") + ")")
    return path


def validate(config, check_files: bool = True) -> None:
    for key in ("workdir", "seed", "vocab_size", "min_frequency", "source", "num_docs"):
        require(key in config, f"tokenizer config has no {key!r} field")
    require(bool(str(config.workdir)), "tokenizer: workdir must be a non-empty path")
    require(isinstance(config.seed, int), f"tokenizer: seed must be an integer, got {config.seed!r}")
    require(isinstance(config.vocab_size, int) and config.vocab_size >= 266,
            f"tokenizer: vocab_size must be an integer >= 266 (10 special + 256 byte entries), "
            f"got {config.vocab_size!r}")
    require(isinstance(config.min_frequency, int) and config.min_frequency >= 1,
            f"tokenizer: min_frequency must be an integer >= 1, got {config.min_frequency!r}")
    require(isinstance(config.num_docs, int) and config.num_docs >= 0,
            f"tokenizer: num_docs must be an integer >= 0, got {config.num_docs!r}")
    require(config.source in ("mixture", "jsonl", "file"),
            f"tokenizer: unknown source {config.source!r}; expected mixture, jsonl or file")
    if config.source == "mixture":
        require(config.num_docs > 0, "tokenizer: num_docs must be > 0 with source=mixture")
        get_mixture(as_dict(config.get("mixture")), modes=parse_list(config.get("modes", "normalforward")))
    elif not check_files:
        return
    elif config.source == "jsonl":
        pattern = str(config.get("jsonl", ""))
        require(bool(pattern), "tokenizer: source=jsonl needs --config.jsonl=GLOB")
        require(bool(glob.glob(pattern, recursive=True)), f"tokenizer: jsonl pattern {pattern!r} matches no file")
    else:
        path = pathlib.Path(str(config.get("file", "")))
        require(path.is_file(), f"tokenizer: file {str(path)!r} does not exist")
