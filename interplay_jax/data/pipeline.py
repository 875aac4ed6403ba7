"""The grain data pipeline for next-token training (pre-training and mid-training).

    source (generator: record per global index | JSONL files, token budget per op | token shards)
      -> [process_index::process_count]      per-host shard of the record stream
      -> filter (drop any record whose content hash is held out / in an eval split)
      -> to_iter_dataset (thread prefetch)
      -> FFDPackIterDataset: tokenize a buffer of documents at once (the tokenizers library's batch
         encoding, in Rust threads outside the GIL; token shards come tokenized) and pack it
         first-fit-decreasing into rows of seq_len
      -> batch(B)  ->  dict(tokens, segment_ids, positions) int32 [B, T]
      -> mp_prefetch (``workers`` > 0): each worker process runs all of the above on its own slice
         of the record stream (records w, w + workers, ...); the main process interleaves batches.

``segment_ids`` numbers the documents of a row 1, 2, ... and is 0 on padding; ``positions`` restart
at 0 in every document. Documents are never split; a document longer than seq_len is dropped and
counted. The iterator's ``get_state()`` is a small JSON-able dict and ``set_state`` restores the
stream exactly (the packer re-reads its current buffer from the recorded parent state).
"""
from __future__ import annotations

import os
import pathlib
import threading
import time
from typing import Callable, Iterable, Sequence

import grain
import numpy as np
from absl import flags

from interplay_jax.errors import DataError
from interplay_jax.task.writer import read_jsonl, record_hash, split_files

# ---------------------------------------------------------------------------- records

class GeneratorSource:
    """A grain data source: record ``i`` is ``mixture.record(seed, i)`` (deterministic)."""

    def __init__(self, mixture, seed: int, length: int = 2**40):
        self.mixture, self.seed, self.length = mixture, int(seed), int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return self.mixture.record(self.seed, int(index))


def heldout_hashes(data_dir, splits: Sequence[str] | None = None) -> set[str]:
    """Content hashes of every record in the non-train splits under ``data_dir`` (heldout/,
    val/, test/, eval/, ...: every split directory except train/), or in ``splits``."""
    root = pathlib.Path(data_dir)
    if splits is None:
        splits = [d.name for d in sorted(root.iterdir()) if d.is_dir() and d.name != "train"] if root.is_dir() else []
    return {record_hash(r) for s in splits for f in split_files(data_dir, s) for r in read_jsonl(f)}


def load_train_records(data_dir, tokens_per_op: dict | None, count_tokens: Callable[[dict], int],
                       total_tokens: int | None = None, strict: bool = False) -> list[dict]:
    """Records of ``train/{op}/*.jsonl`` in file order, per op up to its token budget.

    ``tokens_per_op``: {op: tokens}; ops not named are left out. None: every op, no limit.
    ``total_tokens`` caps the sum (used when the budget is one number). When an op's files hold
    fewer tokens than its budget: DataError if ``strict``, else a printed note (the training stream
    then repeats the data: several epochs).
    """
    root = pathlib.Path(data_dir) / "train"
    if not root.is_dir():
        raise DataError(f"{root}: no train/ directory (expected the published layout train/{{op}}/*.jsonl)")
    op_dirs = {}
    for d in sorted(root.iterdir()):
        if d.is_dir():
            key = d.name[2:] if d.name.startswith("op") else d.name
            if key.isdigit():
                op_dirs[int(key)] = d
    ops = sorted(op_dirs) if tokens_per_op is None else sorted(int(o) for o in tokens_per_op)
    out = []
    for op in ops:
        if op not in op_dirs:
            raise DataError(f"{root}: no train data for op {op} (have ops {sorted(op_dirs)})")
        budget = None if tokens_per_op is None else int(tokens_per_op[op] if op in tokens_per_op
                                                        else tokens_per_op[str(op)])
        used = 0
        for f in sorted(op_dirs[op].glob("*.jsonl")):
            for r in read_jsonl(f):
                if budget is not None and used >= budget:
                    break
                out.append(r)
                used += count_tokens(r)
        if budget is not None and used < budget:
            msg = f"{op_dirs[op]}: op {op} holds {used} tokens, fewer than its budget {budget}"
            if strict:
                raise DataError(msg)
            print(f"note: {msg}; the data repeat (more than one epoch)")
    if total_tokens is not None:
        kept, used = [], 0
        for r in out:
            if used >= total_tokens:
                break
            kept.append(r)
            used += count_tokens(r)
        out = kept
    return out


# ---------------------------------------------------------------------------- packing


