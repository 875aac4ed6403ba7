"""Evaluation: pass@k estimator, buckets, oracle responders, end-to-end eval, bad input, resume."""
import itertools
import json
import math

import numpy as np
import pytest

from conftest import load_config

from interplay_jax.errors import ConfigError, DataError
from interplay_jax.eval import evalset, passk, report
from interplay_jax.eval.evaluate import evaluate_items
from interplay_jax.task import formats


# ----------------------------------------------------------------------------------------- pass@k


def _brute(n, c, k):
    flags = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(flags[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert passk.pass_at_k(n, c, k) == pytest.approx(_brute(n, c, k), abs=1e-12), (n, c, k)
    # large n: agrees with the binomial formula, no overflow
    n, c, k = 128, 3, 64
    assert passk.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), rel=1e-12)
    assert passk.ks_for(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert passk.ks_for(6) == [1, 2, 4, 6]
    with pytest.raises(ValueError):
        passk.pass_at_k(4, 5, 1)


def _prompt(op, flags, ctx="crazy_zootopia", answer=None):
    answer = flags if answer is None else answer
    return {"op": op, "context": ctx, "mode": "normalforward", "id": f"{op}-{ctx}-{flags}",
            "samples": [{"verified_correct": f, "answer_correct": a, "process_acc": float(f)}
                        for f, a in zip(flags, answer)]}


def test_bucket_aggregation():
    prompts = [_prompt(3, [1, 0, 0, 0]), _prompt(9, [1, 1, 1, 1]), _prompt(12, [0, 0, 0, 0], answer=[1, 1, 0, 0]),
               _prompt(16, [0, 0, 1, 0], ctx="teachers_in_school"), _prompt(25, [1, 1, 1, 1])]
    res = passk.by_bucket(prompts)
    assert list(res) == ["ID", "OOD-edge", "OOD-hard"]  # op 25 is in no bucket: dropped
    assert res["ID"]["n_prompts"] == 2
    assert res["ID"]["verified"][1] == pytest.approx((0.25 + 1.0) / 2)
    assert res["ID"]["verified"][2] == pytest.approx((0.5 + 1.0) / 2)
    assert res["ID"]["verified"][4] == pytest.approx(1.0)
    assert res["OOD-edge"]["verified"][4] == 0.0
    assert res["OOD-edge"]["answer"][1] == pytest.approx(0.5)
    assert res["OOD-edge"]["answer"][2] == pytest.approx(1 - 1 / 6)
    custom = passk.by_bucket(prompts, {"easy": (2, 5), "rest": (6, 30)})
    assert custom["easy"]["n_prompts"] == 1 and custom["rest"]["n_prompts"] == 4
    ctx = passk.by_context(prompts)
    assert set(ctx) == {"crazy_zootopia", "teachers_in_school"}
    assert ctx["teachers_in_school"]["OOD-hard"]["verified"][1] == pytest.approx(0.25)
    s = report.summarize(prompts)
    assert s["pass_at_k"]["ID"]["verified"][1] == pytest.approx(0.625)
    assert s["per_op"][9]["verified"][1] == 1.0 and s["n"] == 4 and s["ks"] == [1, 2, 4]


# ----------------------------------------------------------------------------------------- oracles


@pytest.fixture(scope="module")
def items():
    return evalset.generate_evalset(ops=[2, 5, 11, 16], contexts=("A", "B", "C"),
                                    modes=("normalforward", "forwardreverse"), per_op=6, seed=3)


def _gold_response(item):
    return formats.format_completion(item["record"])


def _broken_response(item):
    """The gold answer, but the last Define step of the solution removed (its node goes missing)."""
    body, answer = formats.split_solution(item["record"]["solution"])
    cut = body.rfind("Define ")
    assert cut > 0
    return f" {body[:cut].rstrip()} </solution> <answer> {answer} </answer>"


def test_evalset_is_deterministic_disjoint_and_balanced(items):
    assert len(items) == 24
    assert len({it["id"] for it in items}) == 24
    assert {it["op"] for it in items} == {2, 5, 11, 16}
    assert all(it["record"]["op"] == it["op"] for it in items)
    again = evalset.generate_evalset(ops=[2, 5, 11, 16], contexts=("A", "B", "C"),
                                     modes=("normalforward", "forwardreverse"), per_op=6, seed=3)
    assert [it["id"] for it in again] == [it["id"] for it in items]
    excluded = {items[0]["id"], items[5]["id"]}
    other = evalset.generate_evalset(ops=[2, 5, 11, 16], contexts=("A", "B", "C"),
                                     modes=("normalforward", "forwardreverse"), per_op=6, seed=3,
                                     exclude_hashes=excluded)
    assert not excluded & {it["id"] for it in other} and len(other) == 24


def test_oracle_scores_100_strict_and_broken_step_0_strict(items):
    gold = evaluate_items(None, None, None, items, n=3, responder=lambda it, n: [_gold_response(it)] * n,
                          progress=False)
    s = report.summarize(gold)
    for b, e in s["pass_at_k"].items():
        assert e["verified"][1] == 1.0 and e["answer"][1] == 1.0, b
    assert all(v == 1.0 for v in s["process_acc"].values())
    broken = evaluate_items(None, None, None, items, n=3, responder=lambda it, n: [_broken_response(it)] * n,
                            progress=False)
    s = report.summarize(broken)
    for b, e in s["pass_at_k"].items():
        assert e["answer"][1] == 1.0 and e["answer"][3] == 1.0, b
        assert e["verified"][1] == 0.0 and e["verified"][3] == 0.0, b
    assert all(v > 0 for v in (e["missing_node"] for e in s["error_types"].values()))


def test_resume_skips_finished_prompts(items, tmp_path):
    path = tmp_path / "samples.jsonl"
    calls = []

    def responder(it, n):
        calls.append(it["id"])
        return [_gold_response(it)] * n

    first = evaluate_items(None, None, None, items, n=2, responder=responder, samples_path=path, batch_prompts=1,
                           progress=False)
    assert len(calls) == len(items)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:10]) + "\n" + lines[10][:25])  # 10 done, one line cut by a crash
    calls.clear()
    again = evaluate_items(None, None, None, items, n=2, responder=responder, samples_path=path, batch_prompts=1,
                           progress=False)
    assert calls == [it["id"] for it in items[10:]]
    assert [p["id"] for p in again] == [p["id"] for p in first]
    calls.clear()
    evaluate_items(None, None, None, items, n=2, responder=responder, samples_path=path, batch_prompts=1,
                   progress=False)
    assert calls == []


