"""Tokenizer: special ids, lossless roundtrip, the reference file, the tokenizer stage."""
import json

import pytest

from conftest import load_config

from interplay_jax.errors import ConfigError, DataError
from interplay_jax.task.formats import SPECIAL_TOKENS, format_document, format_prompt
from interplay_jax.task.tokenizer import Tokenizer, load_tokenizer, train_tokenizer

CONTEXTS = ("crazy_zootopia", "teachers_in_school", "movie_festival_awards")


def get_config(arg=None):
    return load_config(f"tokenizer.py:{arg or ''}")


def _records(n=60):
    from interplay_jax.task.generator import generate_problem
    return [generate_problem(2 + i % 19, CONTEXTS[i % 3], ("normalforward", "forwardreverse")[i % 2], i)
            for i in range(n)]


@pytest.fixture(scope="module")
def trained():
    return train_tokenizer((format_document(r) for r in _records(120)), vocab_size=700)


def _reference_records(reference_dir):
    with open(reference_dir / "samples.jsonl") as f:
        return [json.loads(line) for line in f]


def test_reference_tokenizer_loads_and_roundtrips(reference_dir):
    tok = load_tokenizer(reference_dir / "tokenizer.json")
    assert tok.vocab_size == 2201
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(10))
    assert (tok.unk_id, tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    for r in _reference_records(reference_dir):
        doc = format_document(r)
        ids = tok.encode(doc)
        assert tok.decode(ids) == doc
        full = tok.encode_document(r)
        assert full == ids + [3] and full[0] == 4 and 2 not in full
        assert full[-2] == 9 and ids.count(6) == 1 and ids.count(7) == 1
        prompt = tok.encode_prompt(r)
        assert prompt[-1] == 6 and ids[:len(prompt)] == prompt and tok.decode(prompt) == format_prompt(r)


def test_pre_tokenizer_and_decoder_match_the_reference(reference_dir, trained):
    ref = json.loads((reference_dir / "tokenizer.json").read_text())
    mine = json.loads(trained.hf.to_str())
    assert mine["pre_tokenizer"] == ref["pre_tokenizer"]
    assert mine["decoder"] == ref["decoder"]
    assert mine["model"]["type"] == "BPE" and mine["normalizer"] is None


def test_trained_tokenizer_ids_size_and_roundtrip(trained, tmp_path):
    assert [trained.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(10))
    assert trained.vocab_size == 700
    texts = [format_document(r) for r in _records(40)] + [
        "<question> Rêves de Belleville, Festival Lumière de Valmont, Cinéma </question>", "", " ", "x\n\ty",
        "[EOS] <answer> 3 </answer>", "2*x + 4 = (3) * (x + 1)"]
    batch = trained.encode_batch(texts)
    for text, ids in zip(texts, batch):
        assert ids == trained.encode(text)
        assert trained.decode(ids) == text
        assert all(0 <= i < trained.vocab_size for i in ids)
    path = trained.save(tmp_path / "tok" / "tokenizer.json")
    again = Tokenizer.load(path)
    assert again.vocab_size == trained.vocab_size
    assert again.encode_batch(texts) == batch
    assert Tokenizer.load(tmp_path / "tok").encode(texts[0]) == batch[0]


def test_trained_tokenizer_compresses(trained):
    doc = format_document(_records(1)[0])
    assert len(trained.encode(doc)) < len(doc.encode()) / 2


def test_bad_tokenizer_files_are_data_errors(tmp_path, trained):
    with pytest.raises(DataError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        Tokenizer.load(bad)
    data = json.loads(trained.hf.to_str())
    for entry in data["added_tokens"]:
        if entry["content"] == "[EOS]":
            entry["content"] = "[END]"
    data["model"]["vocab"]["[END]"] = data["model"]["vocab"].pop("[EOS]")
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"'\[EOS\]'"):
        Tokenizer.load(swapped)


def test_tokenizer_stage_trains_and_saves(tmp_path):
    from interplay_jax.main import run_config

    config = get_config("tiny")
    config.workdir = str(tmp_path / "tok")
    config.num_docs = 40
    config.vocab_size = 500
    config.progress = False
    path = run_config(config)
    tok = load_tokenizer(path)
    assert tok.vocab_size == 500
    stats = json.loads((tmp_path / "tok" / "tokenizer_stats.json").read_text())
    assert stats["num_docs"] == 40 and stats["mean_tokens_per_doc"] > 10


def test_tokenizer_stage_from_jsonl(tmp_path):
    from interplay_jax.main import run_config

    data = tmp_path / "data"
    data.mkdir()
    with open(data / "part-0.jsonl", "w") as f:
        for r in _records(30):
            f.write(json.dumps(r) + "\n")
    config = get_config("tiny")
    config.update(dict(workdir=str(tmp_path / "tok"), source="jsonl", jsonl=str(data / "*.jsonl"), num_docs=0,
                       vocab_size=400, progress=False))
    tok = load_tokenizer(run_config(config))
    assert tok.vocab_size == 400
    assert json.loads((tmp_path / "tok" / "tokenizer_stats.json").read_text())["num_docs"] == 30


@pytest.mark.parametrize("field,value,message", [
    ("vocab_size", 100, "vocab_size"),
    ("source", "web", "unknown source 'web'"),
    ("mixture", "nope", "unknown mixture 'nope'"),
    ("num_docs", -1, "num_docs"),
    ("min_frequency", 0, "min_frequency"),
])
def test_tokenizer_config_errors(field, value, message):
    from interplay_jax.stages import validate

    config = get_config("tiny")
    config[field] = value
    with pytest.raises(ConfigError, match=message):
        validate(config)


def test_tokenizer_config_missing_files(tmp_path):
    from interplay_jax.stages import validate

    config = get_config("tiny")
    config.source, config.jsonl = "jsonl", str(tmp_path / "*.jsonl")
    with pytest.raises(ConfigError, match="matches no file"):
        validate(config)
    config = get_config("reference")
    config.file = str(tmp_path / "none.json")
    with pytest.raises(ConfigError, match="does not exist"):
        validate(config)


def test_default_tokenizer_is_built_once_deterministically_and_recorded(tmp_path, monkeypatch):
    """A stage with no tokenizer builds the default one on first use, caches it, and the run's
    lineage names it (path + sha256); a second build elsewhere gives the same bytes."""
    from interplay_jax import checkpoint as ck
    from interplay_jax.main import run_config
    from interplay_jax.files import file_digest
    from interplay_jax.task.tokenizer import default_tokenizer_path

    monkeypatch.setenv("INTERPLAY_DEFAULT_TOKENIZER_DOCS", "300")
    monkeypatch.setenv("INTERPLAY_CACHE", str(tmp_path / "cache"))
    c = load_config("pretrain.py:base,cpu")
    c.update(dict(workdir=str(tmp_path / "run"), seq_len=512, batch_size=2, total_steps=2, ckpt_every=2,
                  eval_every=0, progress=False))
    c.model.preset = "micro"
    c.eval.per_bucket = 0
    c.data.update(dict(buffer_docs=8, num_threads=0))
    assert c.tokenizer == ""
    run_config(c)
    path = default_tokenizer_path()
    assert path.is_file() and path.parent.parent == tmp_path / "cache"
    built_at = path.stat().st_mtime_ns
    recorded = ck.read_lineage(tmp_path / "run")["tokenizer"]
    assert recorded == {"path": str(path), "sha256": file_digest(path)}
    assert default_tokenizer_path().stat().st_mtime_ns == built_at          # cached: not rebuilt
    monkeypatch.setenv("INTERPLAY_CACHE", str(tmp_path / "other"))
    assert file_digest(default_tokenizer_path()) == recorded["sha256"]      # deterministic
