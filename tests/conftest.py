import contextlib
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"


@pytest.fixture(scope="session")
def reference_dir():
    """../shared/reference (CI has it; a plain clone may not: skip then)."""
    if not REFERENCE.is_dir():
        pytest.skip("../shared/reference is not present")
    return REFERENCE


def load_config(spec, **overrides):
    """A config as the command line builds it (``"pretrain.py:base,cpu"``), unlocked, with dotted
    overrides given as keyword arguments with ``__`` for dots (``data__num_threads=0``)."""
    from interplay_jax.config import load_config as load
    return load(spec, {k.replace("__", "."): v for k, v in overrides.items()}, lock=False)


def xla_cache_env(tmp_path_factory) -> dict:
    """Environment entries that make a test module's subprocess runs share one persistent XLA cache
    (each later run skips compiling)."""
    return {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("xla_cache")),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> pathlib.Path:
    """A tokenizer trained on 60 records of the hard0.1 mixture, saved to a fresh directory."""
    from interplay_jax.task.mixture import get_mixture
    from interplay_jax.task.tokenizer import train_on_records
    tok = train_on_records(get_mixture("hard0.1").record(0, i) for i in range(60))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(path)
    return path


def pretrain_cmd(workdir, tok, steps=40, *, seq_len=512, every=5, extra=()):
    """The pre-training command line of the stage tests: micro model, 4 rows of ``seq_len``, a
    checkpoint and a log line every ``every`` steps, no evaluation, in-process data."""
    return [sys.executable, "-m", "interplay_jax.main", "--config=configs/pretrain.py:hard0.1,cpu",
            f"--config.workdir={workdir}", f"--config.tokenizer={tok}", "--config.model.preset=micro",
            f"--config.seq_len={seq_len}", "--config.batch_size=4", f"--config.total_steps={steps}",
            f"--config.ckpt_every={every}", f"--config.log_every={every}", "--config.eval_every=0",
            "--config.eval.per_bucket=0", "--config.data.buffer_docs=16", "--config.data.num_threads=0", *extra]


def largest_array_file(step_dir) -> pathlib.Path:
    """The checkpoint's largest data file holding array bytes (the small ones are index nodes)."""
    files = [p for p in (pathlib.Path(step_dir) / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    return max(files, key=lambda p: p.stat().st_size)


def flip_array_bytes(step_dir) -> pathlib.Path:
    """Flip 8 bytes of a checkpoint's largest array data file so that the step still reads but holds
    other numbers: the silent corruption only the content digest catches. Returns the file.

    The data is zstd-compressed, and a flip that hits a frame's control bits makes the read itself
    fail instead; which offsets do depends on the order orbax wrote the arrays in (it varies). So the
    flip starts at the middle of the file and moves on 4,099 bytes at a time until a restore of the
    step gets past zstd and fails its digest."""
    from interplay_jax import checkpoint as ck
    step_dir = pathlib.Path(step_dir)
    data = largest_array_file(step_dir)
    original = data.read_bytes()
    for k in range(64):
        start = (len(original) // 2 + k * 4099) % (len(original) - 8)
        flipped = bytearray(original)
        flipped[start:start + 8] = bytes(x ^ 0xFF for x in flipped[start:start + 8])
        data.write_bytes(bytes(flipped))
        try:
            with ck.Checkpointer(step_dir.parent.parent) as c:
                c.restore(int(step_dir.name))
        except ck.CorruptCheckpoint as e:
            if "content digest mismatch" in e.reason:
                return data
    data.write_bytes(original)
    raise AssertionError(f"no 8-byte flip in {data} reads back silently")


_HOLDER = """
import sys, time
from interplay_jax import checkpoint as ck
ck.lock_workdir(sys.argv[1], sys.argv[2])
print("locked", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def lock_held_elsewhere(workdir, what: str = "test run"):
    """Another process holds ``workdir``'s lock (as ``what``) inside the block; yields its pid and
    SIGKILLs it at the end (no cleanup runs: the kernel drops the lock)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(workdir), what], stdout=subprocess.PIPE,
                              text=True, cwd=REPO, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()
