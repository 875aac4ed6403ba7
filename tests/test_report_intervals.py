"""Bootstrap intervals over prompts (stratified by op), paired deltas, the per-op error analysis and
example texts in the evaluation report."""
import json

import numpy as np
import pytest

from interplay_jax.eval import bootstrap, errors, report
from interplay_jax.eval.evaluate import evaluate_items
from interplay_jax.eval.evalset import generate_evalset
from interplay_jax.task import formats


def _sample(ok, ans=None, **kw):
    s = dict(verified_correct=ok, answer_correct=ok if ans is None else ans, process_acc=1.0 if ok else 0.5,
             dependency_mismatch=0, missing_node=0 if ok else 1, value_mismatch=0, answer_mismatch=0,
             extra_nodes=0, length=10, stopped=True, n_gold=3, n_pred=3, answer_parsed=True)
    s.update(kw)
    return s


def _prompts(spec, tag="p"):
    """spec: [(op, correct count of 4)] -> prompts with ids op-index (same ids across checkpoints)."""
    out = []
    for i, (op, c) in enumerate(spec):
        out.append(dict(op=op, context="A", mode="normalforward", id=f"{tag}{op}-{i}",
                        samples=[_sample(j < c) for j in range(4)]))
    return out


def test_interval_holds_the_mean_is_seeded_and_narrows_with_prompts():
    rng = np.random.default_rng(1)
    spec = [(int(op), int(c)) for op, c in zip(rng.integers(2, 11, 120), rng.integers(0, 5, 120))]
    prompts = _prompts(spec)
    s = report.summarize(prompts)
    ci = s["intervals"]["pass_at_k"]["ID"]["verified"]
    for k in (1, 2, 4):
        lo, hi = ci[k]
        assert lo < s["pass_at_k"]["ID"]["verified"][k] < hi
    assert bootstrap.bucket_intervals(prompts) == bootstrap.bucket_intervals(prompts)      # seeded
    assert bootstrap.bucket_intervals(prompts, seed=1) != bootstrap.bucket_intervals(prompts, seed=0)
    small = bootstrap.bucket_intervals(prompts[:30])["ID"]["verified"][1]
    assert small[1] - small[0] > ci[1][1] - ci[1][0]
    # the width is what the normal approximation says (sd / sqrt(P), within 25%)
    v = bootstrap.prompt_values(prompts, [1], "verified_correct")[:, 0]
    per_op_var = sum(np.var(v[[i for i, (op, _) in enumerate(spec) if op == o]]) * sum(1 for x in spec if x[0] == o)
                     for o in set(op for op, _ in spec)) / len(v) ** 2
    assert (ci[1][1] - ci[1][0]) == pytest.approx(2 * 1.96 * np.sqrt(per_op_var), rel=0.25)


def test_resampling_is_stratified_by_op():
    # op 2 always solved, op 3 never: every stratified replicate has mean exactly 1/2
    prompts = _prompts([(2, 4)] * 10 + [(3, 0)] * 10)
    lo, hi = bootstrap.bucket_intervals(prompts)["ID"]["verified"][1]
    assert lo == hi == 0.5
    # within one op there is spread
    lo, hi = bootstrap.op_intervals(_prompts([(2, 4)] * 10 + [(2, 0)] * 10))[2]["verified"][1]
    assert lo < 0.5 < hi


def test_paired_delta_cancels_prompt_difficulty():
    rng = np.random.default_rng(0)
    cs = rng.integers(0, 4, 60)
    base = _prompts([(5, int(c)) for c in cs])
    better = _prompts([(5, int(c) + 1) for c in cs])          # every prompt: one more correct sample of 4
    better.reverse()                                          # matched by id, not by position
    d = bootstrap.paired_deltas(base, better)["ID"]
    assert d["n_prompts"] == 60
    assert d["verified"][1]["delta"] == pytest.approx(0.25)
    assert d["verified"][1]["ci"] == pytest.approx([0.25, 0.25])          # paired: no spread at all
    same = bootstrap.paired_deltas(base, base)["ID"]["verified"][4]
    assert same == {"delta": 0.0, "ci": [0.0, 0.0]}
    assert bootstrap.paired_deltas(base, _prompts([(5, 1)], tag="other")) == {}   # no shared prompts


