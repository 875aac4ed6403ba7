"""Virtual TPU slices to compile for on a machine without a TPU (XLA's TPU compiler from libtpu).

``topology("v5e:2x2")`` gives the compile-only devices of a slice (every chip of every host: a
16-chip "v5e:4x4" is 4 hosts of 4 chips); ``mesh(...)`` lays the model's (data, fsdp, tensor) mesh
over them; lower inside ``as_tpu_host()`` so the model resolves attention "auto" exactly as on a TPU
host (the Pallas splash kernel, unfused projections: they read ``jax.default_backend()`` at trace
time, "cpu" here). ``compiled.memory_analysis()`` / ``cost_analysis()`` of the result are the TPU
compiler's figures (estimates: nothing runs). ``CHIPS`` holds each generation's HBM and peak bf16
FLOP/s per chip (public spec sheets) to set them against.

Set-up once (the version the installed jax's "tpu" extra names: jax 0.10.2 wants libtpu==0.0.42.*):
    python -m pip install --target "$HOME/.cache/libtpu" "libtpu==0.0.42.*"
or install it into the venv (``.ci/run`` does). Import this module before jax is first used (it sets
JAX_PLATFORMS=cpu and puts ``$HOME/.cache/libtpu`` on sys.path when it exists).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import pathlib
import re
import sys
from unittest import mock

LIBTPU_DIR = pathlib.Path(os.environ.get("INTERPLAY_LIBTPU_DIR", pathlib.Path.home() / ".cache" / "libtpu"))
REPO = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu takes /tmp/libtpu_lockfile so that one process owns a host's chips; compiling for virtual
# chips owns nothing, so let several processes (pytest-xdist workers, parallel benchmarks) load it
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
for _p in (str(LIBTPU_DIR), str(REPO)):
    if pathlib.Path(_p).is_dir() and _p not in sys.path:
        sys.path.insert(0, _p)

import jax  # noqa: E402
from jax.experimental import topologies  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    hbm_gib: float          # HBM per chip (per JAX device: megacore chips are one device)
    peak_tflops: float      # dense bf16 per chip


# Public per-chip figures (Google Cloud TPU documentation: system architecture pages).
CHIPS = {"v4": Chip("TPU v4", 32.0, 275.0), "v5e": Chip("TPU v5e", 16.0, 197.0),
         "v5p": Chip("TPU v5p", 95.0, 459.0), "v6e": Chip("TPU v6e", 32.0, 918.0)}


def libtpu_missing() -> str | None:
    """None when libtpu can be imported (so XLA's TPU compiler can run here), else the reason."""
    if os.environ.get("TPU_LIBRARY_PATH") and os.path.isfile(os.environ["TPU_LIBRARY_PATH"]):
        return None
    if importlib.util.find_spec("libtpu") is None:
        return (f"libtpu is not installed (pip install 'libtpu==0.0.42.*', the version jax {jax.__version__}'s "
                f"'tpu' extra names, into the venv or --target {LIBTPU_DIR})")
    return None


def chip(topology_name: str) -> Chip:
    """The chip of a topology name such as "v5e:2x2" or "v5p:2x2x1"."""
    gen = topology_name.split(":")[0].lower().replace("litepod", "e")
    if gen not in CHIPS:
        raise ValueError(f"unknown TPU generation {gen!r} in {topology_name!r}; expected one of {', '.join(CHIPS)}")
    return CHIPS[gen]


def topology(name: str = "v5e:2x2"):
    """The compile-only devices of a TPU slice. v4 and v5p chips are one device each (megacore)."""
    kwargs = {"chip_config_name": "megacore"} if name.startswith(("v4", "v5p")) else {}
    return topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs)


def mesh(name: str = "v5e:2x2", data: int = -1, fsdp: int = 1, tensor: int = 1):
    """The model's (data, fsdp, tensor) mesh (interplay_jax.train.sharding) over a slice's devices."""
    from interplay_jax.train import sharding as shd
    return shd.make_mesh(data, fsdp, tensor, devices=topology(name).devices)


def hosts(name: str) -> int:
    """How many TPU-VM hosts (processes) the slice has."""
    return len({d.process_index for d in topology(name).devices})


@contextlib.contextmanager
def as_tpu_host():
    """Trace as a TPU host would: ``jax.default_backend()`` reads "tpu" (attention "auto" -> splash,
    the Mosaic kernel compiled, not interpreted; CPU-only fused projections off)."""
    with mock.patch.object(jax, "default_backend", lambda: "tpu"):
        yield