def ffd_pack(docs: Sequence[np.ndarray], seq_len: int) -> list[list[int]]:
    """First-fit-decreasing: bins (lists of doc indices) of total length <= seq_len.

    Docs are placed longest first (ties in stream order) into the first bin with room; bins are
    returned in the order they were opened. Every doc must have 1 <= len <= seq_len.
    """
    order = sorted(range(len(docs)), key=lambda i: (-len(docs[i]), i))
    room = np.zeros(len(docs), np.int64)
    bins: list[list[int]] = []
    for i in order:
        n = len(docs[i])
        fits = np.flatnonzero(room[:len(bins)] >= n)
        if fits.size:
            b = int(fits[0])
        else:
            b = len(bins)
            bins.append([])
            room[b] = seq_len
        bins[b].append(i)
        room[b] -= n
    return bins


def pack_row(docs: Sequence[np.ndarray], seq_len: int, pad_id: int) -> dict:
    """One packed row: dict(tokens, segment_ids, positions) int32 [seq_len]."""
    tokens = np.full(seq_len, pad_id, np.int32)
    segment_ids = np.zeros(seq_len, np.int32)
    positions = np.zeros(seq_len, np.int32)
    at = 0
    for k, d in enumerate(docs, 1):
        n = len(d)
        tokens[at:at + n] = d
        segment_ids[at:at + n] = k
        positions[at:at + n] = np.arange(n, dtype=np.int32)
        at += n
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


class _FFDPackIterator(grain.DatasetIterator):
    def __init__(self, parent, seq_len: int, buffer_docs: int, pad_id: int, encode_batch=None):
        super().__init__(parent)
        self._seq_len, self._buffer_docs, self._pad_id = seq_len, buffer_docs, pad_id
        self._encode_batch = encode_batch
        self._buffer_start = parent.get_state()  # parent state before the current buffer
        self._rows: list[dict] = []
        self._emitted = 0          # rows of the current buffer already returned
        self._dropped = 0          # too-long documents dropped before the current buffer
        self._buffer_dropped = 0   # ... and inside the current buffer
        self._loaded = False

    @property
    def dropped(self) -> int:
        return self._dropped + (self._buffer_dropped if self._loaded else 0)

    def _fill(self) -> None:
        self._buffer_start = self._parent.get_state()
        items = []
        for _ in range(self._buffer_docs):
            try:
                items.append(next(self._parent))
            except StopIteration:
                break
        if self._encode_batch is not None and items:
            items = self._encode_batch(items)
        docs, dropped = [], 0
        for d in items:
            d = np.asarray(d, np.int32)
            if len(d) > self._seq_len or len(d) == 0:
                dropped += 1
            else:
                docs.append(d)
        self._rows = [pack_row([docs[i] for i in b], self._seq_len, self._pad_id)
                      for b in ffd_pack(docs, self._seq_len)]
        self._buffer_dropped, self._emitted, self._loaded = dropped, 0, True

    def __next__(self) -> dict:
        while not self._loaded or self._emitted >= len(self._rows):
            if self._loaded:
                if not self._rows:
                    raise StopIteration
                self._dropped += self._buffer_dropped
            self._loaded = False
            self._fill()
        row = self._rows[self._emitted]
        self._emitted += 1
        return row

    def get_state(self) -> dict:
        if self._loaded and self._emitted >= len(self._rows) and self._rows:
            # buffer used up: the next row comes from a fresh buffer at the parent's position
            return {"parent": self._parent.get_state(), "emitted": 0,
                    "dropped": self._dropped + self._buffer_dropped}
        return {"parent": self._buffer_start, "emitted": self._emitted, "dropped": self._dropped}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._dropped = int(state["dropped"])
        self._loaded = False
        self._fill()
        self._emitted = int(state["emitted"])


class FFDPackIterDataset(grain.IterDataset):
    """Packs a stream of documents into rows of ``seq_len`` with first-fit-decreasing over a buffer of
    ``buffer_docs`` documents (documents never split; too long ones dropped). The stream holds 1-D
    token arrays, or records that ``encode_batch(records) -> [token ids]`` tokenizes a buffer at a time."""

    def __init__(self, parent: grain.IterDataset, seq_len: int, buffer_docs: int = 256, pad_id: int = 1,
                 encode_batch: Callable[[list], list] | None = None):
        super().__init__(parent)
        self._seq_len, self._buffer_docs, self._pad_id = int(seq_len), int(buffer_docs), int(pad_id)
        self._encode_batch = encode_batch

    def __iter__(self) -> _FFDPackIterator:
        return _FFDPackIterator(self._parent.__iter__(), self._seq_len, self._buffer_docs, self._pad_id,
                                self._encode_batch)

    def __str__(self) -> str:
        return f"FFDPackIterDataset(seq_len={self._seq_len}, buffer_docs={self._buffer_docs})"


# ---------------------------------------------------------------------------- the pipeline