def test_error_analysis_primary_outcomes_and_flags():
    ss = [_sample(True),
          _sample(False, answer_parsed=False, n_pred=0),                                    # format
          _sample(False, missing_node=1, dependency_mismatch=1),                            # missing first
          _sample(False, missing_node=0, dependency_mismatch=1, value_mismatch=1),          # dependency
          _sample(False, missing_node=0, value_mismatch=1),                                 # value
          _sample(False, missing_node=0, process_acc=1.0, extra_nodes=2, n_pred=5, stopped=False)]  # answer
    assert [errors.primary(s) for s in ss] == ["correct", "format", "missing_node", "dependency", "value", "answer"]
    old = {k: v for k, v in ss[1].items() if k not in ("answer_parsed", "n_pred")}
    assert errors.is_format_error(old) is None and errors.primary(old) == "missing_node"
    a = errors.per_op([dict(op=2, id="x", samples=ss)])[2]
    assert sum(a["primary"].values()) == pytest.approx(1.0)
    assert a["flags"]["process_ok_answer_wrong"] == pytest.approx(1 / 6)   # the last one
    assert a["flags"]["extra_nodes"] == pytest.approx(1 / 6) and a["flags"]["not_stopped"] == pytest.approx(1 / 6)
    assert a["extra_steps"] == pytest.approx((-3 + 2) / 6)
    assert a["redefined"] is None                       # samples scored before the field was stored
    ss[2]["redefined_nodes"], ss[3]["redefined_nodes"] = 1, 0
    assert errors.per_op([dict(op=2, id="x", samples=ss)])[2]["redefined"] == pytest.approx(1 / 2)


def test_op2_vs_op3_paragraph_is_computed():
    prompts = _prompts([(2, 1)] * 4 + [(3, 3)] * 4)
    for p in prompts[:4]:                    # op2: all gold nodes right, answer wrong, extra steps
        for s in p["samples"][1:]:
            s.update(process_acc=1.0, missing_node=0, extra_nodes=1, n_pred=4)
    s = report.summarize(prompts)
    text = errors.compare_ops(s["error_analysis"], s["per_op"], 2, 3, generator_n=30)
    assert "op2 scores below op3" in text and "`answer`" in text
    assert "extra nodes 75% vs 0%" in text


def test_eval_stores_examples_and_the_report_shows_intervals(tmp_path):
    items = generate_evalset(ops=[2, 3, 12], contexts=("A",), per_op=3, seed=5)
    keep = {it["id"]: 2 for it in items[::3]}
    gold = lambda it, n: [formats.format_completion(it["record"])] * (n - 1) + ["nonsense"]  # noqa: E731
    prompts = evaluate_items(None, None, None, items, n=3, responder=gold, progress=False, texts=keep)
    with_text = [p for p in prompts if p["id"] in keep]
    assert all(p["gold"]["solution"] and [("text" in s) for s in p["samples"]] == [True, True, False]
               for p in with_text)
    assert not any("gold" in p for p in prompts if p["id"] not in keep)
    assert all(s["n_gold"] >= 2 and s["answer_parsed"] for p in prompts for s in p["samples"][:2])
    assert prompts[0]["samples"][2]["answer_parsed"] is False and prompts[0]["samples"][2]["n_pred"] == 0
    worse = json.loads(json.dumps(prompts))
    for p in worse:
        p["samples"][0].update(verified_correct=False, answer_correct=False)
    summaries = {"base": report.summarize(prompts, checkpoint="base"),
                 "rl": report.summarize(worse, checkpoint="rl")}
    old = {k: v for k, v in summaries["rl"].items() if k not in ("intervals", "error_analysis")}
    assert report.ensure_intervals(old)["intervals"] == summaries["rl"]["intervals"]
    paths = report.write_report(tmp_path, summaries)
    res = report.load_results(paths["results"])
    d = res["delta_intervals"]["rl"]["ID"]["verified"][1]
    assert d["delta"] == pytest.approx(-1 / 3) and d["ci"][0] <= -1 / 3 <= d["ci"][1]
    md = (tmp_path / "report.md").read_text()
    assert "| base | ID | 6 | 66.7 [66.7, 66.7] |" in md
    assert "| rl | ID | 6 | -33.3 [-33.3, -33.3] |" in md
    assert "base: error analysis per op" in md and "### base: example responses" in md
    assert "**op2 vs op3.**" in md
