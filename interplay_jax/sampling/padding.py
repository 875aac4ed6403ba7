"""Padding token sequences into static shapes (numpy): buckets, left / right padding.

Static shapes keep compilations few: a prompt length is rounded up to a bucket and a number of
rows to a power of two.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048)


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def bucket_length(length: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """Smallest bucket >= length (beyond the largest: the next multiple of the largest)."""
    for b in sorted(buckets):
        if length <= b:
            return b
    top = max(buckets)
    return -(-length // top) * top


def pad(seqs: Sequence[Sequence[int]], length: int, pad_id: int, *, side: str, rows: int | None = None):
    """(tokens [rows, length] int32, valid [rows, length] bool). ``side="left"``: each sequence ends at
    the last column; ``"right"``: each starts at column 0. Rows beyond ``len(seqs)`` are all padding."""
    rows = len(seqs) if rows is None else rows
    tokens_RxL = np.full((rows, length), pad_id, np.int32)
    valid_RxL = np.zeros((rows, length), bool)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"sequence of {len(s)} tokens exceeds the padded length {length}")
        cols = slice(length - len(s), length) if side == "left" else slice(0, len(s))
        tokens_RxL[i, cols] = s
        valid_RxL[i, cols] = True
    return tokens_RxL, valid_RxL
