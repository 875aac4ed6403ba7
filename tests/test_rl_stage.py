"""The RL stage end to end on a micro model: runs from a tiny parent checkpoint, resumes exactly
(same rollouts after resume, same final params), and rejects an unknown reward with one line."""
import json
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import optax
import pytest
from flax import nnx

from conftest import load_config

from interplay_jax import checkpoint as ck
from interplay_jax.errors import ConfigError
from interplay_jax.main import run_config
from interplay_jax.model.qwen2 import Qwen2, model_config_from_dict
from interplay_jax.rl import data as rl_data
from interplay_jax.task.mixture import get_mixture
from interplay_jax.task.tokenizer import train_on_records
from interplay_jax.task.writer import record_hash

REPO = pathlib.Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A tokenizer and a 'pre-trained' (randomly initialised) micro model saved as a parent run."""
    root = tmp_path_factory.mktemp("rl")
    mix = get_mixture({"ops": [2, 3], "contexts": ["A"]})
    tok = train_on_records([mix.record(1, i) for i in range(150)], vocab_size=400)
    tok_path = tok.save(str(root / "tokenizer.json"))
    model = dict(preset="micro", vocab_size=400, num_layers=1, max_position_embeddings=1024)
    cfg = model_config_from_dict(model)
    params = nnx.split(Qwen2(cfg, rngs=nnx.Rngs(params=0)), nnx.Param)[1]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optax.adamw(1e-3).init(params)}
    run_dir = root / "pretrain"
    with ck.Checkpointer(run_dir) as c:
        c.save(5, state, meta={"stage": "pretrain"})
    ck.write_lineage(run_dir, "pretrain", {"model": model}, None)
    return {"root": root, "tokenizer": tok_path, "run_dir": run_dir, "model": model}


def _config(parent, workdir, steps=2, **rl):
    c = load_config("rl.py:uniform,quick")
    c.workdir = str(workdir)
    c.tokenizer = parent["tokenizer"]
    c.init_from = str(parent["run_dir"])
    c.data.ops = (2, 3)
    c.rl.update(dict(num_prompts=2, n=2, max_response_len=12, total_steps=steps, num_minibatches=2,
                     prompt_buckets="256", **rl))
    c.optimizer.lr = 1e-3
    c.progress = False
    return c


def _samples(workdir):
    return [json.loads(line) for line in (pathlib.Path(workdir) / "samples.jsonl").read_text().splitlines()]


def _prompt_lengths(parent, config, steps):
    from interplay_jax.task.tokenizer import Tokenizer
    tok = Tokenizer.load(parent["tokenizer"])
    src = rl_data.prompt_source_from_config(config)
    return [[len(tok.encode_prompt(r)) for r in src.step_records(s, config.rl.num_prompts)] for s in range(steps)]


def test_rl_stage_runs_and_resumes_exactly(parent, tmp_path):
    a = tmp_path / "a"
    config = _config(parent, a, steps=2)
    lengths = _prompt_lengths(parent, config, 2)
    # drop the longest prompt(s): they are filtered and counted, the rest still train
    config.rl.max_prompt_len = max(max(ls) for ls in lengths) - 1
    filtered = [sum(n > config.rl.max_prompt_len for n in ls) for ls in lengths]
    summary = run_config(config)
    assert summary["steps"] == 2 and summary["reason"] == "done"
    assert summary["parent"]["step"] == 5
    assert summary["filtered_prompts"] == sum(filtered) >= 1
    for key in ("reward_mean", "reward_std", "verified_acc", "response_len", "kl", "clip_frac", "entropy",
                "tokens_per_s", "loss", "grad_norm"):
        assert key in summary["final"], key
    lineage = ck.read_lineage(a)
    assert lineage["stage"] == "rl" and lineage["parent"]["run_dir"] == str(parent["run_dir"])
    assert (a / "tb").is_dir()
    rows = _samples(a)
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["filtered_prompts"] for r in rows] == filtered
    assert rows[0]["rollout_digest"] != rows[1]["rollout_digest"]  # keys differ per step

    # resume: a run dir holding only A's step-1 checkpoint continues to step 2 with the same rollouts
    b = tmp_path / "b"
    (b / ck.CKPT_SUBDIR).mkdir(parents=True)
    shutil.copytree(a / ck.CKPT_SUBDIR / "1", b / ck.CKPT_SUBDIR / "1")
    shutil.copy(a / ck.LINEAGE_FILE, b / ck.LINEAGE_FILE)
    config_b = _config(parent, b, steps=2)
    config_b.rl.max_prompt_len = config.rl.max_prompt_len
    resumed = run_config(config_b)
    assert resumed["steps"] == 2
    assert [r["step"] for r in _samples(b)] == [2]
    assert _samples(b)[0]["rollout_digest"] == rows[1]["rollout_digest"]
    assert resumed["params_digest"] == summary["params_digest"]

    # an RL run can itself be a parent: its recorded model is inherited
    from interplay_jax.stages.rl import model_config_for
    child = _config(parent, tmp_path / "child")
    child.init_from = str(a)
    assert model_config_for(child) == model_config_from_dict(parent["model"])


def test_unknown_reward_is_one_line_error(parent, tmp_path):
    c = _config(parent, tmp_path / "x")
    c.rl.reward = "bogus"
    with pytest.raises(ConfigError, match="unknown reward 'bogus'"):
        run_config(c)
    proc = subprocess.run([sys.executable, "-m", "interplay_jax.main", "--config=configs/rl.py:quick",
                           "--config.rl.reward=bogus"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown reward 'bogus'"), proc.stderr


def test_prompt_source_is_deterministic_disjoint_and_filters(parent, tmp_path):
    mix = rl_data.rl_mixture("op7-10")
    src = rl_data.PromptSource(mixture=mix, seed=0, budget=8)
    first = src.step_records(1, 4)
    assert [r["id"] for r in first] == [r["id"] for r in rl_data.PromptSource(mixture=mix, seed=0, budget=8)
                                        .step_records(1, 4)]
    assert all(7 <= r["op"] <= 10 for r in first)
    assert [r["id"] for r in src.step_records(2, 4)] == [r["id"] for r in src.step_records(0, 4)]  # epoch 2
    # excluded hashes are never drawn
    banned = {record_hash(r) for r in first}
    other = rl_data.PromptSource(mixture=mix, seed=0, budget=8, exclude=banned).step_records(1, 4)
    assert not banned & {record_hash(r) for r in other}
    # context mixes
    ctx = rl_data.rl_mixture("ctxmixB10", ops=[11, 12])
    templates = [ctx.record(3, i)["template"] for i in range(200)]
    share_b = templates.count("teachers_in_school") / len(templates)
    assert 0.03 < share_b < 0.2 and set(templates) <= {"crazy_zootopia", "teachers_in_school"}
    with pytest.raises(ConfigError):
        rl_data.rl_mixture("op99")


def test_no_reference_model_when_kl_is_zero(parent, tmp_path, monkeypatch):
    """kl_coef = 0: the parent is read once (init) and never again for a reference policy."""
    calls = []
    real = ck.restore_params
    monkeypatch.setattr(ck, "restore_params", lambda *a, **k: calls.append(a) or real(*a, **k))
    c = _config(parent, tmp_path / "nokl", steps=1)
    c.grpo.kl_coef = 0.0
    summary = run_config(c)
    assert summary["steps"] == 1 and "kl" not in summary["final"]
    assert len(calls) == 1


def test_jsonl_prompts_come_from_one_split_and_never_from_eval(tmp_path):
    from interplay_jax.task.writer import write_dataset
    mix = get_mixture({"ops": [2, 3], "contexts": ["A"]})
    write_dataset(tmp_path / "data", mix, {"eval": 6, "heldout": 10, "train": 12}, seed=0, shard_size=100,
                  progress=False)
    c = load_config("rl.py:quick")
    c.data.source = "jsonl"
    c.data.data_dir = str(tmp_path / "data")
    c.rl.prompt_budget = 0
    src = rl_data.prompt_source_from_config(c)
    heldout = {record_hash(r) for r in rl_data.read_split(tmp_path / "data", "heldout")}
    evals = {record_hash(r) for r in rl_data.read_split(tmp_path / "data", "eval")}
    seen = [record_hash(src.record(i)) for i in range(20)]   # two epochs
    assert set(seen) == heldout and not set(seen) & evals
    assert sorted(seen[:10]) == sorted(seen[10:]) and seen[:10] != seen[10:]  # each epoch reshuffled
    # excluding the held-out split's own files leaves nothing: one clear error
    c.data.exclude = str(tmp_path / "data" / "heldout")
    with pytest.raises(ConfigError, match="no RL prompts left"):
        rl_data.prompt_source_from_config(c)


def test_preflight_refuses_an_update_that_cannot_fit(parent, tmp_path, monkeypatch):
    """With a (pretend) 1 MiB device the preflight stops before any rollout, in one line naming the
    setting to change."""
    from interplay_jax.rl import memory
    monkeypatch.setattr(memory, "device_bytes", lambda device=None: 1 << 20)
    c = _config(parent, tmp_path / "w", micro_batch_size=2)
    with pytest.raises(ConfigError, match=r"the update needs .* GiB but the device has .*rl.micro_batch_size"):
        run_config(c)
    assert not (tmp_path / "w" / "samples.jsonl").exists()   # no rollout was sampled
