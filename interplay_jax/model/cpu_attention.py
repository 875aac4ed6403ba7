"""Fused causal attention for XLA:CPU: a C++ kernel (cpu_attention.cc) called through XLA's FFI.

On a CPU the composed attention (scores, mask, softmax and two products per query chunk, with their
transposes and reductions) costs ~1.4x PyTorch's fused CPU kernel. This module compiles
``cpu_attention.cc`` with the system's C++ compiler on first use (``-O3 -march=native``; a few
seconds, cached under ``$INTERPLAY_KERNEL_CACHE`` or ``<cache root>/kernels``, keyed by
the source, jaxlib and CPU) and registers its two handlers. :func:`fused_attention` is causal
attention with segment ids, float32, head_dim a multiple of 16 up to 128; its backward pass
recomputes the probabilities block by block from the saved row log-sum-exp.

Where there is no compiler, the build fails, or ``INTERPLAY_CPU_KERNELS=off``, :func:`available`
is False (with one warning for a failed build) and the model keeps the XLA path.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

from interplay_jax.files import cache_dir as cache_root
from interplay_jax.host import OFF_WORDS

SOURCE = Path(__file__).with_name("cpu_attention.cc")
_FWD, _BWD = "interplay_jax_causal_attention_fwd", "interplay_jax_causal_attention_bwd"
_lock = threading.Lock()
_state: dict = {}


def cache_dir() -> Path:
    root = os.environ.get("INTERPLAY_KERNEL_CACHE")
    return Path(root) if root else cache_root() / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build() -> Path:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        raise RuntimeError("no C++ compiler found (g++, c++ or clang++; or set CXX)")
    src = SOURCE.read_bytes()
    flags = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}"]
    key = hashlib.sha256(b"\0".join([src, jaxlib.__version__.encode(), _cpu_flags().encode(), cxx.encode(),
                                      " ".join(flags).encode()])).hexdigest()[:16]
    out = cache_dir() / f"cpu_attention-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, *flags, str(SOURCE), "-o", tmp]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        os.replace(tmp, out)  # atomic: concurrent builders (test workers) each write their own file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def available() -> bool:
    """Whether the kernel is built and registered (builds it on the first call)."""
    if os.environ.get("INTERPLAY_CPU_KERNELS", "").strip().lower() in OFF_WORDS:
        return False
    with _lock:
        if "ok" not in _state:
            try:
                lib = ctypes.cdll.LoadLibrary(str(_build()))
                jax.ffi.register_ffi_target(_FWD, jax.ffi.pycapsule(lib.IjCausalAttentionFwd), platform="cpu")
                jax.ffi.register_ffi_target(_BWD, jax.ffi.pycapsule(lib.IjCausalAttentionBwd), platform="cpu")
                _state.update(ok=True, lib=lib)
            except Exception as e:  # noqa: BLE001 - any build/load failure means: use the XLA path
                warnings.warn(f"the fused CPU attention kernel is unavailable, using XLA's attention ({e})",
                              RuntimeWarning, stacklevel=2)
                _state["ok"] = False
        return _state["ok"]


def supports(q_BxTxHxD, k_BxTxKxD) -> bool:
    """Shapes and dtype the kernel handles: float32, head_dim 16..128 in steps of 16."""
    d = q_BxTxHxD.shape[-1]
    return (q_BxTxHxD.dtype == jnp.float32 and k_BxTxKxD.dtype == jnp.float32 and d % 16 == 0 and d <= 128
            and q_BxTxHxD.shape[2] % k_BxTxKxD.shape[2] == 0)


def _forward(q, k, v, seg):
    if not available():
        raise RuntimeError("the fused CPU attention kernel is unavailable (see the warning above)")
    b, t, h, _ = q.shape
    return jax.ffi.ffi_call(_FWD, (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                                   jax.ShapeDtypeStruct((b, h, t), jnp.float32)),
                            vmap_method="sequential")(q, k, v, seg)


@jax.custom_vjp
def fused_attention(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT):
    """Causal GQA attention within equal segment ids (segment 0: padding, attends nowhere, output 0)."""
    return _forward(q_BxTxHxD, k_BxTxKxD, v_BxTxKxD, segment_ids_BxT)[0]


def _fwd(q, k, v, seg):
    o, lse = _forward(q, k, v, seg)
    return o, (q, k, v, seg, o, lse)


def _bwd(res, do):
    q, k, v, seg, o, lse = res
    dq, dk, dv = jax.ffi.ffi_call(_BWD, (jax.ShapeDtypeStruct(q.shape, jnp.float32),
                                         jax.ShapeDtypeStruct(k.shape, jnp.float32),
                                         jax.ShapeDtypeStruct(v.shape, jnp.float32)),
                                  vmap_method="sequential")(
        q, k, v, seg, o, lse, do.astype(jnp.float32))
    return dq, dk, dv, None


fused_attention.defvjp(_fwd, _bwd)
