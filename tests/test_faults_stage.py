"""The real pre-training stage under faults, through the command line (subprocesses, micro model):
a corrupt newest checkpoint is reported in one line, moved aside, and the run resumes from the
newest good one with final parameters bit-identical to an uninterrupted run; with no good
checkpoint left, and for a corrupt parent / evaluated / lineage checkpoint, one ``error:`` line and
exit 2; a second run on a busy workdir is refused; SIGTERM during an evaluation exits 130 with one
line and the rerun finishes; a truncated JSONL shard stops the run before training. No orbax /
asyncio noise ("Event loop is closed", tracebacks) on any of these paths."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import flip_array_bytes, largest_array_file, pretrain_cmd as shared_pretrain_cmd, xla_cache_env

from interplay_jax import checkpoint as ck

REPO = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
NOISE = ("Traceback", "Event loop is closed", "Exception ignored")


@pytest.fixture(scope="module", autouse=True)
def compile_cache(tmp_path_factory):
    ENV.update(xla_cache_env(tmp_path_factory))


def pretrain_cmd(workdir, tok, steps=40, extra=()):
    return shared_pretrain_cmd(workdir, tok, steps, seq_len=256, every=10,
                               extra=("--config.keep_checkpoints=5", "--config.progress=False", *extra))


def run(cmd, timeout=300):
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(out, *needles):
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    assert not any(n in out.stdout + out.stderr for n in NOISE), out.stdout[-2000:] + out.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tokenizer_path):
    """An uninterrupted 40-step run with checkpoints at 10, 20, 30, 40."""
    ref = tmp_path_factory.mktemp("faults") / "ref"
    out = run(pretrain_cmd(ref, tokenizer_path))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert ck.complete_steps(ref) == [10, 20, 30, 40]
    return ref


def copy_run(ref, dst):
    shutil.copytree(ref, dst)
    return dst


def final_state(run_dir, step=40):
    with ck.Checkpointer(run_dir) as c:
        return c.restore(step)


def test_corrupt_newest_checkpoint_falls_back_and_ends_bit_identical(reference, tokenizer_path, tmp_path):
    """A run killed between steps 30 and 40 whose step-30 checkpoint then had bytes flipped: the
    rerun names step 30 in one line, moves it to corrupt-30/, resumes from 20 (params, moments and
    data-iterator state of that one checkpoint) and ends equal, bit for bit, to the reference."""
    run_dir = copy_run(reference, tmp_path / "run")
    shutil.rmtree(run_dir / "checkpoints" / "40")
    (run_dir / "summary.json").unlink()
    flip_array_bytes(run_dir / "checkpoints" / "30")
    out = run(pretrain_cmd(run_dir, tokenizer_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    bad = [ln for ln in out.stdout.splitlines() if "unusable" in ln]
    assert len(bad) == 1 and bad[0].startswith("pretrain: checkpoint step 30 is unusable (content digest mismatch in ")
    assert f"moved it to {run_dir / 'checkpoints' / 'corrupt-30'}" in bad[0]
    assert f"resuming {run_dir} from step 20" in out.stdout
    assert not any(n in out.stdout + out.stderr for n in NOISE), out.stderr[-3000:]
    assert ck.complete_steps(run_dir) == [10, 20, 30, 40] and (run_dir / "checkpoints" / "corrupt-30").is_dir()
    want = json.loads((reference / "summary.json").read_text())
    got = json.loads((run_dir / "summary.json").read_text())
    assert got["params_digest"] == want["params_digest"] and got["steps"] == 40
    (s1, d1, _), (s2, d2, _) = final_state(reference), final_state(run_dir)
    assert d1 == d2
    for x, y in zip(jax.tree.leaves(s1), jax.tree.leaves(s2), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


DISK_FULL = """
import errno, os, sys
from interplay_jax import checkpoint as ck
real = ck.write_atomic
def write(path, data, **kw):
    if path.parent.parent.name.startswith("20."):      # the digest of checkpoint 20: the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return real(path, data, **kw)
