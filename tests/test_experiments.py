import pathlib
import subprocess
import sys

import pytest

from interplay_jax.errors import ConfigError
from interplay_jax.experiments import dag
from interplay_jax.experiments.dag import Run

ALL = ["E1", "E2", "E3", "E4", "E5", "E6", "E7"]


@pytest.mark.parametrize("scale", ["mini", "paper", "cpu"])
@pytest.mark.parametrize("name", ALL)
def test_every_run_builds_a_valid_config(name, scale, tmp_path):
    runs = dag.expand(name, scale)
    seen = set()
    for r in runs:
        assert all(d in seen for d in r.deps()), f"{r.name} comes before its dependencies"
        seen.add(r.name)
        cfg = dag.load_config(r, tmp_path)
        assert cfg.workdir == str(tmp_path / r.name)
        if r.parent:
            assert cfg.init_from == str(tmp_path / r.parent)
        if r.compare:
            assert cfg.checkpoints.split(",") == [str(tmp_path / c) for c in r.compare]
    assert runs[-1].config == "eval.py" or any(r.config == "eval.py" for r in runs)


def test_e3_splits_are_compute_matched():
    runs = {r.name: r for r in dag.expand("E3", "paper")}
    assert runs["mid_beta0"].overrides["total_steps"] == 4000
    assert runs["mid_beta0.5"].overrides["total_steps"] == 2000 and runs["rl_beta0.5"].overrides["rl.total_steps"] == 50
    assert "mid_beta1" not in runs and runs["rl_beta1"].overrides["rl.total_steps"] == 100
    assert runs["rl_beta0.5"].parent == "mid_beta0.5" and runs["rl_beta1"].parent == "base"


def test_cycles_and_unknown_deps_are_refused():
    with pytest.raises(ConfigError, match="cycle"):
        dag.topo_order([Run("a", "rl.py", parent="b"), Run("b", "rl.py", parent="a")])
    with pytest.raises(ConfigError, match="unknown run"):
        dag.topo_order([Run("a", "rl.py", parent="zzz")])
    with pytest.raises(ConfigError, match="unknown experiment"):
        dag.expand("E9", "mini")


def test_unknown_override_key_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no field 'nope.x'"):
        dag.load_config(Run("a", "pretrain.py", "base,cpu", {"nope.x": 1}), tmp_path)


def test_cli_dry_run_and_commands(tmp_path):
    out = subprocess.run([sys.executable, "-m", "interplay_jax.experiments.run", "E1", "--scale=mini", "--dry-run",
                          f"--root={tmp_path}"], capture_output=True, text=True, check=True).stdout
    assert "rl_op11-14" in out and "<- base" in out
    cmds = subprocess.run([sys.executable, "-m", "interplay_jax.experiments.run", "E7", "--scale=paper",
                           "--emit-commands", f"--root={tmp_path}"], capture_output=True, text=True, check=True).stdout
    lines = [l for l in cmds.splitlines() if l.startswith("python -m interplay_jax.main")]
    assert len(lines) == 16   # tokenizer + 5 x (pretrain, rl, eval)
    assert any("--config=configs/rl.py:op11-14,paper,outcome" in l and "init_from=" in l for l in lines)