def flash_kernel_calls(compiled) -> dict:
    """The splash (flash) attention Mosaic kernels a compiled TPU program launches, by kernel
    (``splash_mha_fwd*``, ``splash_mha_dq*``, ``splash_mha_dkv*``): custom calls to ``tpu_custom_call``
    whose instruction is named after a splash kernel (each launch site counted once)."""
    names = re.findall(r'^\s*%(splash_\w+?)(?:\.\d+)? = [^\n]*custom_call_target="tpu_custom_call"',
                       compiled.as_text(), flags=re.M)
    out: dict = {}
    for n in names:
        out[n] = out.get(n, 0) + 1
    return out


def cost(compiled) -> dict:
    """The TPU cost model's figures for ONE run of a compiled program, loops counted:

    * ``seconds``: ``cost_analysis()["optimal_seconds"]`` (XLA's roofline of each op, summed) with two
      corrections. (1) libtpu 0.0.42 reports -1 s for every ``ConcatBitcast`` custom call it inserts
      (shown on small programs: a softmax with one such call reads -0.99998 s; the paper step with
      347 of them -346.87 s); each is added back. (2) The cost model counts a ``while`` body once
      (a step with 2 accumulation micro-steps reports the FLOPs of 1), so the seconds are scaled by
      (the compiler's ``estimated_cycles`` of every op with each loop body times its trip count) /
      (the same with each body once).
    * ``xla_seconds_once``, ``loop_factor``: the two parts; ``flops`` / ``bytes``: as reported (loop
      bodies once).
    Mosaic (Pallas) kernels carry no cost estimate: their time is not in these figures.
    """
    c = compiled.cost_analysis() or {}
    c = c[0] if isinstance(c, list) else c
    txt = compiled.as_text()
    once = float(c.get("optimal_seconds", 0.0)) + txt.count('custom_call_target="ConcatBitcast"')
    cycles_once, cycles_trips = loop_cycles(txt)
    factor = cycles_trips / cycles_once if cycles_once else 1.0
    return {"flops": float(c.get("flops", 0.0)), "bytes": float(c.get("bytes accessed", 0.0)),
            "xla_seconds_once": once, "loop_factor": factor, "seconds": once * factor}


_HEADER = re.compile(r"^(?:ENTRY )?%(\S+) .*\{\s*$")
_CYCLES = re.compile(r'"estimated_cycles":"(-?\d+)"')
_WHILE = re.compile(r" while\(.*condition=%([\w.\-]+), body=%([\w.\-]+)")
_TRIP = re.compile(r"compare\(%[\w.\-]+, %([\w.\-]+)\), direction=LT")


def loop_cycles(hlo_text: str) -> tuple[float, float]:
    """(cycles with each loop body once, cycles with each body times its trip count) of a compiled
    TPU module: the sum of the TPU compiler's per-op ``estimated_cycles`` (fusions carry them on the
    fusion), recursing into ``while`` bodies. A loop's trip count is read from its condition
    (``counter < constant(N)``, how ``lax.scan`` / ``fori_loop`` lower; counters start at 0);
    unreadable: 1."""
    comps: dict[str, list[str]] = {}
    entry, cur = None, None
    for line in hlo_text.splitlines():
        m = _HEADER.match(line)
        if m:
            cur = m.group(1)
            comps[cur] = []
            if line.startswith("ENTRY"):
                entry = cur
            continue
        if line.rstrip() == "}":      # (kernel metadata spans lines that start with "}}")
            cur = None
        elif cur is not None:
            comps[cur].append(line)

    def trip(cond: str) -> int:
        lines = comps.get(cond, [])
        consts = {re.match(r"\s*%([\w.\-]+) =", ln).group(1): int(v) for ln in lines
                  for v in re.findall(r"s32\[\]\S* constant\((\d+)\)", ln) if re.match(r"\s*%([\w.\-]+) =", ln)}
        for ln in lines:
            m = _TRIP.search(ln)
            if m and m.group(1) in consts:
                return consts[m.group(1)]
        return 1

    def total(name: str, depth: int = 0) -> tuple[float, float]:
        once = trips = 0.0
        for ln in comps.get(name, []):
            m = _CYCLES.search(ln)
            if m:
                once += int(m.group(1))
                trips += int(m.group(1))
            w = _WHILE.search(ln)
            if w and depth < 16:
                b_once, b_trips = total(w.group(2), depth + 1)
                once += b_once
                trips += trip(w.group(1)) * b_trips
        return once, trips

    return total(entry) if entry else (0.0, 0.0)


def memory(compiled) -> dict:
    """Per-device GiB of a compiled program: temp, arguments, outputs, and temp + arguments +
    outputs - aliased (what is live at the peak: donated state is counted once)."""
    m = compiled.memory_analysis()
    g = lambda x: x / 2**30  # noqa: E731
    alias = getattr(m, "alias_size_in_bytes", 0) or 0
    return {"temp": g(m.temp_size_in_bytes), "args": g(m.argument_size_in_bytes), "out": g(m.output_size_in_bytes),
            "total": g(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes - alias)}
