"""Checkpoints under faults (in process, toy states): every injected fault is detected (never a
silent load), reported in one line naming the checkpoint, and nothing good is lost: flipped bytes,
a truncated array file, missing metadata / digest files, an edited data-iterator state, disk full
while saving, SIGTERM during an evaluation; the workdir lock. Subprocess runs of the real stage
under the same faults are in test_faults_stage.py."""
import errno
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import flip_array_bytes, largest_array_file, lock_held_elsewhere

from interplay_jax import checkpoint as ck
from interplay_jax.errors import ConfigError
from interplay_jax.train.loop import Loop, LoopSettings



def state_at(step):
    """A state big enough that its array bytes dominate the checkpoint's data files."""
    k = jax.random.split(jax.random.PRNGKey(step), 3)
    params = {"embed": jax.random.normal(k[0], (256, 128)), "w": jax.random.normal(k[1], (128, 128)),
              "b": jnp.zeros(128, jnp.bfloat16)}
    return {"step": jnp.int32(step), "params": params,
            "opt_state": {"mu": jax.tree.map(lambda x: x * 0.5, params), "count": jnp.int32(step)}}


def target():
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state_at(0))


def assert_tree_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def truncate(step_dir):
    f = largest_array_file(step_dir)
    os.truncate(f, f.stat().st_size // 3)


def edit_data_state(step_dir):
    f = step_dir / "data" / "metadata"
    f.write_text(f.read_text().replace('"emitted": 3', '"emitted": 4'))


FAULTS = {   # name: (inject, reason in the one line, must restore_params (params only) fail too)
    # a flip or a cut lands in whichever arrays orbax wrote there (the order varies): the params-only
    # reader fails exactly when it reads a damaged array, and never returns wrong parameters
    "flipped bytes": (flip_array_bytes, "content digest mismatch", None),
    "truncated array file": (truncate, "unreadable", None),
    "missing meta/metadata": (lambda d: (d / "meta" / "metadata").unlink(), "meta/metadata is missing", True),
    "missing digest": (lambda d: (d / "meta" / ck.DIGEST_FILE).unlink(), "digest.json is missing", True),
    "missing state/_METADATA": (lambda d: (d / "state" / "_METADATA").unlink(), "unreadable", True),
    "missing data item": (lambda d: (d / "data" / "metadata").unlink(), "unreadable", False),
    "edited data-iterator state": (edit_data_state, "data item differs from its digest", False),
}


def save_steps(run_dir, steps=(1, 2, 3)):
    with ck.Checkpointer(run_dir, max_to_keep=10) as c:
        for s in steps:
            c.save(s, state_at(s), data_state={"emitted": s}, meta={"stage": "pretrain"})


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_is_detected_named_in_one_line_and_resume_falls_back(tmp_path, fault):
    inject, reason, params_affected = FAULTS[fault]
    save_steps(tmp_path)
    step3 = tmp_path / "checkpoints" / "3"
    inject(step3)
    with ck.Checkpointer(tmp_path, max_to_keep=10) as c:
        with pytest.raises(ck.CorruptCheckpoint) as e:
            c.restore(3, target=target())
        msg = str(e.value)
        assert "\n" not in msg and str(step3) in msg and reason in msg, msg
        # resume: the newest good checkpoint, the bad one moved aside (kept, no longer a step)
        bad = []
        step, state, data, meta = c.restore_newest_good(target(), on_bad=lambda *a: bad.append(a))
        assert step == 2 and data == {"emitted": 2} and meta["stage"] == "pretrain"
        assert_tree_equal(state, state_at(2))
        assert [(s, d.name) for s, _, d in bad] == [(3, "corrupt-3")] and reason in bad[0][1].reason
        assert c.all_steps() == [1, 2] and (tmp_path / "checkpoints" / "corrupt-3").is_dir()
        # the run goes on: step 3 is saved again beside the moved-aside copy
        c.save(3, state_at(3), data_state={"emitted": 3}, meta={"stage": "pretrain"})
        c.wait()
        assert c.all_steps() == [1, 2, 3] and (tmp_path / "checkpoints" / "corrupt-3").is_dir()
        assert_tree_equal(c.restore(3, target=target())[0], state_at(3))
    # the params-only readers (init_from, eval, lineage --digest) verify the same way
    inject(tmp_path / "checkpoints" / "3")
    try:
        params, _, _ = ck.restore_params(tmp_path, step=3)
    except ck.CorruptCheckpoint as e:
        assert params_affected is not False and reason in str(e) and "\n" not in str(e), str(e)
    else:
        assert params_affected is not True
        assert ck.params_digest(params) == ck.params_digest(state_at(3)["params"])
    assert ck.params_digest(ck.restore_params(tmp_path, step=2)[0]) == ck.params_digest(state_at(2)["params"])


def test_flipped_parameter_bytes_fail_every_params_reader(tmp_path, capsys):
    """Parameters only (as init_from, evaluation and ``lineage --digest`` read them): a flip in the
    middle of the one data file lands in params/embed and is caught, the lineage CLI says so in one
    line (exit 2)."""
    from interplay_jax import lineage
    params = {"embed": jax.random.normal(jax.random.PRNGKey(0), (256, 128))}
    with ck.Checkpointer(tmp_path) as c:
        c.save(7, {"params": params})
    ck.write_lineage(tmp_path, "pretrain", {"model": {"preset": "micro"}})
    flip_array_bytes(tmp_path / "checkpoints" / "7")
    with pytest.raises(ck.CorruptCheckpoint, match="content digest mismatch in params/embed"):
        ck.restore_params(tmp_path, target=jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params))
    assert lineage.main([str(tmp_path), "--digest"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: checkpoint {tmp_path / 'checkpoints' / '7'} is corrupt")


def test_no_good_checkpoint_left_is_one_error(tmp_path):
    save_steps(tmp_path, (1, 2))
    truncate(tmp_path / "checkpoints" / "2")
    flip_array_bytes(tmp_path / "checkpoints" / "1")
    with ck.Checkpointer(tmp_path) as c:
        with pytest.raises(ConfigError, match=r"no good checkpoint left .*corrupt-2, corrupt-1"):
            c.restore_newest_good(target())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["corrupt-1", "corrupt-2"]


def test_digest_lists_every_array_and_the_json_items(tmp_path):
    save_steps(tmp_path, (1,))
    record = ck.read_digest(tmp_path / "checkpoints" / "1")
    names = {"/".join(ck.path_parts(p)) for p, _ in jax.tree_util.tree_flatten_with_path(state_at(1))[0]}
    assert set(record["state"]) == names and record["step"] == 1
    assert all(len(r["sha256"]) == 64 for r in record["state"].values())
    assert record["state"]["params/b"] == {"sha256": record["state"]["params/b"]["sha256"], "dtype": "bfloat16",
                                           "shape": [128]}
    assert len(record["data"]) == len(record["meta"]) == 64


def test_a_different_model_is_a_config_error_not_corruption(tmp_path):
    save_steps(tmp_path, (1,))
    other = target()
    other["params"]["w"] = jax.ShapeDtypeStruct((64, 128), jnp.float32)
    with ck.Checkpointer(tmp_path) as c:
        with pytest.raises(ConfigError, match=r"does not fit .*params/w is float32\(128, 128\) there") as e:
            c.restore_newest_good(other)
        assert not isinstance(e.value, ck.CorruptCheckpoint)
        assert c.all_steps() == [1]                       # nothing moved


def test_checkpoint_from_before_digests_still_loads(tmp_path, capsys):
    save_steps(tmp_path, (1,))
    d = tmp_path / "checkpoints" / "1"
    meta = json.loads((d / "meta" / "metadata").read_text())
    del meta["integrity"]
    (d / "meta" / "metadata").write_text(json.dumps(meta))
    (d / "meta" / ck.DIGEST_FILE).unlink()
    assert ck.read_digest(d) is None
    with ck.Checkpointer(tmp_path) as c:
        assert_tree_equal(c.restore(1, target=target())[0], state_at(1))
    assert "saved before checkpoints carried digests; loaded unverified" in capsys.readouterr().out


@pytest.mark.parametrize("where", ["digest write", "orbax item write"])
def test_disk_full_while_saving_stops_the_run_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch, where):
    """ENOSPC from a patched write at step 10: the run stops with one CheckpointWriteError line;
    step 5 stays whole and verifies; the half-written step leaves nothing behind."""
    def enospc(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if where == "digest write":
        real = ck.write_atomic
        monkeypatch.setattr(ck, "write_atomic", lambda path, data, **kw: (
            enospc() if path.parent.parent.name.startswith("10.") else real(path, data, **kw)))
    else:
        from orbax.checkpoint._src.handlers import json_checkpoint_handler as jch
        real = jch.JsonCheckpointHandler._save_fn

        async def save_fn(self, x, directory):
            if directory.parent.name.startswith("10."):
                enospc()
            return await real(self, x, directory)
        monkeypatch.setattr(jch.JsonCheckpointHandler, "_save_fn", save_fn)

    def step(state, batch):
        return {"w": state["w"] + 1.0}, {"loss": jnp.float32(1.0)}

    with ck.Checkpointer(tmp_path) as c:
        with pytest.raises(ck.CheckpointWriteError) as e:
            Loop(LoopSettings(total_steps=30, ckpt_every=5, log_every=1, progress=False), checkpointer=c).run(
                step, {"w": jnp.zeros(4)}, lambda s, i: {})
        msg = str(e.value)
        assert "\n" not in msg and "step 10" in msg and "No space left on device" in msg, msg
        assert "the last complete checkpoint is step 5" in msg
        assert c.all_steps() == [5]
        state, _, _ = c.restore(5, target={"w": jnp.zeros(4)})
        np.testing.assert_array_equal(np.asarray(state["w"]), np.full(4, 5.0))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["5"]


def test_sigterm_during_eval_abandons_it_saves_and_resumes_exactly(tmp_path):
    """SIGTERM arrives in the middle of the evaluation at step 6 (also a checkpoint step): the
    evaluation stops at once, the run returns "interrupted" with step 6 saved, and a resumed run
    ends where an uninterrupted one does."""
    progress = []

    def step(state, batch):
        return {"w": state["w"] * 0.5 + batch["x"]}, {"loss": batch["x"]}

    def produce(state, i):
        return {"x": jnp.float32(i)}

    def eval_fn(state):
        if not progress:
            progress.append("started")
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10_000_000):       # the handler interrupts this loop
                pass
            progress.append("finished")
        return {"metric": 1.0}

    settings = LoopSettings(total_steps=12, ckpt_every=3, eval_every=6, log_every=3, progress=False)
    with ck.Checkpointer(tmp_path / "run") as c:
        res = Loop(settings, checkpointer=c, eval_fn=eval_fn).run(step, {"w": jnp.zeros(2)}, produce)
    assert progress == ["started"] and res.reason == "interrupted" and res.step == 6
    assert all("eval/metric" not in h for h in res.history)
    with ck.Checkpointer(tmp_path / "run") as c:
        assert c.all_steps() == [3, 6]
        state, _, _ = c.restore(target={"w": jnp.zeros(2)})
        res2 = Loop(settings, checkpointer=c).run(step, state, produce, start_step=6)
    ref = Loop(settings).run(step, {"w": jnp.zeros(2)}, produce)
    np.testing.assert_array_equal(np.asarray(res2.state["w"]), np.asarray(ref.state["w"]))


def test_one_run_per_workdir_and_a_killed_runs_lock_is_taken_over(tmp_path):
    with lock_held_elsewhere(tmp_path) as pid:     # SIGKILLed at the end: no cleanup runs
        with pytest.raises(ConfigError, match=rf"{tmp_path} is in use by another test run \(pid {pid} on "):
            ck.lock_workdir(tmp_path)
    lock = ck.lock_workdir(tmp_path, "second run")    # the kernel dropped the dead process's lock
    assert json.loads((tmp_path / ck.LOCK_FILE).read_text())["pid"] == os.getpid()
    again = ck.lock_workdir(tmp_path)                  # reentrant within one process
    again.release()
    lock.release()
    lock.release()                                     # idempotent


def test_stale_lock_file_is_taken_over_without_flock(tmp_path, monkeypatch):
    """On a filesystem without flock the pid in the file decides: a live holder refuses, a dead
    one (a killed run) is taken over."""
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "no locks available")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = __import__("socket").gethostname()
    (tmp_path / ck.LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": host, "since": "then"}))
    ck.lock_workdir(tmp_path).release()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / ck.LOCK_FILE).write_text(json.dumps({"pid": sleeper.pid, "host": host, "since": "then"}))
        with pytest.raises(ConfigError, match=f"pid {sleeper.pid}"):
            ck.lock_workdir(tmp_path)
    finally:
        sleeper.kill()
        sleeper.wait()
