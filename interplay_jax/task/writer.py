"""Dataset writer (JSONL shards in the published schema) and a checked JSONL reader.

Layout: ``{out_dir}/{split}/op{op}/shard-{k:05d}.jsonl`` plus ``{out_dir}/manifest.json``.
A split's records are ``mixture.record(split_seed, i)`` for i = 0, 1, 2, ... (``split_seed`` is
derived from the run seed and the split name); a record is kept unless its content hash
(problem, question, solution) was already kept in this split or in any split written before it,
so splits are disjoint by hash and deduplicated. Splits are written in the order given: put the
small held-out / eval splits first, the big train split last.

Shard k holds the next ``shard_size`` kept records. Its files are written to temporary names and
renamed, then the manifest (also renamed atomically) records the shard as done with the stream
position where it ended and the size of each of its files (`check_jsonl_shards` compares them: a
shard cut short is one DataError line, not silently fewer records). A rerun skips done shards, rebuilds the seen-hash set from their files, and
regenerates an unfinished shard from its recorded start: nothing lost or doubled.
"""
from __future__ import annotations

import json
import os
import pathlib

from tqdm import tqdm

from interplay_jax.errors import ConfigError, DataError
from interplay_jax.files import write_atomic
from interplay_jax.task.generator import content_hash, stable_rng

FIELDS = ("problem", "question", "solution", "op", "id", "template", "mode", "length", "d")
REQUIRED = ("problem", "question", "solution", "op", "template", "mode")
MANIFEST = "manifest.json"


def record_hash(record: dict) -> str:
    """The content hash of a record (the dedup key and the ``id`` of generated records): SHA-256 of
    (problem, question, solution). Always recomputed, never read from the ``id`` field."""
    return content_hash(str(record.get("problem", "")), str(record.get("question", "")),
                        str(record.get("solution", "")))


def jsonl_files(path) -> list[pathlib.Path]:
    """``path`` itself if it is a file, else every ``*.jsonl`` below it (sorted); a missing path or a
    directory without JSONL files is a ConfigError (the path came from a config)."""
    p = pathlib.Path(path)
    if p.is_file():
        return [p]
    if not p.exists():
        raise ConfigError(f"{p} does not exist")
    files = sorted(p.rglob("*.jsonl"))
    if not files:
        raise ConfigError(f"{p} holds no .jsonl files")
    return files


def split_files(data_dir, split: str) -> list[pathlib.Path]:
    """JSONL files of one split in the published layout (``train/op{N}/*.jsonl``, ``heldout/``...);
    [] when the split does not exist."""
    root = pathlib.Path(data_dir) / split
    return sorted(root.rglob("*.jsonl")) if root.is_dir() else []


