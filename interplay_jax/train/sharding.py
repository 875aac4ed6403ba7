"""The ONE module that owns the device mesh, partition rules and multi-host setup.

Mesh axes:
  ``data``   pure data parallelism: batch split, parameters replicated;
  ``fsdp``   batch split AND parameters / optimizer moments split (ZeRO-3 style, XLA all-gathers);
  ``tensor`` Megatron-style model parallelism over attention heads and the MLP intermediate dim.
The batch dimension of every input is split over ("data", "fsdp").

Partition rules are keyed by the parameter's name (last path component of the Qwen2 NNX state,
see interplay_jax/model/qwen2.py) and give one mesh axis (or None) per array dim. They match any
leaf whose path ends in that name, so optimizer moments (``opt_state/.../mu/layers/3/q_kernel``)
follow their parameters automatically. A dim whose size does not divide its mesh axis is
replicated on that axis instead (only happens for sizes ``check_divisibility`` does not require,
e.g. an odd vocabulary). Unknown names and scalars (step, Adam count) are replicated.

Multi-host: ``initialize_distributed`` (before any other JAX call) and ``make_global_batch``
(per-process rows -> one global array).

Kernels XLA cannot partition (the TPU flash-attention kernel, interplay_jax/model/tpu_attention.py)
place their work per device with ``shard_map`` over the mesh in context: every jitted step that runs
on a mesh is traced under it (``traced_under``; ``tracing_mesh`` around calls of functions jitted
without shardings, such as the sampler's, whose inputs live on the mesh).
"""
from __future__ import annotations

import contextlib
import functools
import os

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from interplay_jax.checkpoint import path_parts
from interplay_jax.errors import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# name -> mesh axis per dim. Shapes: see the table in interplay_jax/model/qwen2.py.
RULES: dict[str, tuple] = {
    "embed": ("tensor", "fsdp"),          # [V, D]: vocab-parallel logits (tied head), D over fsdp
    "lm_head": ("fsdp", "tensor"),        # [D, V]
    "q_kernel": ("fsdp", "tensor", None),  # [D, H, Dh]: heads over tensor
    "k_kernel": ("fsdp", "tensor", None),  # [D, K, Dh]
    "v_kernel": ("fsdp", "tensor", None),  # [D, K, Dh]
    "q_bias": ("tensor", None),           # [H, Dh]
    "k_bias": ("tensor", None),           # [K, Dh]
    "v_bias": ("tensor", None),           # [K, Dh]
    "o_kernel": ("tensor", None, "fsdp"),  # [H, Dh, D]
    "gate_kernel": ("fsdp", "tensor"),    # [D, F]: intermediate over tensor
    "up_kernel": ("fsdp", "tensor"),      # [D, F]
    "down_kernel": ("tensor", "fsdp"),    # [F, D]
    "attn_norm": (None,),                 # norms are tiny: replicated
    "mlp_norm": (None,),
    "final_norm": (None,),
}


# ------------------------------------------------------------------------------------------ mesh


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Resolve one -1 entry (fill with the remaining devices); check the product."""
    sizes = {"data": int(data), "fsdp": int(fsdp), "tensor": int(tensor)}
    fill = [k for k, v in sizes.items() if v == -1]
    bad = [f"{k}={v}" for k, v in sizes.items() if v == 0 or v < -1]
    if bad or len(fill) > 1:
        raise ConfigError(f"mesh sizes must be positive (at most one -1 = fill): {', '.join(f'{k}={v}' for k, v in sizes.items())}")
    if fill:
        known = int(np.prod([v for v in sizes.values() if v != -1]))
        if num_devices % known:
            raise ConfigError(f"mesh {' x '.join(f'{k}={v}' for k, v in sizes.items())}: {num_devices} devices "
                              f"do not divide by {known}")
        sizes[fill[0]] = num_devices // known
    total = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
    if total != num_devices:
        raise ConfigError(f"mesh data={sizes['data']} x fsdp={sizes['fsdp']} x tensor={sizes['tensor']} = {total} "
                          f"does not match {num_devices} devices")
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> jax.sharding.Mesh:
    """A ("data", "fsdp", "tensor") mesh over all (global) devices with automatic sharding axes."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def mesh_from_config(mcfg, devices=None) -> jax.sharding.Mesh:
    """From a config with fields data / fsdp / tensor (missing: data=-1, fsdp=1, tensor=1)."""
    get = lambda name, default: default if mcfg is None or getattr(mcfg, name, None) is None else getattr(mcfg, name)  # noqa: E731
    return make_mesh(get("data", -1), get("fsdp", 1), get("tensor", 1), devices=devices)


