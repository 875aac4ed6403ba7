"""Pre-tokenized token shards: generate once, train many runs (the study's 30B-token corpus pattern).

Layout of a token directory (``DIR/tokens/`` of the generate stage, or any directory)::

    manifest.json         {"format", "tokenizer": {"path", "sha256"}, "source", "seed", "shards": [...],
                           "complete": bool}; one entry per finished shard: name, docs, tokens, sha256
    shard-00000.bin       uint16 token ids, the shard's documents back to back (document + EOS each)
    shard-00000.idx.npy   int64 [docs + 1] offsets of each document in the .bin (in tokens)
    shard-00000.ops.npy   uint8 [docs] the op of each document

Documents, not packed rows: the shards do not depend on ``seq_len``. A shard is written to temporary
names, renamed, then recorded in the manifest (itself replaced atomically), so an interrupted write
leaves no half shard behind and a rerun continues after the last recorded one. Before any compute a
reader checks every shard against the manifest (file present, byte size, offsets) and the manifest's
tokenizer against the run's; a mismatch is one DataError line naming the file.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor
from typing import Mapping, Sequence

import grain
import numpy as np

from interplay_jax.errors import DataError
from interplay_jax.files import file_digest, write_atomic
from interplay_jax.task.tokenizer import Tokenizer
from interplay_jax.task.writer import read_jsonl, record_hash, split_files

FORMAT = "interplay_jax.token-shards/1"
MANIFEST = "manifest.json"
DTYPE = np.uint16          # the study's vocabulary (2,200) fits


def _files(root: pathlib.Path, name: str) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    return root / f"{name}.bin", root / f"{name}.idx.npy", root / f"{name}.ops.npy"


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def read_manifest(root) -> dict:
    path = pathlib.Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: no token-shard manifest (make shards with the generate stage, format=tokens)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid manifest ({e.msg})") from None
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a token-shard manifest (format {manifest.get('format')!r}, expected {FORMAT})")
    return manifest


def _write_manifest(root: pathlib.Path, manifest: dict) -> None:
    write_atomic(root / MANIFEST, json.dumps(manifest, indent=1).encode())


class ShardWriter:
    """Write token shards in order (resumable, see the module docstring).

    ``settings`` (source, seed, tokenizer...) is stored in the manifest; reopening a directory written
    with other settings is a DataError. ``next_shard`` tells a resumed producer where to continue.
    """

    def __init__(self, root, settings: Mapping):
        self.root = pathlib.Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / MANIFEST
        if path.is_file():
            self.manifest = read_manifest(self.root)
            if self.manifest.get("settings") != dict(settings):
                raise DataError(f"{path}: written with other settings {self.manifest.get('settings')}; use a new "
                                f"directory or delete this one")
        else:
            self.manifest = {"format": FORMAT, "settings": dict(settings), "shards": [], "complete": False}
        for f in self.root.glob("*.tmp"):     # leftovers of an interrupted shard
            f.unlink()

    @property
    def next_shard(self) -> int:
        return len(self.manifest["shards"])

    @property
    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.manifest["shards"])

    def write_shard(self, docs: Sequence[Sequence[int]], ops: Sequence[int], extra: Mapping | None = None) -> dict:
        """Write one shard of ``docs`` (token id lists) and record it; returns its manifest entry."""
        name = f"shard-{self.next_shard:05d}"
        lengths = np.fromiter((len(d) for d in docs), np.int64, len(docs))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.fromiter((t for d in docs for t in d), DTYPE, int(offsets[-1])) if len(docs) else np.zeros(0, DTYPE)
        blob = flat.tobytes()
        bin_path, idx_path, ops_path = _files(self.root, name)
        write_atomic(idx_path, _npy_bytes(offsets))
        write_atomic(ops_path, _npy_bytes(np.asarray(ops, np.uint8)))
        write_atomic(bin_path, blob)
        entry = {"name": name, "docs": len(docs), "tokens": int(offsets[-1]), "sha256": hashlib.sha256(blob).hexdigest(),
                 **dict(extra or {})}
        self.manifest["shards"].append(entry)
        _write_manifest(self.root, self.manifest)
        return entry

    def finish(self, **info) -> dict:
        self.manifest.update(info, complete=True)
        _write_manifest(self.root, self.manifest)
        return self.manifest


# ---------------------------------------------------------------------------- reading


def check_shards(root, tokenizer_sha256: str | None = None, verify_contents: bool = False) -> dict:
    """The manifest of ``root`` after checking every shard against it (presence, byte sizes, offsets)
    and, when given, that the shards were made with the tokenizer of this sha256; with
    ``verify_contents`` every ``.bin`` is also hashed against its manifest sha256 (a flipped bit is
    caught; ~1 s per GB per core, shards in parallel threads). DataError (one line naming the file) on
    the first problem."""
    root = pathlib.Path(root)
    manifest = read_manifest(root)
    if not manifest.get("complete"):
        raise DataError(f"{root / MANIFEST}: the shards are incomplete (rerun the generate stage to finish them)")
    made_with = (manifest.get("settings", {}).get("tokenizer") or {}).get("sha256")
    if tokenizer_sha256 and made_with and made_with != tokenizer_sha256:
        raise DataError(f"{root / MANIFEST}: shards were made with tokenizer sha256 {made_with[:12]}..., this run's "
                        f"tokenizer is {tokenizer_sha256[:12]}... (regenerate the shards or use that tokenizer)")
    if not manifest["shards"]:
        raise DataError(f"{root / MANIFEST}: no shards")
    for s in manifest["shards"]:
        bin_path, idx_path, ops_path = _files(root, s["name"])
        for f in (bin_path, idx_path, ops_path):
            if not f.is_file():
                raise DataError(f"{f}: missing (listed in {root / MANIFEST})")
        if bin_path.stat().st_size != 2 * s["tokens"]:
            raise DataError(f"{bin_path}: {bin_path.stat().st_size} bytes, the manifest says {2 * s['tokens']} "
                            f"(truncated or corrupt)")
        try:
            offsets = np.load(idx_path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{idx_path}: unreadable ({e})") from None
        if len(offsets) != s["docs"] + 1 or int(offsets[-1]) != s["tokens"] or np.any(np.diff(offsets) < 0):
            raise DataError(f"{idx_path}: offsets do not match the manifest ({s['docs']} docs, {s['tokens']} tokens)")
    if verify_contents:
        paths = [_files(root, s["name"])[0] for s in manifest["shards"]]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            digests = list(pool.map(file_digest, paths))
        for s, path, got in zip(manifest["shards"], paths, digests):
            if s.get("sha256") and got != s["sha256"]:
                raise DataError(f"{path}: contents differ from the manifest's sha256 (corrupt shard; regenerate it)")
    return manifest


class TokenShardSource:
    """A grain data source over the documents of a token directory: item i is document i as an int32
    array (shards memory-mapped; offsets in memory). Call :func:`check_shards` first."""

    def __init__(self, root, manifest: dict | None = None):
        self.root = pathlib.Path(root)
        manifest = manifest or read_manifest(self.root)
        self._names = [s["name"] for s in manifest["shards"]]
        self._offsets = [None] * len(self._names)
        self._bins = [None] * len(self._names)
        counts = [s["docs"] for s in manifest["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.tokens = sum(s["tokens"] for s in manifest["shards"])

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, k: int):
        if self._bins[k] is None:      # opened lazily: picklable to worker processes before first use
            bin_path, idx_path, _ = _files(self.root, self._names[k])
            self._offsets[k] = np.load(idx_path, allow_pickle=False)
            self._bins[k] = np.memmap(bin_path, dtype=DTYPE, mode="r")
        return self._bins[k], self._offsets[k]

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        tokens, offsets = self._shard(k)
        j = index - int(self._starts[k])
        return np.asarray(tokens[offsets[j]:offsets[j + 1]], np.int32)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_bins"] = [None] * len(self._names)       # memmaps are reopened in the worker
        state["_offsets"] = [None] * len(self._names)
        return state


class TokenStream(grain.IterDataset):
    """This host's documents of a token directory, forever: epoch e visits every document once in the
    order of a permutation seeded by (seed, e); host p of P takes positions p, p + P, ... The state
    is (epoch, position): tiny, and a restore continues exactly. ~10x cheaper per document than
    grain's shuffled MapDataset chain, which is what lets one process feed a GPU from shards."""

    def __init__(self, source: TokenShardSource, seed: int, process_index: int = 0, process_count: int = 1):
        super().__init__()
        self.source, self.seed = source, int(seed)
        self.process_index, self.process_count = int(process_index), int(process_count)

    def __iter__(self):
        return _TokenStreamIterator(self)

    def __str__(self) -> str:
        return f"TokenStream({self.source.root}, {len(self.source)} documents)"