def hashes_of_paths(paths) -> set[str]:
    """Content hashes of every record in JSONL files / directories (searched recursively); ``paths``
    may be one comma-separated string. A missing path is a ConfigError naming it."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [p.strip() for p in str(paths).split(",") if p.strip()]
    return {record_hash(r) for p in paths for f in jsonl_files(p) for r in read_jsonl(f)}


def read_jsonl(path, required=REQUIRED):
    """Yield records of a JSONL file; raise DataError "file:line: reason" on a bad line."""
    path = str(path)
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot open ({e.strerror})") from None
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"{path}:{n}: invalid JSON ({getattr(e, 'msg', e)})") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{n}: expected a JSON object, got {type(rec).__name__}")
            missing = [k for k in required if k not in rec]
            if missing:
                raise DataError(f"{path}:{n}: missing field(s) {', '.join(missing)}")
            if not isinstance(rec["op"], int) or isinstance(rec["op"], bool):
                raise DataError(f"{path}:{n}: field 'op' must be an integer, got {rec['op']!r}")
            for k in ("problem", "question", "solution"):
                if not isinstance(rec[k], str):
                    raise DataError(f"{path}:{n}: field {k!r} must be a string")
            yield rec


def split_seed(seed: int, split: str) -> int:
    return stable_rng("interplay_jax.writer.split", seed, split).getrandbits(62)


def _load_manifest(out: pathlib.Path, settings: dict) -> dict:
    path = out / MANIFEST
    if not path.exists():
        return {"settings": settings, "splits": {}}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid manifest ({e.msg}); delete the directory to regenerate") from None
    if manifest.get("settings") != settings:
        raise DataError(f"{path}: written with other settings {manifest.get('settings')}; "
                        f"use a new output directory or delete this one")
    return manifest


def check_jsonl_shards(data_dir) -> int:
    """Every shard file that ``data_dir``'s manifest lists with a size is there with that size (a
    copy cut short, a bad disk block that truncated it, an edit): otherwise one DataError line naming
    the file. A directory without a manifest, or a manifest written before sizes were recorded, is
    not checked (a line cut in the middle is still caught when it is read). Returns the number of
    files checked. Costs one ``stat`` per file."""
    root = pathlib.Path(data_dir)
    path = root / MANIFEST
    if not path.is_file():
        return 0
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable manifest ({getattr(e, 'msg', e)})") from None
    return sum(_check_shard(root, split, sh) for split, info in (manifest.get("splits") or {}).items()
               for sh in info.get("shards", []))


def _check_shard(root: pathlib.Path, split: str, shard: dict) -> int:
    for rel, size in (shard.get("bytes") or {}).items():
        f = root / split / rel
        if not f.is_file():
            raise DataError(f"{f}: missing (listed in {root / MANIFEST}); regenerate or restore it")
        if f.stat().st_size != int(size):
            raise DataError(f"{f}: {f.stat().st_size} bytes, {int(size)} when written (truncated or changed); "
                            f"regenerate or restore it")
    return len(shard.get("bytes") or {})


def _shard_files(out: pathlib.Path, split: str, k: int) -> list[pathlib.Path]:
    return sorted((out / split).glob(f"op*/shard-{k:05d}.jsonl"))


def write_dataset(out_dir, mixture, splits: dict, seed: int = 0, shard_size: int = 10_000,
                  progress: bool = True, max_draws_factor: int = 50, _fail_after_shards: int | None = None):
    """Write ``splits`` ({name: n_records}, in order) drawn from ``mixture`` into ``out_dir``.

    Returns the manifest dict. ``_fail_after_shards`` (tests) raises after that many new shards.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"mixture": repr(mixture), "seed": int(seed), "shard_size": int(shard_size),
                "splits": [[str(k), int(v)] for k, v in splits.items()]}
    manifest = _load_manifest(out, settings)
    seen: set[str] = set()
    new_shards = 0
    for split, size in splits.items():
        size = int(size)
        sseed = split_seed(seed, split)
        info = manifest["splits"].setdefault(split, {"seed": sseed, "size": size, "shards": []})
        done = info["shards"]
        # rebuild the seen set from finished shards (this split's and the earlier splits')
        for sh in done:
            _check_shard(out, split, sh)
            for f in _shard_files(out, split, sh["index"]):
                for rec in read_jsonl(f):
                    seen.add(rec.get("id") or record_hash(rec))
        kept = sum(sh["count"] for sh in done)
        pos = done[-1]["end"] if done else 0
        bar = tqdm(total=size, initial=kept, desc=f"generate {split}", unit="rec", disable=not progress)
        max_draws = max(1000, max_draws_factor * size)
        while kept < size:
            k = len(done)
            # clear leftovers of an interrupted attempt at this shard
            for f in _shard_files(out, split, k):
                f.unlink()
            for f in (out / split).glob(f"op*/shard-{k:05d}.jsonl.tmp"):
                f.unlink()
            want = min(shard_size, size - kept)
            start = pos
            by_op: dict[int, list[str]] = {}
            got = 0
            shard_seen = []
            while got < want:
                if pos >= max_draws:
                    raise DataError(f"split {split!r}: only {kept + got} unique records after {pos} draws "
                                    f"(asked for {size}); the mixture is too small for this size")
                rec = mixture.record(sseed, pos)
                pos += 1
                key = rec["id"]
                if key in seen:
                    continue
                seen.add(key)
                shard_seen.append(key)
                by_op.setdefault(rec["op"], []).append(json.dumps(rec, ensure_ascii=False))
                got += 1
            sizes = {}
            for op, lines in sorted(by_op.items()):
                d = out / split / f"op{op}"
                d.mkdir(parents=True, exist_ok=True)
                text = "\n".join(lines) + "\n"
                write_atomic(d / f"shard-{k:05d}.jsonl", text)
                sizes[f"op{op}/shard-{k:05d}.jsonl"] = len(text.encode("utf-8"))
            done.append({"index": k, "start": start, "end": pos, "count": got, "bytes": sizes})
            write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
            kept += got
            bar.update(got)
            new_shards += 1
            if _fail_after_shards is not None and new_shards >= _fail_after_shards:
                raise KeyboardInterrupt("simulated interruption")
        bar.close()
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def iter_split(out_dir, split: str):
    """All records of one written split (shard order, then op order)."""
    for f in sorted((pathlib.Path(out_dir) / split).glob("op*/shard-*.jsonl"),
                    key=lambda p: (p.name, int(p.parent.name[2:]))):
        yield from read_jsonl(f)
