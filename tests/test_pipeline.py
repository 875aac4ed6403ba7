"""Data pipeline: FFD packing invariants, exact iterator-state restore, held-out exclusion, sharding."""
import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interplay_jax.data import pipeline as dp
from interplay_jax.errors import DataError


class ToyMixture:
    """record(seed, index) with a random length; the 'tokens' are derived from the text."""

    def record(self, seed, index):
        r = random.Random(seed * 1_000_003 + index)
        n = r.randint(1, 56)
        return {"problem": "".join(r.choice("abcdefgh") for _ in range(n)), "question": f"q{index}",
                "solution": "s", "op": 2 + n % 9, "template": "crazy_zootopia", "mode": "normalforward"}


def encode(record):
    # problem letters, then the record's index digits (so documents are unique), then EOS
    return [10 + (ord(c) - 97) for c in record["problem"]] + [100 + int(d) for d in record["question"][1:]] + [3]


def encode_all(records):
    return [encode(r) for r in records]


def docs_of_row(tokens, seg):
    """The documents of a packed row, in order, as tuples."""
    out = []
    for k in range(1, int(seg.max()) + 1):
        out.append(tuple(tokens[seg == k].tolist()))
    return out


def make(seq_len=64, batch=4, buffer_docs=32, exclude=(), threads=0, pi=0, pc=1, seed=0):
    src = dp.GeneratorSource(ToyMixture(), seed, length=100_000)
    return dp.build_dataset(src, encode_all, seq_len=seq_len, batch_size=batch, pad_id=1, exclude_hashes=exclude,
                            buffer_docs=buffer_docs, num_threads=threads, process_index=pi, process_count=pc)


def test_packed_rows_are_whole_documents_with_masked_pads():
    seq_len = 64
    it = iter(make(seq_len=seq_len, buffer_docs=16))
    stream = [tuple(encode(ToyMixture().record(0, i))) for i in range(2000)]
    seen = []
    for _ in range(20):
        b = next(it)
        assert set(b) == {"tokens", "segment_ids", "positions"}
        for k in b:
            assert b[k].shape == (4, seq_len) and b[k].dtype == np.int32
        for tok, seg, pos in zip(b["tokens"], b["segment_ids"], b["positions"]):
            used = seg > 0
            # documents are contiguous, numbered 1..n, then padding only
            n_used = int(used.sum())
            assert used[:n_used].all() and not used[n_used:].any()
            assert (tok[~used] == 1).all() and (pos[~used] == 0).all()
            assert np.all(np.diff(seg[:n_used]) >= 0)
            for k in range(1, int(seg.max()) + 1):
                assert (pos[seg == k] == np.arange((seg == k).sum())).all()
            seen += docs_of_row(tok, seg)
    # every packed document is an unsplit document of the stream (ends with EOS), in stream multiset
    stream_set = set(stream)
    assert all(d in stream_set and d[-1] == 3 for d in seen)
    # documents come in buffer order: the first 16 docs' multiset is the first rows' content
    first = sorted(stream[:16])
    assert sorted(seen[:16]) == first


def test_too_long_documents_are_dropped_and_counted():
    # seq_len 20 < many documents (up to 61 tokens)
    it = iter(make(seq_len=20, buffer_docs=16))
    for _ in range(5):
        b = next(it)
        assert int((b["segment_ids"] > 0).sum(axis=1).max()) <= 20
    dropped = dp.dropped_documents(it)
    assert dropped > 0
    state = it.get_state()
    assert state["dropped"] == dropped


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=80), st.integers(50, 120))
def test_ffd_is_first_fit_decreasing(lengths, seq_len):
    docs = [np.zeros(n, np.int32) for n in lengths]
    bins = dp.ffd_pack(docs, seq_len)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(docs)))                      # every doc exactly once
    assert all(sum(lengths[i] for i in b) <= seq_len for b in bins)
    # replay: docs longest first; each went to the first bin with room at that moment
    room = []
    where = {i: k for k, b in enumerate(bins) for i in b}
    for i in sorted(range(len(docs)), key=lambda i: (-lengths[i], i)):
        fits = [k for k, r in enumerate(room) if r >= lengths[i]]
        expect = fits[0] if fits else len(room)
        if not fits:
            room.append(seq_len)
        assert where[i] == expect
        room[expect] -= lengths[i]
    # volume and big-item lower bounds; a first-fit packing leaves at most one bin half empty or less
    lower = max(-(-sum(lengths) // seq_len), sum(l > seq_len / 2 for l in lengths))
    assert lower <= len(bins) <= 2 * sum(lengths) / seq_len + 1
    assert sum(sum(lengths[i] for i in b) * 2 <= seq_len for b in bins) <= 1


@pytest.mark.parametrize("threads", [0, 2])
def test_iterator_state_restores_exactly(threads):
    ds = make(buffer_docs=24, threads=threads)
    rng = random.Random(threads)
    for _ in range(3):
        it = iter(ds)
        for _ in range(rng.randint(0, 25)):
            next(it)
        state = json.loads(json.dumps(it.get_state()))        # JSON round trip, as in checkpoints
        want = [next(it) for _ in range(15)]
        it2 = iter(ds)
        it2.set_state(state)
        got = [next(it2) for _ in range(15)]
        for a, b in zip(want, got):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])


