"""Checkpoints and lineage: the ONE module that calls orbax.

A run directory looks like::

    RUN_DIR/lineage.json            {stage, run_dir, config, parent: {run_dir, step} | null, ...}
    RUN_DIR/checkpoints/<step>/     one orbax checkpoint per saved step, three items:
        state/   the train state pytree (params, opt_state, step), StandardSave
        data/    the data-iterator state (JSON of ``iterator.get_state()``)
        meta/    JSON: stage, step, run config, parent lineage

Orbax writes each step into ``<step>.orbax-checkpoint-tmp-*`` and renames it when complete, so a
save killed half way is never listed as a step (and is cleaned up when the manager opens).
Saves are asynchronous; :meth:`Checkpointer.wait` (called by :meth:`close`) blocks until they land.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from interplay_jax.errors import ConfigError

CKPT_SUBDIR = "checkpoints"
LINEAGE_FILE = "lineage.json"
ITEMS = ("state", "data", "meta")


def _jsonable(x):
    """Make a (possibly numpy-laden) nested structure JSON-serializable."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, bytes):
        return x.decode("latin-1")
    return x


def config_to_dict(config) -> dict:
    """An ml_collections ConfigDict (or plain dict) as a JSON-friendly dict."""
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return json.loads(json.dumps(_jsonable(config), default=str))


class Checkpointer:
    """Keep-N, asynchronous orbax checkpoints of (state, data-iterator state, metadata)."""

    def __init__(self, run_dir, max_to_keep: int | None = 3, async_save: bool = True,
                 read_only: bool = False):
        self.run_dir = pathlib.Path(run_dir).absolute()
        self.directory = self.run_dir / CKPT_SUBDIR
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
            enable_async_checkpointing=async_save, cleanup_tmp_directories=not read_only)
        if read_only and not self.directory.is_dir():
            raise ConfigError(f"no checkpoints in {self.run_dir} (missing {self.directory})")
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    # ------------------------------------------------------------------ queries
    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    # ------------------------------------------------------------------ save / restore
    def save(self, step: int, state, data_state: Any = None, meta: dict | None = None,
             force: bool = True) -> bool:
        """Start saving ``state`` (any pytree of arrays) at ``step``; returns whether it saves."""
        # Save a private copy: the caller's next jitted step donates (reuses) these buffers while the
        # async save may still be reading them (on CPU the host "copy" can alias device memory).
        state = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)
        meta = dict(meta or {})
        meta.setdefault("step", int(step))
        meta.setdefault("saved_at", datetime.datetime.now(datetime.timezone.utc).isoformat())
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(_jsonable({"state": data_state})),
            meta=ocp.args.JsonSave(_jsonable(meta)))
        return self._mngr.save(int(step), args=args, force=force)

    def restore(self, step: int | None = None, target=None):
        """Restore ``(state, data_state, meta)`` at ``step`` (latest when None).

        ``target`` is a pytree like the saved state whose leaves are arrays or
        ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``: restored arrays get those shardings,
        so a checkpoint saved on one mesh restores onto another. Without a target arrays come
        back on the default device as saved.
        """
        step = self.latest_step() if step is None else int(step)
        if step is None or step not in self.all_steps():
            raise ConfigError(f"no complete checkpoint at step {step} in {self.directory} "
                              f"(have {self.all_steps()})")
        state_args = (ocp.args.StandardRestore(abstract_target(target)) if target is not None
                      else ocp.args.StandardRestore())
        out = self._mngr.restore(step, args=ocp.args.Composite(
            state=state_args, data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        data = out["data"] or {}
        return out["state"], data.get("state"), out["meta"] or {}

    def wait(self) -> None:
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def abstract_target(tree, shardings=None):
    """ShapeDtypeStruct targets for ``tree`` (keeps each array's sharding unless ``shardings``)."""
    def one(x, s=None):
        if isinstance(x, jax.ShapeDtypeStruct) and s is None:
            return x
        sharding = s if s is not None else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)
    if shardings is None:
        return jax.tree.map(one, tree)
    return jax.tree.map(one, tree, shardings)


# ---------------------------------------------------------------------------- params


def resolve_checkpoint(path, step: int | None = None) -> tuple[pathlib.Path, int]:
    """``path`` is a run dir, its ``checkpoints/`` dir, or one step dir -> (run_dir, step)."""
    p = pathlib.Path(path).absolute()
    if not p.exists():
        raise ConfigError(f"parent checkpoint path {p} does not exist")
    if p.name.isdigit() and p.parent.name == CKPT_SUBDIR:
        run_dir, step = p.parent.parent, int(p.name) if step is None else step
    elif p.name == CKPT_SUBDIR:
        run_dir = p.parent
    else:
        run_dir = p
    steps = complete_steps(run_dir)
    if not steps:
        raise ConfigError(f"no complete checkpoint in {run_dir / CKPT_SUBDIR}")
    step = steps[-1] if step is None else int(step)
    if step not in steps:
        raise ConfigError(f"no checkpoint at step {step} in {run_dir / CKPT_SUBDIR} (have {steps})")
    return run_dir, step


def complete_steps(run_dir) -> list[int]:
    """Steps with a finalized checkpoint (orbax renames ``<step>.orbax-checkpoint-tmp-*`` to
    ``<step>`` only when the save completed), without opening a manager."""
    d = pathlib.Path(run_dir) / CKPT_SUBDIR
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isdigit())


