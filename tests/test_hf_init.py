"""An HF directory (e.g. a released checkpoint) as a parent: its config.json gives the architecture,
so midtrain / rl ``init_from`` and eval take it without naming a preset; head dim 72 (the release's
difficulty_qwen2_100M layout) throughout. Micro-sized, in process."""
import jax
import numpy as np
import pytest
from flax import nnx

from conftest import load_config

from interplay_jax import checkpoint as ck
from interplay_jax.errors import ConfigError
from interplay_jax.lineage import format_chain
from interplay_jax.main import run_config
from interplay_jax.model import hf
from interplay_jax.model.qwen2 import Qwen2, model_config
from interplay_jax.sampling.policy import init_model_config, load_params, load_policy, parent_model_config
from interplay_jax.task.mixture import get_mixture
from interplay_jax.task.tokenizer import train_on_records

# the release45m head layout (8 / 4 heads of 72 would be 576 wide; 2 / 1 keeps it micro)
SHAPE = dict(hidden_size=144, num_heads=2, num_kv_heads=1, num_layers=1, intermediate_size=64, vocab_size=400,
             max_position_embeddings=1024)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """An HF Qwen2 directory with head dim 72 and its own tokenizer.json."""
    root = tmp_path_factory.mktemp("hf72")
    mix = get_mixture({"ops": [2, 3], "contexts": ["A"]})
    tok = train_on_records([mix.record(1, i) for i in range(150)], vocab_size=400)
    tok_path = tok.save(str(root / "tokenizer.json"))
    cfg = model_config("release45m", **SHAPE)
    assert cfg.head_dim == 72
    path = root / "hf"
    hf.save(Qwen2(cfg, rngs=nnx.Rngs(params=7)), cfg, path, tokenizer=tok_path)
    return path


def _hf_params(path):
    return {"/".join(ck.path_parts(p)): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(nnx.split(hf.load(path)[0], nnx.Param)[1])[0]}


def _run_params(run_dir):
    params, _, _ = ck.restore_params(run_dir)
    return {"/".join(ck.path_parts(p)): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_architecture_comes_from_config_json(hf_dir):
    want = model_config("release45m", **SHAPE)
    assert parent_model_config(str(hf_dir)) == want
    # a pretrain / midtrain model block: its preset is ignored for an HF parent, runtime fields apply
    block = {"preset": "tiny", "dtype": "bfloat16", "remat": True, "num_layers": 9}
    assert init_model_config(block, str(hf_dir)) == model_config("release45m", **SHAPE, dtype="bfloat16", remat=True)
    assert init_model_config(block, "") == model_config("tiny", dtype="bfloat16", remat=True, num_layers=9)


def test_load_params_checks_shapes(hf_dir):
    from interplay_jax.train import lm_step, optim, sharding as shd
    import types

    ocfg = types.SimpleNamespace(lr=1e-3, min_lr=0.0, warmup_steps=0, total_steps=4, schedule="constant", b1=0.9,
                                 b2=0.999, eps=1e-8, weight_decay=0.0, grad_clip=1.0)
    tx = optim.make_optimizer(ocfg, optim.make_schedule(ocfg))
    mesh = shd.make_mesh(-1, 1, 1)
    for cfg, ok in ((model_config("release45m", **SHAPE), True), (model_config("micro", vocab_size=400), False)):
        _, abstract = lm_step.abstract_state(cfg, tx)
        target = ck.abstract_target(abstract, shd.state_shardings(abstract, mesh))["params"]
        if ok:
            params, where, step = load_params(str(hf_dir), target)
            assert step == 0 and where == hf_dir
            got = {"/".join(ck.path_parts(p)): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
            want = _hf_params(hf_dir)
            assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
        else:
            with pytest.raises(ConfigError, match="wrong model shape|parameter arrays"):
                load_params(str(hf_dir), target)


def test_midtrain_from_hf_dir_without_a_preset(hf_dir, tmp_path):
    c = load_config("midtrain.py:mid,cpu")            # its model block says preset "tiny": ignored
    c.workdir = str(tmp_path / "mid")
    c.init_from = str(hf_dir)
    c.tokenizer = ""                                  # -> the HF dir's own tokenizer.json
    c.update(dict(seq_len=512, batch_size=2, total_steps=2, ckpt_every=2, log_every=1, eval_every=0, progress=False))
    c.eval.per_bucket = 0
    c.data.update(dict(buffer_docs=8, num_threads=0))
    c.optimizer.lr = 1e-9                             # the params barely move: they must be the HF ones
    c.optimizer.min_lr = 1e-9
    out = run_config(c)
    assert out["steps"] == 2 and out["reason"] == "done"
    lineage = ck.read_lineage(c.workdir)
    assert lineage["model"]["head_dim"] == 72 and lineage["model"]["hidden_size"] == 144
    assert lineage["parent"] == {"run_dir": str(hf_dir), "step": 0}
    assert lineage["tokenizer"]["path"] == str(hf_dir / "tokenizer.json")
    got, want = _run_params(c.workdir), _hf_params(hf_dir)
    assert got.keys() == want.keys()
    assert max(float(np.abs(got[k] - want[k]).max()) for k in got) < 1e-6   # a fresh init differs by ~0.02
    assert [r["stage"] for r in ck.lineage_chain(c.workdir)] == ["midtrain", "hf"]
    assert "(the chain starts from an HF checkpoint directory)" in format_chain(c.workdir)


def test_rl_from_hf_dir_with_kl_reference(hf_dir, tmp_path):
    c = load_config("rl.py:uniform,quick")           # model.preset "": the parent's (here config.json)
    c.workdir = str(tmp_path / "rl")
    c.init_from = str(hf_dir)
    c.tokenizer = str(hf_dir / "tokenizer.json")
    c.data.ops = (2, 3)
    c.rl.update(dict(num_prompts=2, n=2, max_response_len=8, total_steps=1, num_minibatches=1,
                     prompt_buckets="256"))
    c.progress = False
    assert c.grpo.kl_coef > 0                         # the frozen reference is loaded from the HF dir
    out = run_config(c)
    assert out["steps"] == 1 and out["reason"] == "done" and "kl" in out["final"]
    lineage = ck.read_lineage(c.workdir)
    assert lineage["model"]["head_dim"] == 72 and lineage["parent"]["run_dir"] == str(hf_dir)


def test_eval_of_head_dim_72_hf_dir_needs_no_preset(hf_dir, tmp_path):
    policy = load_policy(hf_dir)
    assert policy.cfg.head_dim == 72 and policy.source == "hf"
    c = load_config("eval.py:cpu")                    # eval configs have no model preset at all
    c.checkpoints = str(hf_dir)
    c.workdir = str(tmp_path / "eval")
    c.eval.ops = "2"
    c.eval.per_op = 1
    c.sampling.n = 2
    c.sampling.max_new_tokens = 8
    c.gold_nll = False
    c.progress = False
    out = run_config(c)
    summary = out["summaries"]["hf"]
    assert summary["source"]["kind"] == "hf" and summary["timing"]["completions"] == 2