def test_cli_only_names_a_run(tmp_path, capsys):
    from interplay_jax.experiments import run as exp_run

    # a misspelt --only used to do nothing and say "all runs done"; now it is one error line
    assert exp_run.main(["E1", "--scale=mini", f"--root={tmp_path}", "--only=tokenizr"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run tokenizr" in err[0] and "tokenizer, base" in err[0]
    assert not any(tmp_path.iterdir())                     # nothing ran


def _fake_summary(name, ks_values, buckets=("ID", "OOD-edge", "OOD-hard")):
    from interplay_jax.eval import report as eval_report

    # a real summary from synthetic per-sample outcomes: prompt i of op o is solved by the first c samples
    prompts = []
    for op, c in ks_values:
        samples = [dict(verified_correct=j < c, answer_correct=j < c + 1, process_acc=1.0 if j < c else 0.5,
                        dependency_mismatch=0, missing_node=int(j >= c), value_mismatch=0, answer_mismatch=0,
                        extra_nodes=0, length=10, stopped=True) for j in range(4)]
        prompts.append(dict(op=op, context="A", mode="normalforward", id=f"{name}{op}", samples=samples))
    return eval_report.summarize(prompts, checkpoint=name)


def test_report_gathers_eval_results_and_published_numbers(tmp_path):
    import json as _json

    from interplay_jax.experiments import report

    root = tmp_path / "E1_mini"
    summaries = {"base": _fake_summary("base", [(5, 3), (12, 0), (16, 0)]),
                 "rl_op11-14": _fake_summary("rl", [(5, 3), (12, 2), (16, 1)])}
    for name, s in summaries.items():
        d = root / "eval" / name
        d.mkdir(parents=True)
        (d / "results.json").write_text(_json.dumps(s))
    paths = report.build("E1", "mini", tmp_path)
    md = pathlib.Path(paths["markdown"]).read_text()
    assert "| rl_op11-14 | OOD-edge | pass@1 | 50.0 | 50.6 |" in md   # ours (2 of 4) beside the study's
    combined = _json.loads(pathlib.Path(paths["results"]).read_text())
    assert combined["order"] == ["base", "rl_op11-14"]
    assert pathlib.Path(paths["passk_curves"]).stat().st_size > 0
    with pytest.raises(ConfigError, match="no eval results"):
        report.build("E2", "mini", tmp_path)


def test_overrides_reach_one_run(tmp_path):
    runs = dag.expand("E1", "cpu")
    dag.apply_overrides(runs, ["base.total_steps=1500", "rl_edge.data.edge.ops=2-6", "eval.eval.ops=2,3,8"])
    by = {r.name: r for r in runs}
    assert dag.load_config(by["base"], tmp_path).total_steps == 1500
    assert dag.load_config(by["rl_edge"], tmp_path).data.edge.ops == "2-6"
    assert dag.load_config(by["rl_op7-10"], tmp_path).data.edge.ops == "2-20"
    assert dag.load_config(by["eval"], tmp_path).eval.ops == "2,3,8"
    with pytest.raises(ConfigError, match="no run named"):
        dag.apply_overrides(runs, ["nope.x=1"])
    with pytest.raises(ConfigError, match="expected RUN.KEY=VALUE"):
        dag.apply_overrides(runs, ["base=1"])


@pytest.mark.parametrize("scale, share", [("cpu_shifted", 0), ("cpu_exposed", 0.05), ("cpu_exposed20", 0.2)])
def test_e1_shifted_scale_is_consistent(tmp_path, scale, share):
    """E1 one size down: the base trains on ID ops (cpu_exposed*: and on the edge ops at a 5% / 20% share), each
    regime sits where its study regime sits (edge regime inside the edge bucket, hard regime in OOD-hard),
    and every claim names a run and a bucket."""
    import json

    from interplay_jax.config import parse_buckets, parse_ops

    runs = {r.name: r for r in dag.expand("E1", scale)}
    cfgs = {n: dag.load_config(r, tmp_path) for n, r in runs.items()}
    buckets = parse_buckets(cfgs["eval"].buckets)
    ops = {name: set(range(lo, hi + 1)) for name, (lo, hi) in buckets.items()}
    edge = "edge" if share else "OOD-edge"
    mixture = json.loads(cfgs["base"].mixture)
    seen = {op for part in mixture for op in part["ops"]}
    assert sum(p["weight"] for p in mixture) == pytest.approx(1.0)
    if share:
        assert seen == ops["ID"] | ops[edge]
        assert sum(p["weight"] for p in mixture if set(p["ops"]) <= ops[edge]) == pytest.approx(share)
        assert "rl_edge" not in runs and "rl_op8-9" not in runs and cfgs["rl_op6-7"].rl.max_response_len == 320
    else:
        assert seen == ops["ID"] and set(cfgs["rl_op8-9"].data.ops) == ops["OOD-hard"]
    assert set(cfgs["rl_op6-7"].data.ops) == ops[edge]
    if "rl_op4-5" in runs:
        assert set(cfgs["rl_op4-5"].data.ops) <= ops["ID"]
    if scale == "cpu_exposed20":    # E4's variant at the edge: the same run but for the reward
        strict, outcome = cfgs["rl_op6-7_strict"], cfgs["rl_op6-7"]
        assert (strict.rl.reward, outcome.rl.reward) == ("strict", "outcome")
        assert strict.rl.to_dict() | {"reward": "outcome"} == outcome.rl.to_dict()
        assert {c.rsplit("/", 1)[-1] for c in cfgs["eval"].checkpoints.split(",")} == {"base", "rl_op6-7", "rl_op6-7_strict"}
    assert set(parse_ops(cfgs["eval"].eval.ops)) == set().union(*ops.values())
    module = dag.experiment_module("E1")
    claims = module.findings(scale)
    assert claims != module.findings("mini") and all(c[1] in runs and c[2] in buckets for c in claims)
    assert [c[5] for c in claims].count(True) == (2 if "rl_op4-5" in runs else 1)
    with pytest.raises(ConfigError, match=f"unknown scale '{scale}' for E2"):
        dag.expand("E2", scale)
