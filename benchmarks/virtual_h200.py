"""A virtual NVIDIA H200 to compile for on a machine without a GPU (../shared/tools/aot.py).

``device()`` is a sharding on the virtual H200; lower inside ``as_gpu_host()`` so the model resolves
attention "auto" and its CPU-only fused projections exactly as on a GPU host (they read
``jax.default_backend()`` at trace time, "cpu" here) and jax's Python-side cuDNN version probe reads
the target's cuDNN 9.24 (this host has no libcudnn). jax's compute-capability probe still sees no GPU
and applies the pre-Hopper head-dim limit (<= 128, a multiple of 8): the stricter one, so a head dim it
accepts is accepted on the H200 too. Compile-only: nothing runs.

Set-up once (the plugin must match the installed jaxlib):
    python -m pip install --target "$HOME/.cache/jax-cuda-plugin" "jax-cuda13-plugin==$(python -c 'import jaxlib; print(jaxlib.__version__)')" \\
        "jax-cuda13-pjrt==$(python -c 'import jaxlib; print(jaxlib.__version__)')"
Import this module before jax is first used (it sets JAX_PLATFORMS=cpu and the plugin path).
"""
import contextlib
import os
import pathlib
import sys
from unittest import mock

PLUGIN = pathlib.Path.home() / ".cache" / "jax-cuda-plugin"
AOT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "tools"
REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path[:0] = [str(PLUGIN), str(AOT), str(REPO)]

import jax  # noqa: E402
from jax._src.cudnn import fused_attention_stablehlo  # noqa: E402

TARGET_CUDNN = 92400      # cuDNN 9.24, the dnn_version_info of aot.py's H200 target


def device():
    """A SingleDeviceSharding on the virtual H200 (exits with one line if the plugin is missing)."""
    try:
        from aot import h200
        return h200()
    except Exception as e:  # noqa: BLE001
        sys.exit(f"error: no virtual H200 ({type(e).__name__}: {e}); install the CUDA plugin (see {__file__})")


@contextlib.contextmanager
def as_gpu_host():
    """Trace as a GPU host would (see the module docstring)."""
    with mock.patch.object(jax, "default_backend", lambda: "gpu"), \
            mock.patch.object(fused_attention_stablehlo, "check_cudnn_version", lambda: TARGET_CUDNN):
        yield


def cudnn_attention_calls(compiled) -> int:
    """How many cuDNN fused-attention custom calls a compiled program makes."""
    return compiled.as_text().count("__cudnn$fmha")
