"""interplay_jax.host: on CPU a program's large temporary block stays in the heap between calls.

Each case runs in a fresh process (the dispatch setting is read when JAX's CPU client is made, and the
malloc settings are process-wide): a jitted program with an ~80 MB temporary block (``exp(x)`` and its
reversal) is called repeatedly, and the minor page faults of each call are counted.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from interplay_jax import host

REPO = pathlib.Path(__file__).resolve().parents[1]

_PROBE = """
import json, resource
import jax, jax.numpy as jnp
from interplay_jax import host
settings = host.configure()
again = host.configure()
f = jax.jit(lambda x: jnp.sum(jnp.exp(x)[::-1] * jnp.exp(x)))  # exp(x) and its reversal are materialised
x = jnp.linspace(0.0, 1.0, 10_000_000, dtype=jnp.float32)
for _ in range(3):
    total = float(f(x))
faults = []
for _ in range(8):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    total = float(f(x))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(json.dumps({"settings": settings, "again": again, "faults": faults,
                  "total": total, "async": jax.config.values["jax_cpu_enable_async_dispatch"],
                  "temp_pages": f.lower(x).compile().memory_analysis().temp_size_in_bytes // 4096}))
"""


def _probe(**env) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", **env}
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _thp_always() -> bool:
    try:
        return "[always]" in pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


@pytest.mark.skipif(host._glibc() is None or not sys.platform.startswith("linux"),
                    reason="the malloc settings are glibc's (Linux)")
def test_large_temporary_block_is_not_faulted_in_again_each_call():
    on = _probe()
    off = _probe(INTERPLAY_CPU_HOST="off")
    assert on["settings"] == {"sync_dispatch": True, "keep_large_blocks": True}
    assert on["again"] == on["settings"] and on["async"] is False
    assert off["settings"] == {"sync_dispatch": False, "keep_large_blocks": False} and off["async"] is True
    assert on["total"] == off["total"]                          # the same program, the same result
    assert on["temp_pages"] > 16_000                            # ~80 MB: mmapped under glibc's defaults
    # kept in the heap: calls that fault next to nothing, and far fewer faults in all (now and then a
    # call still faults the whole block in: ~1 call in 9 here, cause not traced)
    assert min(on["faults"]) < on["temp_pages"] // 20, on
    assert sum(on["faults"]) < sum(off["faults"]) // 2, (on, off)
    if not _thp_always():                                       # 4 KB pages: each call faults the block in
        assert min(off["faults"]) > on["temp_pages"] // 2, off


def test_turned_off_or_repeated_changes_nothing_in_this_process(monkeypatch):
    monkeypatch.setattr(host, "_applied", {})
    monkeypatch.setenv("INTERPLAY_CPU_HOST", "off")
    assert host.configure() == {"sync_dispatch": False, "keep_large_blocks": False}
    monkeypatch.setenv("INTERPLAY_CPU_HOST", "")
    assert host.configure() == {"sync_dispatch": False, "keep_large_blocks": False}   # once per process
