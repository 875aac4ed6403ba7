"""A virtual NVIDIA H200 to compile for on a machine without a GPU (../shared/tools/aot.py).

``device()`` returns a sharding on the virtual H200 and tells jax's trace-time cuDNN attention checks
what that device has (cuDNN 9.24, compute capability 9.0: the target aot.py describes); those checks
otherwise query the local machine, which has no cuDNN and no GPU. Compile-only: nothing runs.
Set-up once (the plugin must match the installed jaxlib):
    python -m pip install --target "$HOME/.cache/jax-cuda-plugin" "jax-cuda13-plugin==$(python -c 'import jaxlib; print(jaxlib.__version__)')" \
        "jax-cuda13-pjrt==$(python -c 'import jaxlib; print(jaxlib.__version__)')"
Import this module before jax is first used (it sets JAX_PLATFORMS=cpu and the plugin path).
"""
import os
import pathlib
import sys

PLUGIN = pathlib.Path.home() / ".cache" / "jax-cuda-plugin"
AOT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "tools"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path[:0] = [str(PLUGIN), str(AOT)]

CUDNN_VERSION = 92400      # the dnn_version_info of aot.py's H200 target
COMPUTE_CAPABILITY = (9, 0)


def device():
    """A SingleDeviceSharding on the virtual H200 (exits with one line if the plugin is missing)."""
    try:
        from aot import h200
        sharding = h200()
    except Exception as e:  # noqa: BLE001
        sys.exit(f"error: no virtual H200 ({type(e).__name__}: {e}); install the CUDA plugin (see {__file__})")
    from jax._src.cudnn import fused_attention_stablehlo as fa
    fa.check_cudnn_version = lambda: CUDNN_VERSION
    fa.check_compute_capability = lambda cap: tuple(int(x) for x in cap.split(".")) <= COMPUTE_CAPABILITY
    return sharding


def cudnn_attention_calls(compiled) -> int:
    """How many cuDNN fused-attention custom calls a compiled program makes."""
    return compiled.as_text().count("__cudnn$fmha")