class _TokenStreamIterator(grain.DatasetIterator):
    def __init__(self, ds: TokenStream):
        super().__init__()
        self._ds = ds
        self._epoch, self._pos, self._order = 0, ds.process_index, None

    def _permutation(self):
        if self._order is None:
            n = len(self._ds.source)
            order = np.random.default_rng([self._ds.seed, self._epoch]).permutation(n)
            self._order = order.astype(np.int32 if n < 2 ** 31 else np.int64)
        return self._order

    def __next__(self) -> np.ndarray:
        order = self._permutation()
        if self._pos >= len(order):
            self._epoch += 1
            self._pos -= len(order)
            self._order = None
            order = self._permutation()
        doc = self._ds.source[int(order[self._pos])]
        self._pos += self._ds.process_count
        return doc

    def get_state(self) -> dict:
        return {"epoch": self._epoch, "pos": self._pos}

    def set_state(self, state: dict) -> None:
        if int(state["epoch"]) != self._epoch:
            self._order = None
        self._epoch, self._pos = int(state["epoch"]), int(state["pos"])


# ---------------------------------------------------------------------------- writing jobs

_TOKENIZERS: dict = {}


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """``job(k) -> (documents, ops, start, end)``: shard k of a train stream, i.e. stream records
    [k * per_shard, (k + 1) * per_shard) minus ``exclude`` (content hashes), tokenized. The stream is
    the mixture's records with ``seed`` (source "mixture") or the train split of ``data_dir`` in file
    order (source "jsonl"). Picklable: worker processes run it (the tokenizer loads once per process)."""

    source: str
    mixture: object
    seed: int
    data_dir: str
    per_shard: int
    tokenizer: str                   # tokenizer.json path
    exclude: frozenset

    def __call__(self, k: int):
        start, end = k * self.per_shard, (k + 1) * self.per_shard
        if self.source == "jsonl":
            records = _jsonl_slice(self.data_dir, start, end)
        else:
            records = (self.mixture.record(self.seed, i) for i in range(start, end))
        records = [r for r in records if record_hash(r) not in self.exclude]
        tok = _TOKENIZERS.get(self.tokenizer) or _TOKENIZERS.setdefault(self.tokenizer, Tokenizer.load(self.tokenizer))
        return tok.encode_documents(records), [int(r["op"]) for r in records], start, end


def _jsonl_slice(data_dir: str, start: int, end: int):
    """Records [start, end) of the train split of a published-layout directory, in file order."""
    i = 0
    for f in split_files(data_dir, "train"):
        for r in read_jsonl(f):
            if i >= end:
                return
            if i >= start:
                yield r
            i += 1
