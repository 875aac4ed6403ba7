"""Evaluation sets (docs/metrics.md): generated per (op, context, mode), or the published JSONL files.

An eval item is a dict ``{"id", "op", "context", "mode", "record"}`` where ``record`` is the
problem in the published schema (``context`` = ``record["template"]``).

Generated sets use their own seed namespace ("interplay_jax.eval", seed, op, context, mode, i) —
a namespace no training stream uses — and additionally drop any problem whose content hash is in
``exclude_hashes`` (e.g. the hashes of a training set, see
:func:`interplay_jax.task.writer.hashes_of_paths`) or already in the set.
So eval problems are disjoint by hash from the training data that is passed in, and deduplicated.
No JAX here.
"""
from __future__ import annotations

import pathlib
import re
from typing import Iterable, Sequence

from interplay_jax.errors import ConfigError, DataError
from interplay_jax.task.contexts import get_context
from interplay_jax.task.generator import FORWARD, check_mode, check_op, generate_problem, stable_rng
from interplay_jax.task.writer import jsonl_files, read_jsonl, record_hash

MAX_ATTEMPTS_FACTOR = 20  # give up on a cell after this many draws per wanted problem


def eval_item(record: dict) -> dict:
    """A published-schema record as an eval item {id, op, context, mode, record}."""
    rid = record.get("id") or record_hash(record)
    return {"id": str(rid), "op": int(record["op"]), "context": record["template"], "mode": record["mode"],
            "record": record}


def generate_evalset(ops: Iterable[int] = range(2, 21), contexts: Sequence[str] = ("A", "B", "C"),
                     modes: Sequence[str] = (FORWARD,), per_op: int = 200, seed: int = 0,
                     exclude_hashes: Iterable[str] = ()) -> list[dict]:
    """``per_op`` problems for each op, spread round-robin over the (context, mode) cells.

    Deterministic in (ops, contexts, modes, per_op, seed, exclude_hashes).
    """
    ops = [check_op(int(op)) for op in ops]
    ctx_names = [get_context(c).name for c in contexts]
    modes = [check_mode(m) for m in modes]
    if per_op < 1:
        raise ConfigError(f"eval prompts per op must be >= 1, got {per_op}")
    cells = [(c, m) for c in ctx_names for m in modes]
    seen = set(exclude_hashes)
    items = []
    for op in ops:
        for ci, (ctx, mode) in enumerate(cells):
            want = per_op // len(cells) + (ci < per_op % len(cells))
            got, attempt = 0, 0
            while got < want:
                if attempt >= MAX_ATTEMPTS_FACTOR * max(want, 1) + 100:
                    raise DataError(f"could not draw {want} distinct eval problems for op{op} {ctx} {mode} "
                                    f"disjoint from the excluded set")
                s = stable_rng("interplay_jax.eval", seed, op, ctx, mode, attempt).getrandbits(62)
                attempt += 1
                rec = generate_problem(op, ctx, mode, s)
                h = record_hash(rec)
                if h in seen:
                    continue
                seen.add(h)
                rec = dict(rec, id=h)
                items.append(eval_item(rec))
                got += 1
    return items


_OP_IN_NAME = re.compile(r"op(\d+)")


def load_eval_files(paths: Sequence[str] | str, ops: Iterable[int] | None = None,
                    per_op: int | None = None) -> list[dict]:
    """Items from published files (e.g. ``val/opN-200.jsonl``, ``test/opN-1k.jsonl``) or any JSONL
    in the published schema; a directory is searched recursively. Keeps ops in ``ops`` (all if
    None) and the first ``per_op`` items of each op. A malformed line raises DataError "file:line: ..."."""
    if isinstance(paths, (str, pathlib.Path)):
        paths = [p for p in str(paths).split(",") if p]
    wanted = None if ops is None else {int(o) for o in ops}
    items, per_op_count, seen = [], {}, set()
    for p in paths:
        for f in jsonl_files(p):
            m = _OP_IN_NAME.search(f.name)
            if wanted is not None and m and int(m.group(1)) not in wanted:
                continue  # skip whole files of unwanted ops without reading them
            for n, rec in enumerate(read_jsonl(f), 1):
                if rec["mode"] not in ("normalforward", "forwardreverse"):
                    raise DataError(f"{f}:{n}: unknown mode {rec['mode']!r}")
                try:
                    get_context(rec["template"])
                except ConfigError:
                    raise DataError(f"{f}:{n}: unknown template {rec['template']!r}") from None
                op = rec["op"]
                if wanted is not None and op not in wanted:
                    continue
                if per_op is not None and per_op_count.get(op, 0) >= per_op:
                    continue
                it = eval_item(rec)
                if it["id"] in seen:
                    continue
                seen.add(it["id"])
                per_op_count[op] = per_op_count.get(op, 0) + 1
                items.append(it)
    if not items:
        raise ConfigError(f"no eval problems found in {', '.join(map(str, paths))} for ops {sorted(wanted or [])}")
    return items