# ----------------------------------------------------------------------------------------- bad input


def test_malformed_eval_file_names_file_and_line(tmp_path, items):
    good = json.dumps(items[0]["record"])
    f = tmp_path / "op2-200.jsonl"
    f.write_text(good + "\n" + good.replace('"op": 2', '"op": "two"') + "\n")
    with pytest.raises(DataError, match=r"op2-200\.jsonl:2: .*op"):
        evalset.load_eval_files(str(f))
    f.write_text(good + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"op2-200\.jsonl:3: invalid JSON"):
        evalset.load_eval_files(str(tmp_path))
    f.unlink()  # (a file named opN-... holds op N only: files of unwanted ops are skipped unread)
    (tmp_path / "mixed.jsonl").write_text("\n".join(json.dumps(it["record"]) for it in items) + "\n")
    loaded = evalset.load_eval_files(str(tmp_path), ops=[5, 11], per_op=2)
    assert [it["op"] for it in loaded] == [5, 5, 11, 11]
    with pytest.raises(ConfigError, match="does not exist"):
        evalset.load_eval_files(str(tmp_path / "nope"))


# ----------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def micro_hf(tmp_path_factory, reference_dir):
    from flax import nnx

    from interplay_jax.model import hf
    from interplay_jax.model.qwen2 import Qwen2, model_config

    cfg = model_config("micro")
    path = tmp_path_factory.mktemp("micro_hf")
    hf.save(Qwen2(cfg, rngs=nnx.Rngs(0)), cfg, path, tokenizer=reference_dir / "tokenizer.json")
    return path


def _eval_config(ckpts, workdir, names=""):
    c = load_config("eval.py:cpu")
    c.checkpoints = ",".join(str(p) for p in ckpts)
    c.workdir = str(workdir)
    c.eval.ops = "2,11"
    c.eval.per_op = 2
    c.sampling.n = 2
    c.sampling.max_new_tokens = 8
    c.progress = False
    c.names = names
    return c


