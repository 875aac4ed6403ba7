"""The recipe sweep's points (benchmarks/sweep_mini.py) are valid stage configs at both scales: every
point's pre-training config passes the stage's own validation, trains on ops inside its ID bucket, and
the evaluation scores the buckets the point was trained for. (Running a point is the sweep itself.)"""
import argparse
import importlib.util
import pathlib

import pytest

from interplay_jax.config import parse_buckets
from interplay_jax.model.qwen2 import model_config_from_dict
from interplay_jax.stages import validate
from interplay_jax.stages.train import mixture_of

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "sweep_mini.py"


def _sweep():
    spec = importlib.util.spec_from_file_location("sweep_mini", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("scale", ["mini", "cpu"])
def test_every_point_is_a_valid_config_on_its_own_op_range(scale, tmp_path):
    s = _sweep()
    points, common, _, model_preset, buckets = s.SCALES[scale]
    lo, hi = parse_buckets(buckets)["ID"]
    shapes = set()
    for name in points:
        spec = s.point_spec(name, scale)
        c = s.pretrain_config(spec, tmp_path / name, "", [], total_steps=10)
        validate(c, check_files=False)
        mc = model_config_from_dict(c.model)
        assert c.model.preset == model_preset and mc.num_layers == spec["model"].get("num_layers", mc.num_layers)
        assert (c.optimizer.lr, c.batch_size, c.document_mask) == (spec["lr"], spec["batch_size"], spec["document_mask"])
        assert set(mixture_of(c).ops) <= set(range(lo, hi + 1)), (name, mixture_of(c).ops)
        assert c.eval.buckets == buckets
        shapes.add((mc.num_layers, mc.hidden_size))
    assert len(shapes) >= 3                      # the sweep asks depth vs width, not one shape
    a = argparse.Namespace(scale=scale, eval_ops="2-7", eval_per_op=4, eval_n=2, eval_max_new=64, eval_batch=8)
    e = s.eval_config(tmp_path / "x", tmp_path / "ev", a)
    assert e.buckets == buckets and e.sampling.n == 2


def test_cpu_mixtures_weight_as_named():
    s = _sweep()
    for name, easy in (("cpu_base", False), ("cpu_easy", True)):
        c = s.pretrain_config(s.point_spec("t4_lr2e-3", "cpu") | {"mixture": name}, "/tmp/unused", "", [], 10)
        m = mixture_of(c)
        by_ops = {c_.ops: p for c_, p in zip(m.components, m.probs)}
        assert by_ops[(2, 3)] == pytest.approx(0.5 if easy else 0.2)
        assert by_ops[(5,)] == pytest.approx(0.2 if easy else 0.5)


def test_unknown_point_is_one_line():
    s = _sweep()
    with pytest.raises(SystemExit, match="unknown cpu point 'd12_lr2e-3'"):
        s.point_spec("d12_lr2e-3", "cpu")


def test_point_names_expand_default_in_place():
    s = _sweep()
    assert s.point_names("default,d12_bs32k", "mini") == s.DEFAULT_POINTS + ["d12_bs32k"]
    assert s.point_names("d12_lr2e-3, default", "mini")[0] == "d12_lr2e-3"
    assert len(s.point_names("d12_lr2e-3, default", "mini")) == len(s.DEFAULT_POINTS)
    assert s.point_names("all", "cpu") == list(s.CPU_POINTS)