def axis_size(mesh, axis) -> int:
    if axis is None:
        return 1
    if isinstance(axis, tuple):
        return int(np.prod([mesh.shape[a] for a in axis]))
    return int(mesh.shape[axis])


@contextlib.contextmanager
def tracing_mesh(mesh):
    """Trace (and key jit caches) under ``mesh`` as the abstract mesh in context; None: no change."""
    if mesh is None:
        yield
        return
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        yield


def traced_under(fn, mesh):
    """``fn`` whose body is traced under ``tracing_mesh(mesh)`` (for ``jax.jit(traced_under(f, mesh), ...)``)."""
    if mesh is None:
        return fn

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with tracing_mesh(mesh):
            return fn(*args, **kwargs)
    return wrapped


# ------------------------------------------------------------------------------------------ rules


def _path_names(path) -> list[str]:
    return [n for n in path_parts(path) if n != "value"]  # nnx.Variable leaves end in ".value"


def spec_for(path_names: list[str], shape: tuple, mesh) -> P:
    """The PartitionSpec for one leaf (see RULES); replicated if no rule applies."""
    rule = None
    for name in reversed(path_names):
        if name in RULES:
            rule = RULES[name]
            break
    if rule is None or len(rule) != len(shape):
        return P()
    axes = [a if a is not None and shape[i] % axis_size(mesh, a) == 0 and axis_size(mesh, a) > 1 else None
            for i, a in enumerate(rule)]
    while axes and axes[-1] is None:
        axes.pop()
    return P(*axes)


def state_specs(abstract_tree, mesh):
    """PartitionSpec for every leaf of a pytree of arrays / ShapeDtypeStructs (params, opt state, ...)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: spec_for(_path_names(path), tuple(getattr(x, "shape", ())), mesh), abstract_tree)


def state_shardings(abstract_state, mesh):
    """NamedSharding for every leaf of the train state (params, optimizer moments follow params)."""
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), state_specs(abstract_state, mesh),
                        is_leaf=lambda x: isinstance(x, P))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) dim over ("data", "fsdp"); other dims replicated. Good for [B], [B, T], ..."""
    return NamedSharding(mesh, P(BATCH_AXES))


def batch_size_multiple(mesh) -> int:
    return axis_size(mesh, BATCH_AXES)


def check_divisibility(model_cfg, mesh, global_batch: int | None = None, grad_accum_steps: int = 1) -> None:
    """Raise ConfigError (one line naming the clashing values) before anything is compiled."""
    t, f = mesh.shape["tensor"], mesh.shape["fsdp"]
    dp = batch_size_multiple(mesh)
    h, k = model_cfg.num_heads, model_cfg.num_kv_heads
    if h % k:
        raise ConfigError(f"model.num_heads={h} is not a multiple of model.num_kv_heads={k}")
    if h % t:
        raise ConfigError(f"model.num_heads={h} does not divide by mesh tensor={t}")
    if k % t:
        raise ConfigError(f"model.num_kv_heads={k} does not divide by mesh tensor={t} "
                          f"(use tensor <= {k}, a divisor of the kv heads)")
    if model_cfg.intermediate_size % t:
        raise ConfigError(f"model.intermediate_size={model_cfg.intermediate_size} does not divide by mesh tensor={t}")
    if model_cfg.hidden_size % f:
        raise ConfigError(f"model.hidden_size={model_cfg.hidden_size} does not divide by mesh fsdp={f}")
    if global_batch is not None:
        if grad_accum_steps < 1:
            raise ConfigError(f"grad_accum_steps={grad_accum_steps} must be >= 1")
        need = dp * grad_accum_steps
        if global_batch % need:
            raise ConfigError(f"global batch={global_batch} does not divide by mesh data x fsdp={dp} x "
                              f"grad_accum_steps={grad_accum_steps} (= {need})")