def test_end_to_end_eval_and_resume(micro_hf, tmp_path):
    from interplay_jax.main import run_config

    out = run_config(_eval_config([micro_hf, micro_hf], tmp_path, names="base,rl"))
    res = report.load_results(tmp_path / "results.json")
    assert len(res["prompts"]) == 4 and all(len(p["samples"]) == 2 for p in res["prompts"])
    assert set(res["pass_at_k"]) == {"ID", "OOD-edge"}
    assert set(res["pass_at_k"]["ID"]) == {"verified", "answer"} and set(res["pass_at_k"]["ID"]["verified"]) == {1, 2}
    assert set(res["checkpoints"]) == {"base", "rl"} and "rl" in res["deltas"]
    assert all(np.isfinite(v) for v in res["checkpoints"]["base"]["gold_nll"].values())
    for fig in ("passk_curves.png", "per_op.png", "error_types.png", "deltas.png"):
        assert (tmp_path / fig).stat().st_size > 1000, fig
    assert "| rl | ID |" in (tmp_path / "report.md").read_text()
    assert out["summaries"]["base"]["timing"]["completions"] == 8
    again = run_config(_eval_config([micro_hf], tmp_path, names="rl"))  # all finished: nothing resampled
    assert again["summaries"]["rl"]["timing"]["completions"] == 0


def test_evals_of_different_checkpoints_share_a_workdir_but_not_a_checkpoint(micro_hf, tmp_path):
    """The experiment runner evaluates each checkpoint in its own process, into one workdir: another
    process evaluating "base" there does not stop an evaluation of "rl", but a second one of "base" is
    one ConfigError line."""
    from conftest import lock_held_elsewhere

    from interplay_jax.main import run_config

    with lock_held_elsewhere(tmp_path / "base", "eval run") as pid:
        out = run_config(_eval_config([micro_hf], tmp_path, names="rl"))
        assert (tmp_path / "rl" / "results.json").is_file() and set(out["summaries"]) == {"rl"}
        with pytest.raises(ConfigError, match=rf"{tmp_path / 'base'} is in use by another eval run \(pid {pid} "):
            run_config(_eval_config([micro_hf, micro_hf], tmp_path, names="rl,base"))
        assert not (tmp_path / "base" / "samples.jsonl").exists()


def test_missing_or_wrong_shape_checkpoint_is_one_config_error(micro_hf, tmp_path, reference_dir):
    import shutil

    import jax.numpy as jnp
    from flax import nnx

    from interplay_jax import checkpoint as ckpt
    from interplay_jax.sampling.policy import load_policy
    from interplay_jax.main import run_config
    from interplay_jax.model.qwen2 import Qwen2, model_config

    with pytest.raises(ConfigError, match="does not exist"):
        run_config(_eval_config([tmp_path / "missing"], tmp_path / "w1"))
    bad = tmp_path / "bad_hf"
    shutil.copytree(micro_hf, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["intermediate_size"] *= 2
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="shape"):
        run_config(_eval_config([bad], tmp_path / "w2"))
    c = _eval_config([micro_hf], tmp_path / "w3")
    c.sampling.top_p = 0.0
    with pytest.raises(ConfigError, match="top_p"):
        run_config(c)
    # one of our run dirs: loads at its latest step; a lineage naming another model shape -> ConfigError
    run = tmp_path / "run"
    _, params = nnx.split(Qwen2(model_config("micro"), rngs=nnx.Rngs(0)), nnx.Param)
    lineage = {"model": {"preset": "micro"}, "tokenizer": str(reference_dir / "tokenizer.json")}
    ckpt.write_lineage(run, "pretrain", config=lineage)
    with ckpt.Checkpointer(run) as c:
        c.save(3, {"params": params, "step": jnp.zeros((), jnp.int32)})
    loaded = load_policy(run)
    assert loaded.step == 3 and loaded.source == "run"
    ckpt.write_lineage(run, "pretrain", config=dict(lineage, model={"preset": "tiny"}))
    with pytest.raises(ConfigError, match="wrong model shape"):
        load_policy(run)


def test_make_eval_fn_for_the_training_loop(reference_dir):
    from flax import nnx

    from interplay_jax.eval.evaluate import make_eval_fn
    from interplay_jax.task.tokenizer import Tokenizer
    from interplay_jax.model.qwen2 import Qwen2, model_config

    cfg = model_config("micro")
    graphdef, params = nnx.split(Qwen2(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    items = evalset.generate_evalset(ops=[2, 12], per_op=1, seed=1)
    eval_fn = make_eval_fn(graphdef, cfg, Tokenizer.load(reference_dir / "tokenizer.json"), items, n=2, max_new_tokens=4)
    out = eval_fn({"params": params, "step": 0})
    assert set(out) == {"ID/pass@1", "ID/pass@2", "ID/answer@1", "OOD-edge/pass@1", "OOD-edge/pass@2",
                        "OOD-edge/answer@1", "process_acc"}
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out.values())
