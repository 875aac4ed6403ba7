"""glibc malloc settings that keep XLA:CPU's per-step buffers mapped between steps.

On the CPU backend every execution of a compiled program allocates its temporaries as one block
(237 MB for the tiny model's train step at 4 x 512) and frees it when the step ends. The block is
allocated on one of XLA's worker threads, whose glibc arena cannot hold it, so glibc maps it with
mmap and unmaps it on free: every step touches ~60K fresh pages, ~80 ms of kernel time per step on
a 2-core machine (``benchmarks/bench_train_vs_torch.py``; figures in BUILD_NOTES.md). With one
arena, no mmap and a high trim threshold the block comes from the heap and is reused: after the
first steps there are no page faults at all.

:func:`keep_freed_memory` sets that (``mallopt``) when JAX will run on the CPU. It must run before
the backend starts its threads (a thread keeps the arena it first used), which is why
``stages.run_config`` calls it first. It leaves glibc alone on other platforms, when an accelerator
plugin or TPU device is present, when the backend is already up, when the environment already sets
malloc options (``MALLOC_*``, ``GLIBC_TUNABLES``), and with ``INTERPLAY_HOST_MALLOC=off``.
The cost: freed host memory stays with the process (up to the trim threshold at the top of the
heap), so a CPU run's resident size stays near its peak.
"""
from __future__ import annotations

import ctypes
import glob
import importlib.metadata
import os
import sys

ENV_SWITCH = "INTERPLAY_HOST_MALLOC"
OFF_WORDS = ("off", "0", "false", "no", "none")
# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
TRIM_THRESHOLD = 2 ** 31 - 1          # the largest value mallopt takes (an int)
ACCELERATOR_DISTS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm")

_applied = False


def cpu_backend_expected(platforms: str | None = None, accelerator_dists=None, tpu_devices=None) -> bool:
    """Whether JAX will run on the CPU, decided without starting a backend: the first entry of
    ``jax_platforms`` / ``JAX_PLATFORMS`` when set; otherwise no GPU plugin installed and no TPU
    device file. The arguments override what is looked up (for tests)."""
    if platforms is None:
        import jax
        platforms = jax.config.jax_platforms or os.environ.get("JAX_PLATFORMS", "")
    platforms = str(platforms or "").strip().lower()
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if accelerator_dists is None:
        accelerator_dists = [d.metadata.get("Name", "") for d in importlib.metadata.distributions()]
    if any(str(n).lower().startswith(ACCELERATOR_DISTS) for n in accelerator_dists):
        return False
    if tpu_devices is None:
        tpu_devices = glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*")
    return not tpu_devices


def _user_set_malloc(env) -> bool:
    return bool(env.get("GLIBC_TUNABLES")) or any(k.startswith("MALLOC_") for k in env)


def keep_freed_memory(env=None) -> bool:
    """Apply the settings above where they help (see the module docstring); returns whether it did.
    Idempotent."""
    global _applied
    env = os.environ if env is None else env
    if _applied:
        return True
    if str(env.get(ENV_SWITCH, "")).strip().lower() in OFF_WORDS or _user_set_malloc(env):
        return False
    if not sys.platform.startswith("linux"):
        return False
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized() or not cpu_backend_expected():
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (musl, ...)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(p, v) == 1 for p, v in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    _applied = ok
    return ok
