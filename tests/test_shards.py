"""Token shards: written by the generate stage (resumable), read back document for document, used by
the training stage (data.source=tokens), and any damage or tokenizer mismatch is one line before any
compute. Also the exact cached tokenization and the device prefetcher's checkpoint state."""
import json
import shutil

import numpy as np
import pytest
from conftest import load_config

from interplay_jax.data.shards import ShardJob, TokenShardSource, check_shards
from interplay_jax.errors import DataError
from interplay_jax.main import run_config
from interplay_jax.task.formats import format_document
from interplay_jax.task.mixture import get_mixture
from interplay_jax.task.tokenizer import train_on_records
from interplay_jax.task.writer import split_seed


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tokenizer and a generated directory: eval/heldout JSONL + train token shards."""
    root = tmp_path_factory.mktemp("shards")
    tok = train_on_records(get_mixture("base").record(9, i) for i in range(80))
    tok_path = tok.save(str(root / "tokenizer.json"))
    c = load_config("generate.py:tiny,tokens", workdir=str(root / "d"), tokenizer=tok_path, train_tokens=60_000,
                    shard_docs=40, progress=False)
    run_config(c)
    return {"root": root, "dir": root / "d", "tokens": root / "d" / "tokens", "tokenizer": tok_path, "config": c}


def test_shards_hold_the_stream_documents_in_order(data):
    manifest = check_shards(data["tokens"])
    assert manifest["complete"] and manifest["tokens"] >= 60_000 and len(manifest["shards"]) > 2
    src = TokenShardSource(data["tokens"], manifest)
    assert len(src) == manifest["docs"] and src.tokens == manifest["tokens"]
    # shard k = stream records [40k, 40k + 40) minus the eval / held-out ones, tokenized
    job = ShardJob(source="mixture", mixture=get_mixture("base"), seed=split_seed(0, "train"), data_dir="",
                   per_shard=40, tokenizer=data["tokenizer"], exclude=frozenset())
    docs, ops, start, end = job(1)
    first = manifest["shards"][0]["docs"]
    assert (start, end) == (40, 80) and manifest["shards"][1]["start"] == 40
    got = [src[first + i].tolist() for i in range(manifest["shards"][1]["docs"])]
    assert got == docs[:len(got)]                     # (an excluded record would shift, none here)
    assert np.load(data["tokens"] / "shard-00001.ops.npy").tolist() == ops[:len(got)]


def test_rerun_resumes_and_other_settings_are_refused(data, tmp_path):
    d = tmp_path / "d"
    shutil.copytree(data["dir"], d)
    manifest = json.loads((d / "tokens" / "manifest.json").read_text())
    # an interrupted write: the last shard never made it into the manifest, a temp file is left
    last = manifest["shards"].pop()
    manifest["complete"] = False
    (d / "tokens" / "manifest.json").write_text(json.dumps(manifest))
    (d / "tokens" / "junk.bin.tmp").write_text("x")
    run_config(load_config("generate.py:tiny,tokens", **{**_fields(data["config"]), "workdir": str(d)}))
    again = json.loads((d / "tokens" / "manifest.json").read_text())
    assert again["complete"] and again["shards"][-1]["sha256"] == last["sha256"]
    assert not list((d / "tokens").glob("*.tmp"))
    with pytest.raises(DataError, match="other settings"):
        run_config(load_config("generate.py:tiny,tokens", **{**_fields(data["config"]), "workdir": str(d),
                                                             "shard_docs": 50}))


def _fields(c):
    return {k: c[k] for k in ("tokenizer", "train_tokens", "shard_docs", "progress")}


@pytest.mark.parametrize("damage", ["truncate", "delete", "offsets", "bitflip"])
def test_damaged_shards_stop_before_compute_naming_the_file(data, tmp_path, damage):
    d = tmp_path / "tokens"
    shutil.copytree(data["tokens"], d)
    victim = d / "shard-00001.bin"
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[:-10])
    elif damage == "delete":
        victim.unlink()
    elif damage == "bitflip":
        blob = bytearray(victim.read_bytes())
        blob[len(blob) // 2] ^= 0x04
        victim.write_bytes(bytes(blob))
        check_shards(d)                              # sizes and offsets alone cannot see it
    else:
        victim = d / "shard-00001.idx.npy"
        np.save(victim, np.arange(5, dtype=np.int64))
    with pytest.raises(DataError, match=str(victim).replace(".", r"\.")):
        check_shards(d, verify_contents=True)


def _pretrain(data, workdir, **extra):
    fields = dict(workdir=str(workdir), tokenizer=data["tokenizer"], seq_len=512, batch_size=2, total_steps=3,
                  ckpt_every=3, log_every=1, eval_every=0, progress=False, data__source="tokens",
                  data__data_dir=str(data["dir"]), data__buffer_docs=8)
    c = load_config("pretrain.py:base,cpu", **{**fields, **extra})
    c.model.preset = "micro"
    c.eval.per_bucket = 2
    return c


def test_training_reads_token_shards_and_refuses_another_tokenizer(data, tmp_path):
    out = run_config(_pretrain(data, tmp_path / "run"))
    assert out["steps"] == 3 and np.isfinite(out["final"]["loss"])
    other = train_on_records(get_mixture("mid").record(3, i) for i in range(60))
    other_path = other.save(str(tmp_path / "other.json"))
    with pytest.raises(DataError, match="made with tokenizer sha256"):
        run_config(_pretrain(data, tmp_path / "run2", tokenizer=other_path))


def test_cached_tokenization_is_exact(reference_dir):
    """The piece-cached encoding equals the tokenizers library's on documents of every context, mode
    and op range, and on the original release's 30 problems."""
    from interplay_jax.task.tokenizer import Tokenizer
    tok = Tokenizer.load(reference_dir / "tokenizer.json")
    assert tok._pieces is not None
    mix = get_mixture("rl_uniform", modes=("normalforward", "forwardreverse"))
    records = [mix.record(11, i) for i in range(600)]
    records += [json.loads(line) for line in (reference_dir / "samples.jsonl").read_text().splitlines()]
    for r in records:
        assert tok.encode_document(r) == tok.encode(format_document(r)) + [tok.eos_id]
    assert tok.encode_text("  odd  spacing\\tand a Tab. Ünïcode x") == tok.encode("  odd  spacing\\tand a Tab. Ünïcode x")


def test_device_prefetch_reports_the_state_of_the_last_batch_taken():
    from interplay_jax.train.loop import DevicePrefetch

    class Counter:
        def __init__(self):
            self.i = 0

        def __iter__(self):
            return self

        def __next__(self):
            if self.i == 5:
                raise StopIteration
            self.i += 1
            return {"x": np.full(2, self.i)}

        def get_state(self):
            return {"i": self.i}

    pf = DevicePrefetch(Counter(), put=lambda b: b, depth=3)
    assert pf.get_state() == {"i": 0}
    first = next(pf)
    assert first["x"][0] == 1 and pf.get_state() == {"i": 1}    # not the prefetched batches' state
    rest = [int(b["x"][0]) for b in pf]
    assert rest == [2, 3, 4, 5] and pf.get_state() == {"i": 5}
    pf.close()