def build_dataset(source, encode_batch: Callable[[list], list] | None, *, seq_len: int, batch_size: int,
                  pad_id: int, process_index: int = 0, process_count: int = 1, exclude_hashes: Iterable[str] = (),
                  buffer_docs: int = 256, shuffle_seed: int | None = None, num_epochs: int | None = 1,
                  num_threads: int = 0, workers: int = 0, worker_buffer: int = 2) -> grain.IterDataset:
    """The training dataset of one host: batches dict(tokens, segment_ids, positions) [B, T].

    ``source``: any ``__len__/__getitem__`` of records (e.g. :class:`GeneratorSource` or a list of
    JSONL records, then ``encode_batch(records) -> [document + EOS ids]``), or a grain IterDataset of
    token arrays that shards and shuffles itself (:class:`interplay_jax.data.shards.TokenStream`;
    ``encode_batch=None``; shuffle, epochs and host slicing do not apply). ``batch_size`` is the per-host batch. ``shuffle_seed``: shuffle a
    finite source; the generator source is already random per index. ``num_epochs``: passes over a
    finite source (None: forever). ``workers`` > 0: that many worker processes, each running the
    pipeline on its own slice of the stream, ``worker_buffer`` batches ahead (the batch order then
    depends on the worker count: a run must resume with the same one).
    """
    if isinstance(source, grain.IterDataset):    # a stream that shards and shuffles itself (token shards)
        it = source
    else:
        ds = grain.MapDataset.source(source)
        if shuffle_seed is not None:
            ds = ds.shuffle(seed=int(shuffle_seed))
        if num_epochs != 1:
            ds = ds.repeat(num_epochs)
        ds = ds[process_index::process_count]
        excluded = frozenset(exclude_hashes)
        if excluded:
            ds = ds.filter(lambda r: record_hash(r) not in excluded)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4 * buffer_docs
                                                  if num_threads else 0))
    it = FFDPackIterDataset(it, seq_len, buffer_docs=buffer_docs, pad_id=pad_id, encode_batch=encode_batch)
    it = it.batch(batch_size, drop_remainder=True)
    if workers > 0:
        if not flags.FLAGS.is_parsed():   # grain's worker processes read absl flags (a notebook has none parsed)
            flags.FLAGS.mark_as_parsed()
        # Batches come back pickled, not in shared memory: grain's shared-memory hand-over left the
        # batches still in flight when a run ended un-unlinked ("resource_tracker: There appear to be
        # 12 leaked shared_memory objects" after every run with 2 workers). The map keeps the batch
        # step from writing into shared memory; min_shm_size keeps the workers from copying into it.
        # A batch is a few hundred KB of int32, at a few batches a second.
        it = grain.experimental.WithOptionsIterDataset(it.map(_handed_over_pickled),
                                                       grain.experimental.DatasetOptions(min_shm_size=_NO_SHM))
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(workers),
                                                         per_worker_buffer_size=int(worker_buffer)),
                            worker_init_fn=_exit_with_parent)
    return it


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """grain worker init: the worker exits when the process that started it is gone. A run killed
    with SIGKILL (or by the OOM killer) cannot stop its workers, and grain's would otherwise wait on
    their queues forever, each holding its memory."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


_NO_SHM = 1 << 62      # grain's min_shm_size: no array is this large


def _handed_over_pickled(batch: dict) -> dict:
    """The identity, as the last transformation before ``mp_prefetch`` (see :func:`build_dataset`)."""
    return batch


def dropped_documents(iterator) -> int:
    """How many too-long documents the packers inside ``iterator`` have dropped so far (summed over
    worker processes)."""
    def walk(state) -> int:
        if isinstance(state, dict):
            if "dropped" in state and "emitted" in state:
                return int(state["dropped"])
            return sum(walk(v) for v in state.values())
        if isinstance(state, (list, tuple)):
            return sum(walk(v) for v in state)
        return 0
    return walk(iterator.get_state())


def eval_batches(records: Sequence[dict], encode: Callable[[dict], Sequence[int]], *, seq_len: int,
                 batch_size: int, pad_id: int) -> list[dict]:
    """Every record packed (FFD) into fixed batches [B, T] for held-out loss; the last batch is
    padded with empty rows (segment_ids 0, so it adds nothing to the loss)."""
    docs = [d for d in (np.asarray(encode(r), np.int32) for r in records) if 0 < len(d) <= seq_len]
    rows = [pack_row([docs[i] for i in b], seq_len, pad_id) for b in ffd_pack(docs, seq_len)]
    if not rows:
        return []
    while len(rows) % batch_size:
        rows.append(pack_row([], seq_len, pad_id))
    return [{k: np.stack([r[k] for r in rows[i:i + batch_size]]) for k in rows[0]}
            for i in range(0, len(rows), batch_size)]


def stream_stats(batch: dict) -> dict:
    """Real (non-pad) tokens and documents in a batch."""
    seg = np.asarray(batch["segment_ids"])
    return {"tokens": int((seg > 0).sum()), "documents": int(seg.max(axis=-1).sum())}
