"""Dataset writer: schema, dedup, disjoint splits, resume after interruption, JSONL reader errors."""
import json

import pytest

from interplay_jax.errors import DataError
from interplay_jax.task.mixture import get_mixture
from interplay_jax.task.writer import MANIFEST, iter_split, read_jsonl, record_hash, write_dataset

SPLITS = {"eval": 15, "heldout": 15, "train": 70}


class _RepeatingMixture:
    """A real mixture whose index stream repeats (index i and i + 150 give the same record), so
    duplicates really occur and dedup / cross-split exclusion are exercised."""

    def __init__(self):
        self.inner = get_mixture([{"ops": [2], "weight": 3}, {"ops": [5, 9], "weight": 1, "modes": ["forwardreverse"]}])

    def record(self, seed, index):
        return self.inner.record(0, index % 150)

    def __repr__(self):
        return "repeating(" + repr(self.inner) + ")"


def _mixture():
    return _RepeatingMixture()


def _contents(root):
    return {s: [json.dumps(r, sort_keys=True) for r in iter_split(root, s)] for s in SPLITS}


def test_write_splits_disjoint_dedup_schema(tmp_path):
    write_dataset(tmp_path, _mixture(), SPLITS, seed=1, shard_size=20, progress=False)
    data = _contents(tmp_path)
    hashes = {}
    for split, lines in data.items():
        recs = [json.loads(x) for x in lines]
        assert len(recs) == SPLITS[split]
        keys = [record_hash(r) for r in recs]
        assert len(set(keys)) == len(keys)                     # dedup inside a split
        assert all(r["id"] == record_hash(r) for r in recs)
        assert all(set(r) == {"problem", "question", "solution", "op", "id", "template", "mode", "length", "d"}
                   for r in recs)
        hashes[split] = set(keys)
    assert not hashes["eval"] & hashes["heldout"] and not hashes["eval"] & hashes["train"]
    assert not hashes["heldout"] & hashes["train"]
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    draws = sum(sh["end"] - sh["start"] for s in manifest["splits"].values() for sh in s["shards"])
    assert draws > sum(SPLITS.values())                         # some duplicates were skipped
    assert sorted(p.parent.name for p in (tmp_path / "train").glob("op*/shard-00000.jsonl")) == ["op2", "op5", "op9"]


def test_resume_after_interruption_loses_and_doubles_nothing(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    write_dataset(ref, _mixture(), SPLITS, seed=2, shard_size=10, progress=False)
    with pytest.raises(KeyboardInterrupt):
        write_dataset(run, _mixture(), SPLITS, seed=2, shard_size=10, progress=False, _fail_after_shards=6)
    # simulate a crash mid-shard: a half-written temp file and a stray renamed file of the next shard
    nxt = json.loads((run / MANIFEST).read_text())["splits"]["train"]["shards"][-1]["index"] + 1
    (run / "train" / "op2").mkdir(parents=True, exist_ok=True)
    (run / "train" / "op2" / f"shard-{nxt:05d}.jsonl.tmp").write_text('{"problem": "half')
    (run / "train" / "op2" / f"shard-{nxt:05d}.jsonl").write_text(
        (ref / "eval" / "op2" / "shard-00000.jsonl").read_text())
    write_dataset(run, _mixture(), SPLITS, seed=2, shard_size=10, progress=False)
    assert _contents(run) == _contents(ref)
    assert not list(run.rglob("*.tmp"))
    # a finished run is a no-op when rerun
    write_dataset(run, _mixture(), SPLITS, seed=2, shard_size=10, progress=False)
    assert _contents(run) == _contents(ref)


def test_changed_settings_refuse_to_mix(tmp_path):
    write_dataset(tmp_path, _mixture(), {"train": 5}, seed=0, shard_size=5, progress=False)
    with pytest.raises(DataError, match="other settings"):
        write_dataset(tmp_path, _mixture(), {"train": 5}, seed=1, shard_size=5, progress=False)


def test_read_jsonl_errors_name_file_and_line(tmp_path):
    good = json.dumps({"problem": "p", "question": "q", "solution": "s", "op": 2, "template": "A", "mode": "m"})
    f = tmp_path / "bad.jsonl"
    f.write_text(good + "\n\n" + good + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:4: invalid JSON") as e:
        list(read_jsonl(f))
    assert "\n" not in str(e.value)
    f.write_text(good + "\n" + json.dumps({"problem": "p", "op": 3}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: missing field\(s\) question, solution"):
        list(read_jsonl(f))
    f.write_text('["a list"]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:1: expected a JSON object"):
        list(read_jsonl(f))
    with pytest.raises(DataError, match="cannot open"):
        list(read_jsonl(tmp_path / "missing.jsonl"))
    f.write_text(good + "\n")
    assert list(read_jsonl(f))[0]["op"] == 2


def test_generate_stage_through_main(tmp_path, capsys):
    from interplay_jax import main
    from interplay_jax.errors import ConfigError
    from conftest import load_config

    cfg = load_config("generate.py:tiny")
    cfg.workdir = str(tmp_path / "d")
    cfg.splits = {"eval": 5, "train": 30}
    cfg.progress = False
    main.run_config(cfg)
    assert len(list(iter_split(tmp_path / "d", "train"))) == 30
    assert "wrote 35 records" in capsys.readouterr().out
    with cfg.ignore_type():
        cfg.mixture = [{"ops": [2], "weight": -1}]
    with pytest.raises(ConfigError, match="weight must be a number >= 0"):
        main.run_config(cfg)
    with cfg.ignore_type():
        cfg.mixture = "base"
    cfg.shard_size = 0
    with pytest.raises(ConfigError, match="shard_size"):
        main.run_config(cfg)


def test_a_shard_cut_short_is_one_data_error(tmp_path):
    """The manifest records each shard file's size: a file cut at a line boundary (silently fewer
    records otherwise) or mid-line is named in one DataError, by check_jsonl_shards and by a rerun."""
    from interplay_jax.task.writer import check_jsonl_shards
    write_dataset(tmp_path, _mixture(), SPLITS, seed=1, shard_size=20, progress=False)
    n_files = len(list(tmp_path.rglob("shard-*.jsonl")))
    assert check_jsonl_shards(tmp_path) == n_files
    shard = sorted((tmp_path / "train").rglob("shard-00001.jsonl"))[0]
    lines = shard.read_text().splitlines(keepends=True)
    assert len(lines) >= 2
    for cut in ("".join(lines[:-1]), "".join(lines)[:-20]):       # at a line boundary, mid-line
        shard.write_text(cut)
        with pytest.raises(DataError, match=rf"{shard}: \d+ bytes, \d+ when written \(truncated or changed\)"):
            check_jsonl_shards(tmp_path)
        with pytest.raises(DataError, match=str(shard)):
            write_dataset(tmp_path, _mixture(), SPLITS, seed=1, shard_size=20, progress=False)
    shard.unlink()
    with pytest.raises(DataError, match=rf"{shard}: missing"):
        check_jsonl_shards(tmp_path)
    assert check_jsonl_shards(tmp_path / "train") == 0                    # no manifest: nothing to check
