"""stages/host_memory.py: glibc keeps XLA:CPU's per-step temporaries mapped (no page faults per step)."""
import os
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO
from interplay_jax.stages import host_memory

# A program whose one temporary (a [16384, 1024] fp32 product: 64 MB) is larger than glibc's largest
# mmap threshold (32 MB), so with glibc's defaults every call maps and unmaps it.
FAULTS = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from interplay_jax.stages import host_memory
    applied = host_memory.keep_freed_memory() if sys.argv[1] == "tuned" else False
    import jax, jax.numpy as jnp
    x = jnp.asarray(np.random.RandomState(0).randn(16384, 64).astype(np.float32))
    w1 = jnp.asarray(np.random.RandomState(1).randn(64, 1024).astype(np.float32) / 8)
    w2 = jnp.asarray(np.random.RandomState(2).randn(1024, 8).astype(np.float32))
    f = jax.jit(lambda x: jnp.sum(jnp.tanh(x @ w1) @ w2))
    for _ in range(3):
        f(x).block_until_ready()
    faults = []
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        f(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, sorted(faults)[len(faults) // 2])
""")


def _env(**extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", host_memory.ENV_SWITCH)}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


def _median_faults(mode):
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, env=_env(),
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    applied, faults = out.stdout.split()[-2:]
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_tuned_malloc_reuses_the_temporaries_without_page_faults():
    applied, stock = _median_faults("stock")
    assert not applied and stock > 8000          # 64 MB of fresh 4 KiB pages a call: ~16K faults
    applied, tuned = _median_faults("tuned")
    assert applied and tuned < stock / 20


def test_cpu_backend_expected():
    expected = host_memory.cpu_backend_expected
    assert expected("cpu") and expected("CPU ") and expected("cpu,tpu")
    assert not expected("cuda") and not expected("tpu,cpu")
    assert expected("", accelerator_dists=["numpy", "jax"], tpu_devices=[])
    assert not expected("", accelerator_dists=["jax-cuda12-plugin"], tpu_devices=[])
    assert not expected("", accelerator_dists=["jax_rocm7_pjrt"], tpu_devices=[])
    assert not expected("", accelerator_dists=[], tpu_devices=["/dev/accel0"])


SWITCHES = textwrap.dedent("""
    from interplay_jax.stages import host_memory
    print(host_memory.keep_freed_memory())
""")


@pytest.mark.parametrize("extra,applied", [({}, "True"), ({"INTERPLAY_HOST_MALLOC": "off"}, "False"),
                                           ({"MALLOC_ARENA_MAX": "4"}, "False"), ({"JAX_PLATFORMS": "tpu"}, "False")])
def test_switches(extra, applied):
    """On by default for the CPU; off with the switch, when the user sets malloc options, or off the CPU."""
    out = subprocess.run([sys.executable, "-c", SWITCHES], capture_output=True, text=True, env=_env(**extra),
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == applied


ORDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, "tests")
    from conftest import load_config
    import interplay_jax.stages as stages
    from interplay_jax.stages import host_memory
    real = stages.stage_module

    class Probe:  # the real stage's validate, then report instead of training
        def __init__(self, module):
            self.validate = module.validate

        def run(self, config):
            print("applied", host_memory._applied)

    stages.stage_module = lambda name: Probe(real(name))
    config = load_config("pretrain.py:hard0.1,cpu", workdir=sys.argv[1], model__preset="micro")
    stages.run_config(config)
""")


def test_run_config_sets_malloc_before_the_backend_starts(tmp_path):
    """The stages' validation must not start a JAX backend, or the settings come too late."""
    out = subprocess.run([sys.executable, "-c", ORDER, str(tmp_path / "w")], capture_output=True, text=True,
                         env=_env(INTERPLAY_COMPILE_CACHE="off"), cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "applied True" in out.stdout, out.stdout[-2000:]
