"""The experiment report: the finding's verdict computed from paired intervals, runs cut by a time
limit (TensorBoard curves, a partial evaluation from samples.jsonl), the edge run's choice."""
import json
import pathlib

from interplay_jax.eval import report as eval_report
from interplay_jax.experiments import report
from interplay_jax.train.loop import ScalarWriter


def _prompts(spec):
    """spec: [(op, correct of 8)], same ids for every checkpoint (the same eval set)."""
    out = []
    for i, (op, c) in enumerate(spec):
        ss = [dict(verified_correct=j < c, answer_correct=j < c, process_acc=1.0 if j < c else 0.0,
                   dependency_mismatch=0, missing_node=int(j >= c), value_mismatch=0, answer_mismatch=int(j >= c),
                   extra_nodes=0, length=50, stopped=True, n_gold=3, n_pred=3, answer_parsed=True) for j in range(8)]
        out.append(dict(op=op, context="A", mode="normalforward", id=f"q{i}", samples=ss))
    return out


def test_e1_report_verdict_cut_runs_and_edge(tmp_path):
    root = tmp_path / "E1_mini"
    ident = [(op, 4 if i % 2 else 0) for op in range(2, 11) for i in range(6)]
    base_edge = [(op, 0 if i % 3 else 1) for op in range(11, 15) for i in range(6)]
    evals = {
        "base": _prompts(ident + base_edge),
        "rl_op11-14": _prompts(ident + [(op, 3) for op, _ in base_edge]),         # OOD-edge clearly up
        "rl_op7-10": _prompts([(op, 4) for op, _ in ident] + base_edge),          # ID pass@8 up
    }
    for name, prompts in evals.items():
        d = root / "eval" / name
        d.mkdir(parents=True)
        if name == "rl_op7-10":      # its evaluation was cut off: only samples.jsonl
            (d / "samples.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts) + '{"cut')
        else:
            (d / "results.json").write_text(json.dumps(eval_report.summarize(prompts, checkpoint=name)))
    # a finished RL run (history in summary.json) and one cut by a time limit (TensorBoard only)
    (root / "rl_op11-14").mkdir()
    (root / "rl_op11-14" / "summary.json").write_text(json.dumps(
        {"steps": 3, "reason": "done", "wall_s": 120,
         "history": [{"step": s, "reward_mean": 0.1 * s, "verified_acc": 0.05 * s, "response_len": 100 - s}
                     for s in (1, 2, 3)]}))
    (root / "rl_op11-14" / "lineage.json").write_text(json.dumps(
        {"stage": "rl", "config": {"rl": {"num_prompts": 4, "n": 2, "total_steps": 3}}, "model_params": 10_000}))
    w = ScalarWriter(root / "rl_op7-10" / "tb")
    for s in (1, 2):
        w.add_scalar("rl/reward_mean", 0.3 * s, s)
        w.add_scalar("rl/response_len", 80.0, s)
    w.close()
    (root / "rl_edge").mkdir()
    (root / "rl_edge" / "edge.json").write_text(json.dumps(
        {"ops": [6, 7], "how": "threshold", "k": 16, "pass1_max": 0.5, "passk_min": 0.1, "probe_per_op": 8,
         "per_op": {"6": {"pass@1": 0.3, "pass@k": 0.6}, "7": {"pass@1": 0.2, "pass@k": 0.5},
                    "9": {"pass@1": 0.0, "pass@k": 0.0}}}))

    hist = report.rl_history(root / "rl_op7-10")
    assert [r["step"] for r in hist] == [1, 2] and hist[1]["reward_mean"] == 0.6000000238418579
    paths = report.build("E1", "mini", tmp_path, out=tmp_path / "out")
    md = pathlib.Path(paths["markdown"]).read_text()
    assert pathlib.Path(paths["rl_curves"]).stat().st_size > 1000
    row = next(ln for ln in md.splitlines() if ln.startswith("| RL at the edge (op11-14) lifts OOD-edge pass@n"))
    assert row.endswith("| yes |"), row
    row = next(ln for ln in md.splitlines() if ln.startswith("| RL on in-distribution ops (op7-10)"))
    assert row.endswith("| no |"), row                        # ID pass@8 went up: contradicts the claim
    assert "Overall (core claims): **partly**." in md
    assert "Partial evaluations" in md and "rl_op7-10" in md
    assert "Chosen ops: **[6, 7]**" in md and "| 6 | 30.0 | 60.0 | yes |" in md
    assert "| rl_op11-14 | 3 / 3 | 4 prompts x 2 rollouts / step | 2.0 | done | 0.0M |" in md
    res = json.loads(pathlib.Path(paths["results"]).read_text())
    assert res["order"] == ["base", "rl_op7-10", "rl_op11-14"]     # the eval run's order
    assert res["delta_intervals"]["rl_op11-14"]["OOD-edge"]["verified"]["8"]["ci"][0] > 0


def test_e7_claims_compare_each_rl_run_with_its_own_base(tmp_path):
    root = tmp_path / "E7_mini"
    buckets = {"op11-14": (11, 14), "op15-20": (15, 20)}
    spec = {
        "pre_hard0.1": [(op, 8) for op in (12, 16) for _ in range(8)],       # a strong first base
        "rl_hard0.1": [(op, 8) for op in (12, 16) for _ in range(8)],
        "pre_hard5": [(op, 0) for op in (12, 16) for _ in range(8)],
        "rl_hard5": [(op, 2 if op == 12 else 0) for op in (12, 16) for _ in range(8)],
    }
    for name, s in spec.items():
        mix = name.split("_", 1)[1]
        d = root / f"eval_{mix}" / name
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(eval_report.summarize(_prompts(s), checkpoint=name,
                                                                         buckets=buckets)))
    md = pathlib.Path(report.build("E7", "mini", tmp_path)["markdown"]).read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| RL (op11-14) lifts op11-14 pass@n over its base (hard5)"))
    assert "| 0.0 | 100.0 | +100.0 [+100.0, +100.0] | yes |" in row, row          # vs pre_hard5, not pre_hard0.1
    assert "| rl_hard5 vs pre_hard5 |" in row, row
    row = next(ln for ln in md.splitlines() if ln.startswith("| RL (op11-14) lifts op15-20 pass@n over its base (hard5)"))
    assert row.endswith("| no signal |"), row
    assert "**cannot say**" in md           # hard20 ... hard50 were not evaluated
