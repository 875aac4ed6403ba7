"""Checkpoints and lineage: the ONE module that calls orbax.

A run directory looks like::

    RUN_DIR/lineage.json            {stage, run_dir, config, parent: {run_dir, step} | null, ...}
    RUN_DIR/checkpoints/<step>/     one orbax checkpoint per saved step, three items:
        state/   the train state pytree (params, opt_state, step), StandardSave
        data/    the data-iterator state (JSON of ``iterator.get_state()``)
        meta/    JSON: stage, step, run config, parent lineage
                 + digest.json: a sha256 per state array (dtype, shape, bytes) and of the data and
                   meta JSON, written after the arrays are written and fsynced
    RUN_DIR/checkpoints/corrupt-<step>/   a checkpoint that failed to read or verify, moved aside
    RUN_DIR/.lock                         held (flock) by the one process running in RUN_DIR

Orbax writes each step into ``<step>.orbax-checkpoint-tmp*`` and renames it when complete, so a
save killed half way is never listed as a step (and is cleaned up when the manager opens). The
digest is written into that temporary directory before the rename, so every finished checkpoint
carries its digest; every restore verifies it (:class:`CorruptCheckpoint` names the checkpoint and
the reason in one line). Saves are asynchronous; :meth:`Checkpointer.wait` (called by
:meth:`close`) blocks until they land and reports a failed save as one :class:`CheckpointWriteError`.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import logging
import os
import pathlib
import re
import shutil
import socket
import sys
import time
import warnings
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from interplay_jax.errors import ConfigError, DataError, UserError, verbose
from interplay_jax.files import write_atomic

CKPT_SUBDIR = "checkpoints"
LINEAGE_FILE = "lineage.json"
LOCK_FILE = ".lock"
ITEMS = ("state", "data", "meta")
DIGEST_FILE = "digest.json"          # in <step>/meta/
DIGEST_FORMAT = "sha256-per-array-v1"  # meta["integrity"]: this checkpoint carries a digest
CORRUPT_PREFIX = "corrupt-"
_HASH_THREADS = max(1, min(8, os.cpu_count() or 1))
_HASH_POOL = concurrent.futures.ThreadPoolExecutor(_HASH_THREADS, thread_name_prefix="ckpt-digest")


class CorruptCheckpoint(DataError):
    """A checkpoint that cannot be read or fails its digest: one line naming it and the reason."""

    def __init__(self, step_dir, reason: str):
        self.step_dir, self.reason = pathlib.Path(step_dir), reason
        super().__init__(f"checkpoint {self.step_dir} is corrupt: {reason}")


def _remove_tree(path: pathlib.Path, attempts: int = 50) -> None:
    """Remove a failed save's directory. After a failed item, orbax's writers of the other items can
    still be finishing a file in it, which makes one ``rmtree`` leave the directory behind ("not
    empty"): retry for up to ~5 s."""
    for _ in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return
        time.sleep(0.1)


class CheckpointWriteError(UserError):
    """A checkpoint save failed (disk full, I/O error); the earlier checkpoints are untouched."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """The most useful single line of an exception from orbax / tensorstore: the first status line
    (e.g. ``OUT_OF_RANGE: Error reading ...``) in it or in its causes, else its first line."""
    chain, x = [], e
    while x is not None and len(chain) < 8:
        chain.append(x)
        x = x.__cause__ or x.__context__
    for x in chain:
        for line in str(x).splitlines():
            if re.match(r"\s*[A-Z][A-Z_]{3,}: ", line):
                text = line.strip()
                return text if len(text) <= limit else text[:limit] + "..."
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    if isinstance(e, OSError) and e.errno is not None and "Errno" not in text:
        text = f"[Errno {e.errno}] {text}"
    return text if len(text) <= limit else text[:limit] + "..."


# A failed orbax read leaves noise behind as "unraisable" exceptions: orbax closes its private
# asyncio loop while tensorstore still completes the other reads (each prints "RuntimeError: Event
# loop is closed"), and the reads' unfinished coroutines raise again when collected ("Exception
# ignored in: <coroutine object _read_array_index_and_device_put>"). They carry nothing the raised
# error does not; drop them unless verbose.
_previous_unraisablehook = sys.unraisablehook


def _from_orbax(tb) -> bool:
    """Whether a traceback passes through orbax's code."""
    while tb is not None:
        if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _drop_closed_loop_noise(unraisable) -> None:
    exc, obj = unraisable.exc_value, unraisable.object
    code = getattr(obj, "cr_code", None)
    noise = (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed") or \
        (code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename) or _from_orbax(unraisable.exc_traceback)
    if noise and not verbose():
        return
    _previous_unraisablehook(unraisable)


sys.unraisablehook = _drop_closed_loop_noise


class _AsyncioNoiseFilter(logging.Filter):
    """The same reads' futures, collected unretrieved ("Task exception was never retrieved"), are
    logged by asyncio with orbax's traceback: dropped unless verbose."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return verbose() or not (_from_orbax(getattr(exc, "__traceback__", None))
                                 or "never retrieved" in str(record.msg))


logging.getLogger("asyncio").addFilter(_AsyncioNoiseFilter())
if not verbose():
    # the same reads' coroutines, collected unawaited, also warn ("coroutine ... was never awaited");
    # this package has no coroutines of its own, so these come from orbax's failed read
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)


class _OrbaxLogFilter(logging.Filter):
    """Orbax logs a failed save (in its background thread) or restore as an absl ERROR with a
    traceback, and many warnings; we report failures as one line instead. Its records are dropped
    unless INTERPLAY_VERBOSE is set."""

    def filter(self, record: logging.LogRecord) -> bool:
        return verbose() or f"{os.sep}orbax{os.sep}" not in (record.pathname or "")


logging.getLogger("absl").addFilter(_OrbaxLogFilter())


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
    """Keep-N, asynchronous orbax checkpoints of (state, data-iterator state, metadata), each with a
    content digest that every restore verifies (see the module docstring)."""

    def __init__(self, run_dir, max_to_keep: int | None = 3, async_save: bool = True,
                 read_only: bool = False):
        self.run_dir = pathlib.Path(run_dir).absolute()
        self.directory = self.run_dir / CKPT_SUBDIR
        self._async = async_save
        self._pending: _PendingDigest | None = None   # the save in flight: its step and digests
        self._failed_steps: list = []
        # always orbax's async path (its post-finalization hook writes the digest); async_save=False
        # waits after each save
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
            enable_async_checkpointing=True, cleanup_tmp_directories=not read_only,
            async_options=ocp.AsyncOptions(post_finalization_callback=self._write_digest))
        if read_only and not self.directory.is_dir():
            raise ConfigError(f"no checkpoints in {self.run_dir} (missing {self.directory})")
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    # ------------------------------------------------------------------ queries
    def latest_step(self) -> int | None:
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(int(step))

    # ------------------------------------------------------------------ save
    def save(self, step: int, state, data_state: Any = None, meta: dict | None = None,
             force: bool = True) -> bool:
        """Start saving ``state`` (any pytree of arrays) at ``step``; returns whether it saves.
        Raises :class:`CheckpointWriteError` if the previous save failed."""
        self.wait()                          # orbax waits for the previous save anyway; report it first
        # Save a private copy: the caller's next jitted step donates (reuses) these buffers while the
        # async save may still be reading them (on CPU the host "copy" can alias device memory).
        state = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)
        meta = dict(meta or {})
        meta.setdefault("step", int(step))
        meta.setdefault("saved_at", datetime.datetime.now(datetime.timezone.utc).isoformat())
        meta["integrity"] = DIGEST_FORMAT
        data_item, meta_item = _jsonable({"state": data_state}), _jsonable(meta)
        # hash the arrays in background threads while orbax writes them (the primary process
        # writes the digest)
        leaves = _submit_leaf_records(state) if jax.process_index() == 0 else {}
        self._pending = _PendingDigest(int(step), leaves, data_item, meta_item)
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_item),
            meta=ocp.args.JsonSave(meta_item))
        try:
            saved = self._mngr.save(int(step), args=args, force=force)
        except Exception as e:  # noqa: BLE001 - orbax / tensorstore / OSError: one line
            raise self._save_failed(e) from (e if verbose() else None)
        if not self._async:
            self.wait()
        return saved

    def _write_digest(self) -> None:
        """Orbax's post-finalization hook (background thread, primary process): the arrays are
        written; fsync them, then write ``meta/digest.json`` into the still-temporary step directory,
        so the rename that publishes the checkpoint publishes its digest too."""
        p = self._pending
        if p is None:
            return
        step_dir = self._unpublished_dir(p.step)
        _fsync_tree(step_dir)
        record = {"format": DIGEST_FORMAT, "step": p.step,
                  "state": {name: f.result() for name, f in p.leaves.items()},
                  "data": _json_digest(p.data), "meta": _json_digest(p.meta)}
        write_atomic(step_dir / "meta" / DIGEST_FILE, json.dumps(record, indent=1, sort_keys=True), sync_dir=True)

    def _unpublished_dir(self, step: int) -> pathlib.Path:
        tmp = sorted(self.directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        if len(tmp) == 1:
            return tmp[0]
        if not tmp and self.step_dir(step).is_dir():   # storage that commits in place (no rename)
            return self.step_dir(step)
        raise RuntimeError(f"cannot find the directory being saved for step {step} in {self.directory}")

    def _save_failed(self, e: BaseException) -> CheckpointWriteError:
        step = self._pending.step if self._pending is not None else None
        self._pending = None
        self._failed_steps.append(step)          # its temporary directory is removed at close
        good = [s for s in complete_steps(self.run_dir) if s != step]
        last = f"the last complete checkpoint is step {good[-1]}" if good else "there is no earlier checkpoint"
        return CheckpointWriteError(f"saving checkpoint step {step} in {self.directory} failed "
                                    f"({one_line(e)}); {last}")

    def check(self) -> None:
        """Raise :class:`CheckpointWriteError` now if the background save has failed (never waits)."""
        if self._pending is not None and not self._mngr.is_saving_in_progress():
            self.wait()                      # it has ended: returns at once, or raises its failure

    def wait(self) -> None:
        """Block until the save in flight has landed; a failed one raises :class:`CheckpointWriteError`."""
        try:
            self._mngr.wait_until_finished()
            self._mngr.check_for_errors()
        except Exception as e:  # noqa: BLE001
            if self._pending is None:        # orbax repeats a failure we have already reported
                return
            raise self._save_failed(e) from (e if verbose() else None)
        self._pending = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            with contextlib.suppress(*((Exception,) if self._failed_steps else ())):
                self._mngr.close()
            for step in self._failed_steps:      # free the space a failed save took
                for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                    _remove_tree(tmp)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:                               # already failing: do not mask that error with another
            with contextlib.suppress(Exception):
                self.close()

    # ------------------------------------------------------------------ restore
    def restore(self, step: int | None = None, target=None):
        """Restore ``(state, data_state, meta)`` at ``step`` (latest when None), verified against
        its digest (:class:`CorruptCheckpoint` if it cannot be read or does not match).

        ``target`` is a pytree like the saved state whose leaves are arrays or
        ``jax.ShapeDtypeStruct(shape, dtype, sharding=...)``: restored arrays get those shardings,
        so a checkpoint saved on one mesh restores onto another. Without a target arrays come
        back on the default device as saved.
        """
        step = self.latest_step() if step is None else int(step)
        if step is None or step not in self.all_steps():
            raise ConfigError(f"no complete checkpoint at step {step} in {self.directory} "
                              f"(have {self.all_steps()})")
        step_dir = self.step_dir(step)
        record = read_digest(step_dir)
        if record is not None and target is not None:
            check_fits(record, target, step_dir)
        state_args = (ocp.args.StandardRestore(abstract_target(target)) if target is not None
                      else ocp.args.StandardRestore())
        try:
            out = self._mngr.restore(step, args=ocp.args.Composite(
                state=state_args, data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - a missing / truncated file, a bad chunk: one line
            raise _unreadable(step_dir, record, e) from (e if verbose() else None)
        if record is not None:
            verify_tree(record, out["state"], step_dir)
            for item in ("data", "meta"):
                if _json_digest(out[item]) != record[item]:
                    raise CorruptCheckpoint(step_dir, f"its {item} item differs from its digest")
        else:
            _note_unverified(step_dir)
        data = out["data"] or {}
        return out["state"], data.get("state"), out["meta"] or {}

    def restore_newest_good(self, target=None, on_bad=None):
        """Restore the newest checkpoint that reads and verifies: ``(step, state, data_state, meta)``.
        Each newer one that fails is moved aside (:meth:`move_aside`) and reported through
        ``on_bad(step, CorruptCheckpoint, moved_to)``. None left: one ConfigError line."""
        moved = []
        for step in reversed(self.all_steps()):
            try:
                return (int(step), *self.restore(step, target=target))
            except CorruptCheckpoint as e:
                aside = self.move_aside(step)
                moved.append(aside.name)
                if on_bad is not None:
                    on_bad(step, e, aside)
        if moved:
            raise ConfigError(f"no good checkpoint left in {self.directory} (moved aside: {', '.join(moved)}); "
                              f"start over in a new workdir")
        raise ConfigError(f"no checkpoint in {self.directory}")

    def move_aside(self, step: int) -> pathlib.Path:
        """Rename checkpoint ``step`` to ``checkpoints/corrupt-<step>[-n]/`` (kept for inspection,
        never deleted, no longer a step) and forget it."""
        src = self.step_dir(step)
        dst, n = self.directory / f"{CORRUPT_PREFIX}{int(step)}", 1
        while dst.exists():
            dst, n = self.directory / f"{CORRUPT_PREFIX}{int(step)}-{n}", n + 1
        if jax.process_index() == 0:
            os.rename(src, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"interplay_jax: move aside checkpoint {step}")
        self._mngr.reload()
        return dst


# ---------------------------------------------------------------------------- integrity


class _PendingDigest:
    def __init__(self, step: int, leaves: dict, data, meta):
        self.step, self.leaves, self.data, self.meta = step, leaves, data, meta


def _host_value(x) -> np.ndarray | None:
    """The whole value of one leaf on this host, or None when this process holds only part of it
    (parameters sharded across hosts)."""
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    for shard in x.addressable_shards:               # e.g. replicated over hosts
        if tuple(shard.data.shape) == tuple(x.shape):
            return np.asarray(shard.data)
    return None


def _array_sha256(arr: np.ndarray) -> str:
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}|{arr.shape}|".encode())
    h.update(arr.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _leaf_record(leaf) -> dict:
    value = _host_value(leaf)
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    return {"sha256": None if value is None else _array_sha256(value), "dtype": np.dtype(dtype).name,
            "shape": list(np.shape(leaf))}


def _named_leaves(tree) -> dict:
    return {_path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _submit_leaf_records(tree) -> dict:
    return {name: _HASH_POOL.submit(_leaf_record, leaf) for name, leaf in _named_leaves(tree).items()}


def tree_records(tree) -> dict:
    """{leaf name: {sha256, dtype, shape}} of a pytree, hashed in parallel threads."""
    return {name: f.result() for name, f in _submit_leaf_records(tree).items()}


def _json_digest(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_digest(step_dir) -> dict | None:
    """The digest record of a checkpoint; None for one saved before digests existed (its meta has
    no ``integrity`` field). A missing or unreadable meta or digest file: :class:`CorruptCheckpoint`."""
    step_dir = pathlib.Path(step_dir)
    meta_file = step_dir / "meta" / "metadata"
    try:
        meta = json.loads(meta_file.read_text())
    except FileNotFoundError:
        raise CorruptCheckpoint(step_dir, "meta/metadata is missing") from None
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(step_dir, f"meta/metadata is unreadable ({one_line(e)})") from None
    if not isinstance(meta, dict):
        raise CorruptCheckpoint(step_dir, "meta/metadata is not a JSON object")
    if "integrity" not in meta:
        return None
    try:
        record = json.loads((step_dir / "meta" / DIGEST_FILE).read_text())
    except FileNotFoundError:
        raise CorruptCheckpoint(step_dir, f"meta/{DIGEST_FILE} is missing") from None
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(step_dir, f"meta/{DIGEST_FILE} is unreadable ({one_line(e)})") from None
    if not isinstance(record, dict) or record.get("format") != meta["integrity"] or \
            not isinstance(record.get("state"), dict):
        raise CorruptCheckpoint(step_dir, f"meta/{DIGEST_FILE} is not a {meta['integrity']} digest")
    return record


def _wanted(record: dict, prefix: str) -> dict:
    return {n: r for n, r in record["state"].items() if n.startswith(prefix)}


def check_fits(record: dict, target, step_dir, prefix: str = "") -> None:
    """Before reading any array: the checkpoint's arrays under ``prefix`` (as its digest lists them)
    are exactly those of ``target`` (names, shapes, dtypes); otherwise one ConfigError (a different model or optimizer
    than this run's config; the checkpoint itself is fine and stays where it is)."""
    want = _wanted(record, prefix)
    have = {n: (np.dtype(x.dtype).name, list(np.shape(x))) for n, x in _named_leaves(target).items()}
    where = f"checkpoint {step_dir} does not fit the model / optimizer asked for (wrong model shape)"
    missing, extra = sorted(set(have) - set(want)), sorted(set(want) - set(have))
    if missing or extra:
        raise ConfigError(f"{where}: " + "; ".join(
            f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for label, names in (("it lacks", missing), ("it has extra", extra)) if names))
    for n, (dtype, shape) in have.items():
        if (want[n]["dtype"], list(want[n]["shape"])) != (dtype, shape):
            raise ConfigError(f"{where}: {n} is {want[n]['dtype']}{tuple(want[n]['shape'])} there, "
                              f"{dtype}{tuple(shape)} here")


def verify_tree(record: dict, tree, step_dir, prefix: str = "") -> int:
    """Hash the restored arrays (``tree``: the whole state, or ``{key: subtree}`` with ``prefix``
    ``key/``) and compare with the digest; :class:`CorruptCheckpoint` on any difference. Returns
    the number of arrays verified."""
    want = _wanted(record, prefix)
    got = tree_records(tree)
    if set(got) != set(want):
        odd = sorted(set(got) ^ set(want))
        raise CorruptCheckpoint(step_dir, f"its arrays are not the ones its digest lists ({', '.join(odd[:3])})")
    bad = [n for n in sorted(want) if want[n]["sha256"] and got[n]["sha256"] and want[n]["sha256"] != got[n]["sha256"]]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise CorruptCheckpoint(step_dir, f"content digest mismatch in {bad[0]}{more} "
                                          f"({len(bad)} of {len(want)} arrays)")
    return sum(1 for n in want if want[n]["sha256"] and got[n]["sha256"])


def _note_unverified(step_dir) -> None:
    if jax.process_index() == 0:
        print(f"note: checkpoint {step_dir} was saved before checkpoints carried digests; loaded unverified")


def _unreadable(step_dir, record, e: BaseException) -> UserError:
    if record is None:       # saved before digests: cannot tell damage from a config change
        return ConfigError(f"checkpoint {step_dir} cannot be read ({one_line(e)})")
    return CorruptCheckpoint(step_dir, f"unreadable ({one_line(e)})")


def _fsync_tree(directory: pathlib.Path) -> None:
    """fsync every file under ``directory`` and the directories themselves (durable before the
    digest that vouches for them is written)."""
    for root, _, files in os.walk(directory):
        for name in files + ["."]:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# ---------------------------------------------------------------------------- one run per workdir


class WorkdirLock:
    """``WORKDIR/.lock``, held by one process at a time (see :func:`lock_workdir`)."""

    _held: dict = {}          # resolved workdir -> [fd, depth]: reentrant within one process

    def __init__(self, key: str):
        self.key, self._released = key, False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        entry = WorkdirLock._held.get(self.key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del WorkdirLock._held[self.key]
            with contextlib.suppress(OSError):
                os.ftruncate(entry[0], 0)
                fcntl.flock(entry[0], fcntl.LOCK_UN)
            os.close(entry[0])


def lock_workdir(workdir, what: str = "run") -> WorkdirLock:
    """Hold ``WORKDIR/.lock`` for this process (``what`` names it to a second process, e.g.
    "pretrain run"); a second process on the same workdir gets one ConfigError line naming the
    holder. The lock is an ``flock``: the kernel drops it when its
    process dies, so a killed run never leaves it stuck and the next run takes it over. On a
    filesystem without ``flock`` the pid written in the file decides (a dead pid on this host is
    taken over)."""
    d = pathlib.Path(workdir).absolute()
    d.mkdir(parents=True, exist_ok=True)
    key = str(d.resolve())
    if key in WorkdirLock._held:
        WorkdirLock._held[key][1] += 1
        return WorkdirLock(key)
    fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _lock_holder(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES) or _holder_alive(holder):
            os.close(fd)
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}"
                   if holder else "pid unknown")
            raise ConfigError(f"{d} is in use by another {holder.get('what') or 'run'} ({who}); wait for it "
                              f"to finish or stop it, or use another workdir") from None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what,
              "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    WorkdirLock._held[key] = [fd, 1]
    return WorkdirLock(key)


def _lock_holder(fd: int) -> dict:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _holder_alive(holder: dict) -> bool:
    """Whether the process a lock file names still runs (only checkable on this host; another
    host's holder counts as alive)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def restore_params(run_dir_or_ckpt, target=None, step: int | None = None, key: str = "params"):
    """Restore only the ``key`` subtree (the params) of a checkpoint's state, verified against the
    checkpoint's digest: for ``init_from``, evaluation and the lineage CLI.

    ``target``: pytree of arrays / ShapeDtypeStruct(sharding=...) shaped like the params; None
    restores host numpy arrays. Returns ``(params, run_dir, step)``. A checkpoint that cannot be
    read or fails its digest: :class:`CorruptCheckpoint` (one line naming it).
    """
    run_dir, step = resolve_checkpoint(run_dir_or_ckpt, step)
    step_dir = pathlib.Path(run_dir) / CKPT_SUBDIR / str(int(step))
    state_dir = step_dir / "state"
    record = read_digest(step_dir)
    if record is not None and target is not None:
        check_fits(record, {key: target}, step_dir, prefix=key + "/")
    try:
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
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - a missing / truncated file, a bad chunk: one line
        raise _unreadable(step_dir, record, e) from (e if verbose() else None)
    if record is not None:
        verify_tree(record, {key: out[key]}, step_dir, prefix=key + "/")
    else:
        _note_unverified(step_dir)
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
    write_atomic(run_dir / LINEAGE_FILE, json.dumps(record, indent=2, sort_keys=True))
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