# ------------------------------------------------------------------------------------------ hosts


def _field(dcfg, name):
    if dcfg is None:
        return None
    try:
        return getattr(dcfg, name)
    except (AttributeError, KeyError):
        return None


def initialize_distributed(dcfg=None) -> bool:
    """Start jax.distributed when this is one of several processes; call before any other JAX call.

    Sources, first found wins per field: the config (``coordinator_address``, ``num_processes``,
    ``process_id``, ``local_device_ids``), then the env (``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``, ``JAX_LOCAL_DEVICE_IDS``). ``auto=True`` or env
    ``INTERPLAY_DISTRIBUTED=auto`` (TPU pods, SLURM, Open MPI, ...) lets JAX detect everything
    itself. One process (the default): a no-op.
    Returns True when jax.distributed was initialized by this call.
    """
    env = os.environ
    addr = _field(dcfg, "coordinator_address") or env.get("JAX_COORDINATOR_ADDRESS")
    nproc = _field(dcfg, "num_processes") or env.get("JAX_NUM_PROCESSES")
    pid = _field(dcfg, "process_id")
    if pid is None:
        pid = env.get("JAX_PROCESS_ID")
    local_ids = _field(dcfg, "local_device_ids")
    if local_ids is None and env.get("JAX_LOCAL_DEVICE_IDS"):
        local_ids = [int(i) for i in env["JAX_LOCAL_DEVICE_IDS"].split(",")]
    auto = bool(_field(dcfg, "auto")) or env.get("INTERPLAY_DISTRIBUTED", "").lower() == "auto"
    if _already_initialized():
        return False
    if auto and nproc is None:
        jax.distributed.initialize()
        return True
    if nproc is None or int(nproc) <= 1:
        return False
    if not addr or pid is None:
        raise ConfigError(f"multi-host run with num_processes={nproc} needs coordinator_address (host:port) "
                          f"and process_id (config distributed.* or env JAX_COORDINATOR_ADDRESS / JAX_PROCESS_ID)")
    nproc, pid = int(nproc), int(pid)
    if not 0 <= pid < nproc:
        raise ConfigError(f"distributed process_id={pid} must be in [0, num_processes={nproc})")
    jax.distributed.initialize(coordinator_address=str(addr), num_processes=nproc, process_id=pid,
                               local_device_ids=local_ids)
    return True


def _already_initialized() -> bool:
    is_init = getattr(jax.distributed, "is_initialized", None)
    return bool(is_init()) if is_init is not None else False


def make_global_batch(local_batch, mesh):
    """Per-process rows (numpy, leading dim = global batch / process count) -> global sharded arrays.

    Each process passes the rows its own devices hold (in process order: process p feeds rows
    p*n .. (p+1)*n-1 of the global batch for a mesh built by make_mesh). On one process this is
    just a sharded device_put.
    """
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def local_batch_slice(global_batch_size: int, mesh) -> slice:
    """Which rows of the global batch this process must feed to make_global_batch (contiguous)."""
    index_map = batch_sharding(mesh).addressable_devices_indices_map((global_batch_size,))
    starts = [idx[0].start or 0 for idx in index_map.values()]
    stops = [global_batch_size if idx[0].stop is None else idx[0].stop for idx in index_map.values()]
    lo, hi = min(starts), max(stops)
    covered = sum(b - a for a, b in sorted(set(zip(starts, stops))))
    if covered != hi - lo:
        raise ConfigError(f"this process's batch rows are not contiguous in mesh {dict(mesh.shape)}")
    return slice(lo, hi)
