"""Durable file primitives shared by every writer and checker (JSONL shards, token shards,
checkpoint digests, lineage) and the file hash every integrity check uses. No JAX, no numpy."""
from __future__ import annotations

import hashlib
import os
import pathlib


def write_atomic(path, data: str | bytes, *, sync_dir: bool = False) -> None:
    """Write ``data`` to ``path`` through ``path.tmp``: flush, fsync, rename over ``path`` (a reader
    sees the old file or the new one, never part of one); ``sync_dir`` also fsyncs the directory, so
    the rename itself survives a crash."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_dir:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def file_digest(path, chunk: int = 1 << 24) -> str:
    """sha256 of a file's bytes. hashlib releases the GIL on large blocks, so threads hash several
    files in parallel (token shards)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> pathlib.Path:
    """Where built artifacts are cached (the default tokenizer, compiled programs, the CPU kernel):
    ``$INTERPLAY_CACHE`` or ``~/.cache/interplay_jax``."""
    root = os.environ.get("INTERPLAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "interplay_jax")
    return pathlib.Path(root)
