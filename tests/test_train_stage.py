"""pretrain / midtrain stage: kill -9 resume is bit-identical, init_from lineage, config errors
(one line, exit 2), and the shared loop's NaN stop."""
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest

from conftest import load_config, pretrain_cmd, xla_cache_env

from interplay_jax import checkpoint as ck
from interplay_jax.errors import ConfigError
from interplay_jax.train.loop import Loop, LoopSettings, TrainingDiverged

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    """The runs of this file share one persistent XLA cache: each later run skips compiling."""
    ENV.update(xla_cache_env(tmp_path_factory))


def run(cmd, timeout=120):
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


WORKERS = ("--config.data.workers=2",)   # two data worker processes (the stream depends on the count)


def _group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_kill9_resume_is_bit_identical(tmp_path, tokenizer_path):
    ref = tmp_path / "ref"
    killed = tmp_path / "killed"
    # the uninterrupted run and the run to be killed start together (2 cores)
    a = subprocess.Popen(pretrain_cmd(ref, tokenizer_path, extra=WORKERS), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    b = subprocess.Popen(pretrain_cmd(killed, tokenizer_path, extra=WORKERS), cwd=REPO, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300       # (a loaded machine compiles slowly; this is no speed test)
        while time.time() < deadline and not ck.complete_steps(killed) and b.poll() is None:
            time.sleep(0.01)
        time.sleep(random.uniform(0.0, 0.4))          # a random step after the first checkpoint
        b.send_signal(signal.SIGKILL)
        b.wait()
        orphans_gone = _group_gone(b.pid, timeout=20)   # its data workers follow it out
        out_a, _ = a.communicate(timeout=300)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
        try:
            os.killpg(b.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert orphans_gone, "data worker processes outlived their killed run"
    assert a.returncode == 0, out_a[-3000:]
    assert "resource_tracker" not in out_a, out_a[-3000:]   # no shared memory left behind by the workers
    assert b.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    steps_at_kill = ck.complete_steps(killed)
    assert steps_at_kill and steps_at_kill[-1] < 40
    assert not (killed / "summary.json").exists()
    moved = run(pretrain_cmd(killed, tokenizer_path, extra=("--config.data.workers=1",)))  # another worker count
    assert moved.returncode == 2 and "data.workers=2" in moved.stderr.strip().splitlines()[-1], moved.stderr[-2000:]
    again = run(pretrain_cmd(killed, tokenizer_path, extra=WORKERS), timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"resuming {killed}" in again.stdout
    want = json.loads((ref / "summary.json").read_text())
    got = json.loads((killed / "summary.json").read_text())
    assert got["steps"] == want["steps"] == 40
    assert got["params_digest"] == want["params_digest"]
    # the whole final state (optimizer moments too) is identical
    with ck.Checkpointer(ref) as c1, ck.Checkpointer(killed) as c2:
        s1, d1, _ = c1.restore(step=40)
        s2, d2, _ = c2.restore(step=40)
    assert d1 == d2
    import jax
    import numpy as np
    for x, y in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert ck.lineage_chain(killed)[0]["parent"] is None
    # TensorBoard scalars were written (one point per log interval)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(ref / "tb"))
    ea.Reload()
    assert {"pretrain/loss", "pretrain/lr", "pretrain/grad_norm", "pretrain/tokens_per_s",
            "pretrain/mfu"} <= set(ea.Tags()["scalars"])
    assert [e.step for e in ea.Scalars("pretrain/loss")] == list(range(5, 41, 5))

    # init_from: a midtrain run starts from the parent's params and records it
    mid = tmp_path / "mid"
    out = run([sys.executable, "-m", "interplay_jax.main", "--config=configs/midtrain.py:mid,cpu",
               f"--config.workdir={mid}", f"--config.tokenizer={tokenizer_path}", f"--config.init_from={ref}",
               "--config.model.preset=micro", "--config.seq_len=512", "--config.batch_size=4",
               "--config.total_steps=3", "--config.eval.per_bucket=2", "--config.eval.batch_size=2",
               "--config.data.num_threads=0", "--config.data.buffer_docs=8", "--config.eval.buckets=ID:2-10"])
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    chain = ck.lineage_chain(mid)
    assert [r["stage"] for r in chain] == ["midtrain", "pretrain"]
    assert chain[0]["parent"] == {"run_dir": str(ref.absolute()), "step": 40}
    summary = json.loads((mid / "summary.json").read_text())
    assert "eval/heldout_loss/ID" in summary["final"]
    assert summary["params_digest"] != want["params_digest"]      # it trained on


def _main_error(args):
    return subprocess.Popen([sys.executable, "-m", "interplay_jax.main", *args], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_config_errors_are_one_line_and_exit_2(tmp_path, tokenizer_path):
    base = ["--config=configs/pretrain.py:base,cpu", f"--config.workdir={tmp_path / 'w'}",
            f"--config.tokenizer={tokenizer_path}"]
    cases = {
        "unknown key": (base + ["--config.optimizer.lrr=1"], "lrr"),
        "missing parent": (["--config=configs/midtrain.py", f"--config.workdir={tmp_path / 'm'}",
                            f"--config.tokenizer={tokenizer_path}", f"--config.init_from={tmp_path / 'nope'}"],
                           "does not exist"),
        "unknown op": (base + ['--config.mixture=[{"ops": [2, 99]}]'], "op 99"),
        "unknown context": (base + ['--config.mixture=[{"ops": [2], "contexts": ["Z"]}]'], "Z"),
        "tiny budget": (base + ["--config.total_tokens=100"], "smaller than one batch"),
    }
    procs = {name: _main_error(args) for name, (args, _) in cases.items()}
    for name, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, (name, err[-2000:])
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, err[-2000:])
        assert cases[name][1] in lines[0], (name, lines[0])
    assert not (tmp_path / "w" / "checkpoints").exists()       # nothing ran


def test_validation_in_process(tmp_path, tokenizer_path):
    from interplay_jax import stages
    from interplay_jax.stages.train import total_steps
    paper = load_config("pretrain.py:hard50,paper")
    assert paper.mixture == "hard50" and paper.model.preset == "paper100m" and paper.model.dtype == "bfloat16"
    assert paper.batch_size * paper.seq_len == 524_288 and total_steps(paper) == 19_073
    assert paper.optimizer.warmup_frac == 0.05 and paper.optimizer.min_lr == 3e-5
    assert paper.optimizer.weight_decay == 0.1 and paper.optimizer.grad_clip == 1.0
    # peak lr: the release's paper pre-training and mid-training configs (configs/*.py docstrings)
    assert paper.optimizer.lr == 1e-4 and (paper.optimizer.b1, paper.optimizer.b2, paper.optimizer.eps) == (
        0.9, 0.999, 1e-8)
    mid = load_config("midtrain.py:paper")
    assert mid.optimizer.lr == 1e-4 and mid.optimizer.warmup_frac == 0.15 and mid.optimizer.min_lr == 3e-5
    c = load_config("pretrain.py:base,cpu")
    c.workdir = str(tmp_path / "v")
    c.tokenizer = str(tokenizer_path)
    stages.validate(c)
    c.tokenizer = str(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="tokenizer"):
        stages.validate(c)
    c.tokenizer = str(tokenizer_path)
    c.seq_len = 4096
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        stages.validate(c)
    c.seq_len = 1024
    c.mixture = "nope"
    with pytest.raises(ConfigError, match="unknown mixture"):
        stages.validate(c)
    c.mixture = "mid"
    c.stage = "midtrain"
    with pytest.raises(ConfigError, match="init_from"):
        stages.validate(c)


def test_loop_stops_on_nan_and_keeps_last_good_checkpoint(tmp_path):
    def step(state, batch):
        s = state["step"] + 1
        loss = jnp.where(s >= 8, jnp.nan, 1.0 / s)
        return {"w": state["w"] * 0.5, "step": s}, {"loss": loss, "grad_norm": jnp.float32(1.0)}

    with ck.Checkpointer(tmp_path) as c:
        with pytest.raises(TrainingDiverged, match=r"loss is nan at step 8.*last good checkpoint: step 5"):
            Loop(LoopSettings(total_steps=20, ckpt_every=5, log_every=2, progress=False), checkpointer=c).run(
                step, {"w": jnp.ones(2), "step": jnp.int32(0)}, lambda s, i: {})
        assert c.all_steps() == [5]


def test_loop_with_a_batch_producer_and_interrupt(tmp_path):
    """The RL shape: a callable (state, step_index) -> batch; SIGINT saves and returns."""
    import signal as sig
    seen = []

    def produce(state, i):
        seen.append(i)
        if i == 6:
            os.kill(os.getpid(), sig.SIGINT)
        return {"x": jnp.float32(i)}

    def step(state, batch):
        return {"w": state["w"] + batch["x"]}, {"loss": batch["x"], "tokens": jnp.int32(10)}

    with ck.Checkpointer(tmp_path) as c:
        res = Loop(LoopSettings(total_steps=50, ckpt_every=100, log_every=3, progress=False), checkpointer=c).run(
            step, {"w": jnp.zeros(())}, produce)
        assert res.reason == "interrupted" and res.step == 7 and seen == list(range(7))
        assert c.all_steps() == [7]
        state, _, _ = c.restore(target={"w": jnp.zeros(())})
        assert float(state["w"]) == sum(range(7))
    assert [h["step"] for h in res.history] == [3, 6]


def test_quickstart_config_wiring(tmp_path):
    """The quickstart's stages are wired through {workdir}; the whole config validates up front."""
    from interplay_jax import stages
    from interplay_jax.stages import pipeline
    c = load_config("quickstart.py")
    c.workdir = str(tmp_path / "qs")
    stages.validate(c)
    assert c.stages.split(",") == ["generate", "tokenizer", "pretrain", "midtrain", "rl", "eval"]
    pre = pipeline.sub_config(c, "pretrain")
    mid = pipeline.sub_config(c, "midtrain")
    rl = pipeline.sub_config(c, "rl")
    ev = pipeline.sub_config(c, "eval")
    root = str((tmp_path / "qs").absolute())
    assert pre.workdir == f"{root}/pretrain" and pre.tokenizer == f"{root}/tokenizer/tokenizer.json"
    assert pre.data.data_dir == f"{root}/generate" and pre.data.source == "jsonl"
    assert mid.init_from == f"{root}/pretrain" and mid.stage == "midtrain"
    assert rl.init_from == f"{root}/midtrain" and rl.tokenizer == f"{root}/tokenizer/tokenizer.json"
    assert ev.checkpoints.split(",") == [f"{root}/pretrain", f"{root}/midtrain", f"{root}/rl"]
    assert ev.workdir == f"{root}/eval"                  # WORKDIR/eval/results.json
    assert "{workdir}" in c.midtrain.init_from          # the original is untouched
    c.pretrain.total_tokens = 10
    c.pretrain.total_steps = 0
    with pytest.raises(ConfigError, match="smaller than one batch"):
        stages.validate(c)
