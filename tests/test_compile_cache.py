"""The persistent compilation cache: where it lives (precedence, off switch), run_config turns it on,
and a second process loads what the first compiled."""
import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from interplay_jax.stages import compile_cache

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_resolve_precedence(tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    monkeypatch.setenv("INTERPLAY_CACHE", root)
    for k in ("INTERPLAY_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR"):
        monkeypatch.delenv(k, raising=False)
    assert compile_cache.resolve(None) == compile_cache.resolve("") == str(pathlib.Path(root) / "xla")
    assert compile_cache.resolve(None, {"INTERPLAY_COMPILE_CACHE": "/c"}) == "/c"
    assert compile_cache.resolve("/cfg", {"INTERPLAY_COMPILE_CACHE": "/c"}) == "/cfg"
    assert compile_cache.resolve("/cfg", {"JAX_COMPILATION_CACHE_DIR": "/jax"}) == "/jax"
    for off in ("off", "0", "false", "No", "none"):
        assert compile_cache.resolve(None, {"INTERPLAY_COMPILE_CACHE": off, "JAX_COMPILATION_CACHE_DIR": "/j"}) is None
        assert compile_cache.resolve(off, {"JAX_COMPILATION_CACHE_DIR": "/jax"}) is None


@pytest.fixture
def restore_jax_cache():
    """Leave JAX's cache settings as they were (other tests in this worker share the process)."""
    from jax._src import compilation_cache as cc
    old = (jax.config.jax_enable_compilation_cache, jax.config.jax_compilation_cache_dir,
           jax.config.jax_persistent_cache_min_compile_time_secs)
    yield
    if cc.is_initialized():
        cc.reset_cache()
    jax.config.update("jax_enable_compilation_cache", old[0])
    jax.config.update("jax_compilation_cache_dir", old[1])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[2])


def test_run_config_turns_the_cache_on_and_off(tmp_path, monkeypatch, restore_jax_cache):
    from conftest import load_config
    from interplay_jax.stages import run_config
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("INTERPLAY_COMPILE_CACHE", raising=False)
    monkeypatch.setenv("INTERPLAY_CACHE", str(tmp_path / "root"))
    cfg = load_config("generate.py:tiny", workdir=str(tmp_path / "gen"), progress=False)
    cfg.splits.update(dict(eval=2, heldout=2, train=4))
    run_config(cfg)
    assert jax.config.jax_enable_compilation_cache
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "root" / "xla")
    assert (tmp_path / "root" / "xla").is_dir()
    monkeypatch.setenv("INTERPLAY_COMPILE_CACHE", "off")
    run_config(cfg)
    assert not jax.config.jax_enable_compilation_cache


SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
from interplay_jax.stages import compile_cache
path = compile_cache.enable()
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() * 3.0)
f(jnp.ones((64, 64))).block_until_ready()
print(json.dumps({"path": path, **compile_cache.stats()}))
"""


def test_second_process_loads_from_the_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "INTERPLAY_COMPILE_CACHE")}
    env.update(INTERPLAY_CACHE=str(tmp_path), INTERPLAY_COMPILE_CACHE_MIN_SECS="0", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    first, second = runs
    assert first["path"] == str(tmp_path / "xla")
    assert first["hits"] == 0 and first["requests"] >= 1
    assert compile_cache.entries(first["path"]) >= 1
    assert second["hits"] >= 1 and second["hits"] == second["requests"]