ck.write_atomic = write
from interplay_jax.main import main
sys.argv = ["interplay_jax.main"] + sys.argv[1:]
main()
"""


def test_disk_full_while_saving_stops_in_one_line_and_the_rerun_ends_bit_identical(reference, tokenizer_path,
                                                                                   tmp_path):
    run_dir = tmp_path / "run"
    cmd = pretrain_cmd(run_dir, tokenizer_path)
    out = run([sys.executable, "-c", DISK_FULL, *cmd[3:]])
    assert_one_error_line(out, "saving checkpoint step 20", "No space left on device",
                          "the last complete checkpoint is step 10")
    assert ck.complete_steps(run_dir) == [10]
    out = run(cmd)
    assert out.returncode == 0 and f"resuming {run_dir} from step 10" in out.stdout, out.stderr[-2000:]
    assert not any(p.name.startswith("20.") for p in (run_dir / "checkpoints").iterdir())
    want = json.loads((reference / "summary.json").read_text())
    assert json.loads((run_dir / "summary.json").read_text())["params_digest"] == want["params_digest"]


def test_every_checkpoint_truncated_is_one_error_line(reference, tokenizer_path, tmp_path):
    run_dir = copy_run(reference, tmp_path / "run")
    for step in (10, 20, 30, 40):
        f = largest_array_file(run_dir / "checkpoints" / str(step))
        os.truncate(f, f.stat().st_size // 3)
    out = run(pretrain_cmd(run_dir, tokenizer_path, steps=50))
    assert_one_error_line(out, "no good checkpoint left", "corrupt-40, corrupt-30, corrupt-20, corrupt-10")
    bad = [ln for ln in out.stdout.splitlines() if "unusable" in ln]
    assert [ln.split(" is unusable")[0] for ln in bad] == [f"pretrain: checkpoint step {s}" for s in (40, 30, 20, 10)]
    assert all("unreadable (OUT_OF_RANGE: " in ln for ln in bad), bad
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [f"corrupt-{s}" for s in (10, 20, 30, 40)]


def test_corrupt_parent_eval_and_lineage_checkpoints_are_named_in_one_line(reference, tokenizer_path, tmp_path):
    parent = copy_run(reference, tmp_path / "parent")
    ckpt40 = parent / "checkpoints" / "40"
    (ckpt40 / "meta" / ck.DIGEST_FILE).unlink()
    procs = {
        "lineage": [sys.executable, "-m", "interplay_jax.lineage", str(parent), "--digest"],
        "init_from": [sys.executable, "-m", "interplay_jax.main", "--config=configs/midtrain.py:mid,cpu",
                      f"--config.workdir={tmp_path / 'mid'}", f"--config.tokenizer={tokenizer_path}",
                      f"--config.init_from={parent}", "--config.model.preset=micro", "--config.total_steps=2",
                      "--config.eval.per_bucket=0", "--config.progress=False"],
        "eval": [sys.executable, "-m", "interplay_jax.main", "--config=configs/eval.py:cpu",
                 f"--config.workdir={tmp_path / 'eval'}", f"--config.checkpoints={parent}",
                 f"--config.tokenizer={tokenizer_path}", "--config.progress=False"],
    }
    running = {k: subprocess.Popen(v, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for k, v in procs.items()}
    for name, p in running.items():
        stdout, stderr = p.communicate(timeout=300)
        line = assert_one_error_line(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr),
                                     f"checkpoint {ckpt40} is corrupt: meta/digest.json is missing")
        assert name != "init_from" or "--config.init_step" in line
    # --verbose shows the traceback behind the line
    out = run(procs["lineage"] + ["--verbose"])
    assert out.returncode == 2 and "Traceback" in out.stderr and out.stderr.rstrip().splitlines()[-1].startswith("error:")


def test_second_run_on_a_busy_workdir_is_refused(reference, tokenizer_path, tmp_path):
    run_dir = copy_run(reference, tmp_path / "run")
    holder = ck.lock_workdir(run_dir, "pretrain run")     # this process plays the first run
    try:
        out = run(pretrain_cmd(run_dir, tokenizer_path, steps=50))
        assert_one_error_line(out, f"{run_dir} is in use by another pretrain run (pid {os.getpid()} on ")
    finally:
        holder.release()
    assert ck.complete_steps(run_dir) == [10, 20, 30, 40]


def test_sigterm_during_the_eval_exits_130_in_one_line_and_the_rerun_finishes(tokenizer_path, tmp_path):
    """Checkpoint and (slow, sampled) evaluation every 10 steps; SIGTERM as soon as checkpoint 10 is
    published, i.e. while the evaluation at step 10 runs."""
    run_dir = tmp_path / "run"
    cmd = pretrain_cmd(run_dir, tokenizer_path, steps=20, extra=(
        "--config.eval_every=10", "--config.eval.per_bucket=4", "--config.eval.batch_size=2",
        "--config.eval.buckets=ID:2-10", "--config.eval.sample_prompts=4", "--config.eval.sample_n=4",
        "--config.eval.sample_max_new_tokens=128"))
    p = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not ck.complete_steps(run_dir) and p.poll() is None:
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert [ln for ln in stderr.splitlines() if ln.strip()] == ["interrupted: rerun the same command to resume"]
    assert "eval step 10: abandoned (interrupted)" in stdout, stdout[-2000:]
    assert ck.complete_steps(run_dir) == [10] and not (run_dir / "summary.json").exists()
    out = run(cmd)
    assert out.returncode == 0 and f"resuming {run_dir} from step 10" in out.stdout, out.stderr[-2000:]
    assert ck.complete_steps(run_dir) == [10, 20]


def test_truncated_jsonl_shard_stops_before_training(tokenizer_path, tmp_path):
    from interplay_jax.task.mixture import get_mixture
    from interplay_jax.task.writer import write_dataset
    data = tmp_path / "data"
    write_dataset(data, get_mixture("hard0.1"), {"heldout": 10, "train": 60}, shard_size=30, progress=False)
    shard = max((data / "train").rglob("shard-00001.jsonl"), key=lambda f: f.stat().st_size)
    text = shard.read_text()
    shard.write_text(text[: len(text) // 2])                # a copy cut short, mid-line
    run_dir = tmp_path / "run"
    out = run(pretrain_cmd(run_dir, tokenizer_path, extra=("--config.data.source=jsonl",
                                                          f"--config.data.data_dir={data}")))
    assert_one_error_line(out, f"{shard}: ", "truncated or changed")
    assert not ck.complete_steps(run_dir)


def test_exit_interrupted_flushes_joins_workers_and_skips_teardown(tmp_path):
    """The interrupted exit: its one line and everything printed before it (buffered, as in a pipe)
    come out, a multiprocessing worker is stopped and its semaphore unlinked (no resource-tracker
    warning), the status is 130, and the interpreter's teardown (an atexit hook here) never runs."""
    script = tmp_path / "interrupted.py"
    script.write_text(
        "import atexit, multiprocessing as mp, sys, time\n"
        "from interplay_jax.errors import exit_interrupted\n"
        "def idle():\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    ctx = mp.get_context('spawn')\n"
        "    lock = ctx.Lock()\n"
        "    worker = ctx.Process(target=idle, daemon=True)\n"
        "    worker.start()\n"
        "    atexit.register(lambda: print('TEARDOWN', flush=True))\n"
        "    print('step 10 saved')\n"
        "    exit_interrupted('interrupted: rerun the same command to resume')\n")
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}
    t0 = time.time()
    out = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 130, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["step 10 saved"], out.stdout
    assert out.stderr.splitlines() == ["interrupted: rerun the same command to resume"], out.stderr
    assert time.time() - t0 < 50          # the sleeping worker was terminated, not waited for