def test_heldout_records_never_reach_training():
    mix = ToyMixture()
    heldout = [mix.record(0, i) for i in range(0, 400, 7)]
    exclude = {dp.record_hash(r) for r in heldout}
    held_docs = {tuple(encode(r)) for r in heldout}
    it = iter(make(exclude=exclude))
    seen = []
    for _ in range(40):
        b = next(it)
        for tok, seg in zip(b["tokens"], b["segment_ids"]):
            seen += docs_of_row(tok, seg)
    assert len(seen) > 200
    assert not (set(seen) & held_docs)
    # and without exclusion, they do show up (the test can fail)
    it = iter(make())
    seen2 = []
    for _ in range(40):
        b = next(it)
        for tok, seg in zip(b["tokens"], b["segment_ids"]):
            seen2 += docs_of_row(tok, seg)
    assert set(seen2) & held_docs


def test_jsonl_heldout_split_is_excluded(tmp_path):
    mix = ToyMixture()
    recs = [mix.record(1, i) for i in range(60)]
    for r in recs:
        r["op"] = 3
    (tmp_path / "train" / "op3").mkdir(parents=True)
    (tmp_path / "heldout" / "op3").mkdir(parents=True)
    (tmp_path / "train" / "op3" / "shard-00000.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    # the held-out split shares 10 records with train (a leak): training must not see them
    (tmp_path / "heldout" / "op3" / "shard-00000.jsonl").write_text("\n".join(json.dumps(r) for r in recs[:10]) + "\n")
    exclude = dp.heldout_hashes(tmp_path)
    assert exclude == {dp.record_hash(r) for r in recs[:10]}
    train = dp.load_train_records(tmp_path, {3: 10**9}, lambda r: len(encode(r)))
    assert len(train) == 60
    ds = dp.build_dataset(train, encode_all, seq_len=64, batch_size=2, pad_id=1, exclude_hashes=exclude,
                          buffer_docs=8, num_threads=0, num_epochs=1, process_index=0, process_count=1)
    seen = set()
    for b in ds:
        for tok, seg in zip(b["tokens"], b["segment_ids"]):
            seen |= set(docs_of_row(tok, seg))
    assert seen and not (seen & {tuple(encode(r)) for r in recs[:10]})
    with pytest.raises(DataError, match="op 4"):
        dp.load_train_records(tmp_path, {4: 10}, lambda r: 1)
    with pytest.raises(DataError, match="fewer than its budget"):
        dp.load_train_records(tmp_path, {3: 10**9}, lambda r: 1, strict=True)


def test_bad_jsonl_line_names_file_and_line(tmp_path):
    (tmp_path / "train" / "op2").mkdir(parents=True)
    good = json.dumps(ToyMixture().record(0, 0) | {"op": 2})
    (tmp_path / "train" / "op2" / "a.jsonl").write_text(good + "\n{not json\n")
    with pytest.raises(DataError, match=r"a\.jsonl:2:"):
        dp.load_train_records(tmp_path, None, lambda r: 1)


def test_per_host_shards_are_disjoint():
    def docs(pi):
        it = iter(make(pi=pi, pc=2, buffer_docs=8))
        out = []
        for _ in range(6):
            b = next(it)
            for tok, seg in zip(b["tokens"], b["segment_ids"]):
                out += docs_of_row(tok, seg)
        return out
    a, b = docs(0), docs(1)
    assert a and b and a != b
    # host 0 reads even record indices, host 1 odd ones
    rec = ToyMixture()
    evens = {tuple(encode(rec.record(0, i))) for i in range(0, 2000, 2)}
    odds = {tuple(encode(rec.record(0, i))) for i in range(1, 2000, 2)}
    assert set(a) <= evens and set(b) <= odds


def test_eval_batches_cover_every_record_once():
    recs = [ToyMixture().record(5, i) for i in range(37)]
    batches = dp.eval_batches(recs, encode, seq_len=64, batch_size=4, pad_id=1)
    seen = []
    for b in batches:
        assert b["tokens"].shape == (4, 64)
        for tok, seg in zip(b["tokens"], b["segment_ids"]):
            seen += docs_of_row(tok, seg)
    assert sorted(seen) == sorted(tuple(encode(r)) for r in recs)