def _checkpoint_state_dir(run_dir, step) -> pathlib.Path:
    return pathlib.Path(run_dir) / CKPT_SUBDIR / str(int(step)) / "state"


def restore_params(run_dir_or_ckpt, target=None, step: int | None = None, key: str = "params"):
    """Restore only the ``key`` subtree (the params) of a checkpoint's state: for ``init_from``.

    ``target``: pytree of arrays / ShapeDtypeStruct(sharding=...) shaped like the params; None
    restores host numpy arrays. Returns ``(params, run_dir, step)``.
    """
    run_dir, step = resolve_checkpoint(run_dir_or_ckpt, step)
    state_dir = _checkpoint_state_dir(run_dir, step)
    with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as ckptr:
        if target is None:
            meta = ckptr.metadata(state_dir)
            tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta.tree
            if key not in tree:
                raise ConfigError(f"checkpoint {state_dir} has no {key!r} entry (has {sorted(tree)})")
            item = {key: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree[key])}
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        else:
            item = {key: abstract_target(target)}
            restore_args = ocp.checkpoint_utils.construct_restore_args(item)
        out = ckptr.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
    return out[key], run_dir, step


def path_parts(path) -> list[str]:
    """A container-independent key path: nnx.State ``['layers'][0]['q'].value`` and the plain dict
    restored without a target ``['layers']['0']['q']['value']`` both become
    ``["layers", "0", "q", "value"]``."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return parts


def _path_name(path) -> str:
    return "/".join(path_parts(path))


def params_digest(params) -> str:
    """sha256 over sorted (leaf path, dtype, shape, bytes): equal params give equal digests
    (whatever the container: nnx.State, nested dicts, sharded or host arrays)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    items = sorted(((_path_name(path), leaf) for path, leaf in leaves), key=lambda t: t[0])
    h = hashlib.sha256()
    for name, leaf in items:
        arr = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        h.update(name.encode())
        h.update(f"|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- lineage


def write_lineage(run_dir, stage: str, config=None, parent: dict | None = None, **extra) -> dict:
    """Write ``RUN_DIR/lineage.json``; ``parent`` is {run_dir, step} or None (a first run)."""
    run_dir = pathlib.Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {"stage": stage, "run_dir": str(run_dir), "config": config_to_dict(config),
              "parent": None if parent is None else {"run_dir": str(pathlib.Path(parent["run_dir"]).absolute()),
                                                     "step": int(parent["step"])},
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(), **_jsonable(extra)}
    tmp = run_dir / (LINEAGE_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, run_dir / LINEAGE_FILE)
    return record


def read_lineage(run_dir) -> dict:
    path = pathlib.Path(run_dir) / LINEAGE_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} has no {LINEAGE_FILE} (not a run directory)")
    return json.loads(path.read_text())


def lineage_chain(run_dir) -> list[dict]:
    """[this run, its parent, ..., the first run]; each entry gets ``step`` = the step used
    (the latest checkpoint for the run itself, the parent's recorded step for ancestors). A chain
    that started from an HF directory ends with ``{"stage": "hf", "run_dir": DIR, "step": None}``."""
    chain, seen = [], set()
    run_dir, step = pathlib.Path(run_dir).absolute(), None
    while run_dir is not None:
        if str(run_dir) in seen:
            raise ConfigError(f"lineage loop at {run_dir}")
        seen.add(str(run_dir))
        if chain and not (run_dir / LINEAGE_FILE).is_file() and (run_dir / "config.json").is_file():
            chain.append({"stage": "hf", "run_dir": str(run_dir), "step": None, "config": {}})  # an HF dir
            break                                                   # (e.g. a released checkpoint): the start
        rec = read_lineage(run_dir)
        if step is None:
            steps = complete_steps(run_dir)
            step = steps[-1] if steps else None
        chain.append({**rec, "run_dir": str(run_dir), "step": step})
        parent = rec.get("parent")
        run_dir, step = ((pathlib.Path(parent["run_dir"]), parent["step"]) if parent else (None, None))
    return chain
