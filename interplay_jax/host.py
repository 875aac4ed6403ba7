"""Host-process settings for compute on XLA:CPU: keep each program's temporary block from call to call.

XLA:CPU allocates one temporary block per execution of a compiled program (a train step's activations
and gradients: ~237 MB for ``tiny`` at 4 x 512) and frees it afterwards. glibc serves a block that
large with ``mmap`` and returns it with ``munmap``, so every step page-faults the whole block in again:
59K minor faults and ~90 ms of kernel time in a ~180 ms ``tiny`` step on a 2-core machine (``small``:
271K faults, ~1.1 GB, per ~1 s step). Two settings keep the block in the heap instead:

* the CPU client runs a program on the calling thread (``jax_cpu_enable_async_dispatch=False``; JAX
  applies it to single-device programs, so a program sharded over several CPU devices keeps async
  dispatch and its faults). With async dispatch it runs on a worker thread, and glibc gives a non-main
  thread an arena whose heaps hold at most 64 MB: a larger block is mmapped whatever the malloc settings;
* glibc's ``mallopt``: no mmap for large blocks (``M_MMAP_MAX=0``) and no trimming of the heap's top
  below 2 GB (``M_TRIM_THRESHOLD``), so the freed block is there for the next step.

Measured (BUILD_NOTES, "Stop 22"): the ``tiny`` train step 181 -> 137 ms, ``small`` 1,004 -> 777 ms, and
50 steps of ``configs/pretrain.py:base,cpu`` 62-64 -> 51 s, with bit-identical losses (the same programs
run; only where their memory comes from changes). The price: the process keeps up to 2 GB of freed
heap, and Python waits for each program instead of running ahead (a training loop blocks on its
step's metrics soon after anyway).

:func:`configure` applies both when the default backend is CPU (``jax.default_backend()``, after
``jax.distributed`` is up) on glibc; the dispatch setting takes effect only if JAX's backends are not
started yet (it is read when the CPU client is made). On a GPU/TPU host only the CPU client, idle
there, runs synchronously, and glibc keeps its defaults. ``INTERPLAY_CPU_HOST=off`` turns both off.
No project imports: floor 0.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

OFF_WORDS = ("off", "0", "false", "no", "none")       # an env switch's "off" words (compile cache too)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4      # glibc's mallopt parameter numbers (malloc.h)
TRIM_THRESHOLD = 2 ** 31 - 1                  # mallopt takes an int: ~2 GB, the most it accepts

_applied: dict = {}


def _glibc():
    """glibc as a ctypes library, or None (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        return libc
    except (OSError, AttributeError):
        return None


def keep_large_blocks() -> bool:
    """glibc: serve large blocks from the heap (no mmap) and keep up to ~2 GB of freed heap top;
    True when both settings took."""
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def configure() -> dict:
    """Apply the settings above when computing on CPU (once per process); returns what was applied:
    ``{"sync_dispatch": bool, "keep_large_blocks": bool}`` (both False off CPU or when turned off)."""
    if _applied:
        return dict(_applied)
    import jax
    from jax._src import xla_bridge

    if os.environ.get("INTERPLAY_CPU_HOST", "").strip().lower() in OFF_WORDS:
        _applied.update(sync_dispatch=False, keep_large_blocks=False)
        return dict(_applied)
    started = getattr(xla_bridge, "backends_are_initialized", lambda: True)()
    if not started:  # read once, when the CPU client is made; on a GPU/TPU host that client is idle
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    on_cpu = jax.default_backend() == "cpu"
    _applied.update(sync_dispatch=on_cpu and not started, keep_large_blocks=on_cpu and keep_large_blocks())
    return dict(_applied)
