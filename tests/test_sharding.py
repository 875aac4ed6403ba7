"""Sharding: data-parallel, FSDP and tensor-parallel layouts on 8 fake CPU devices give the same
loss and parameters as 1 device (3 AdamW steps, fp32; tolerance: loss rtol 1e-5, params atol 1e-5),
and clashing sizes fail with one line before compiling.

The 8-device part runs in a subprocess: the device count must be set before JAX starts, and pytest
workers may already have started it with 1 device.
"""
import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

from interplay_jax.errors import ConfigError
from interplay_jax.model.qwen2 import model_config
from interplay_jax.train import sharding as shd

WORKER = textwrap.dedent(r'''
    import json, sys, time
    t0 = time.time()
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import PartitionSpec as P
    from interplay_jax.errors import ConfigError
    from interplay_jax.model.qwen2 import model_config
    from interplay_jax.train import lm_step, optim, sharding as shd

    cfg = model_config("micro", vocab_size=64, num_heads=8, num_kv_heads=4, head_dim=16, num_layers=1)  # Dh 16: the fused CPU attention
    o = dict(lr=1e-3, min_lr=1e-4, warmup_steps=1, total_steps=10, schedule="cosine", b1=0.9, b2=0.999,
             eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    o = type("O", (), o)()
    sched = optim.make_schedule(o)
    tx = optim.make_optimizer(o, sched)
    rng = np.random.default_rng(0)
    B, T = 16, 16
    batches = []
    for _ in range(3):
        seg = np.ones((B, T), np.int32)
        seg[:, T // 2:] = 2
        seg[::3, -4:] = 0
        batches.append(dict(tokens=rng.integers(0, 64, (B, T)).astype(np.int32), segment_ids=seg))

    def run(data, fsdp, tensor, accum, devices=None):
        mesh = shd.make_mesh(data, fsdp, tensor, devices=devices)
        shd.check_divisibility(cfg, mesh, B, accum)
        graphdef, state = lm_step.init_state(cfg, tx, 0, mesh)
        step = lm_step.make_lm_step(graphdef, tx, sched, mesh=mesh, state_shardings=lm_step.shardings_of(state),
                                    grad_accum_steps=accum, document_mask=True)
        q = state["params"]["layers"][0]["q_kernel"][...]
        mu = state["opt_state"][1][0].mu["layers"][0]["q_kernel"][...]
        specs = dict(q=list(q.sharding.spec), mu_q=list(mu.sharding.spec),
                     q_shard=list(q.addressable_shards[0].data.shape),
                     embed=list(state["params"]["embed"][...].sharding.spec))
        losses = []
        for batch in batches:
            state, m = step(state, shd.make_global_batch(batch, mesh))
            losses.append(float(m["loss"]))
        return losses, jax.device_get(state["params"]), specs

    out = {}
    base_losses, base_params, _ = run(1, 1, 1, 1, devices=jax.devices()[:1])
    out["base"] = dict(losses=base_losses)
    for name, layout in dict(dp=(8, 1, 1, 1), fsdp=(2, 4, 1, 2), tp=(1, 2, 4, 1)).items():
        losses, params, specs = run(*layout)
        diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(base_params)))
        out[name] = dict(losses=losses, max_param_diff=diff, specs=specs)
        print(name, "%.1fs" % (time.time() - t0), diff, file=sys.stderr)
    try:
        shd.make_mesh(2, 3, 1)
    except ConfigError as e:
        out["mesh_error"] = str(e)
    out["fill"] = dict(shd.make_mesh(-1, 2, 1).shape)
    print("RESULT " + json.dumps(out))
''')


@pytest.fixture(scope="module")
def eight_devices():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, timeout=300, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    print(proc.stderr[-2000:])
    return json.loads(lines[-1][len("RESULT "):])


@pytest.mark.parametrize("layout", ["dp", "fsdp", "tp"])
def test_layout_matches_one_device(eight_devices, layout):
    got, base = eight_devices[layout], eight_devices["base"]
    assert len(got["losses"]) == 3
    for a, b in zip(got["losses"], base["losses"]):
        assert a == pytest.approx(b, rel=1e-5)
    assert base["losses"][2] < base["losses"][0]  # it trains
    assert got["max_param_diff"] < 1e-5


def test_parameters_and_moments_are_sharded(eight_devices):
    # q_kernel [D=32, H=8, Dh=16]: D over fsdp, heads over tensor; Adam's mu follows.
    assert eight_devices["dp"]["specs"]["q"] == []
    assert eight_devices["fsdp"]["specs"]["q"] == ["fsdp"]
    assert eight_devices["fsdp"]["specs"]["q_shard"] == [8, 8, 16]
    assert eight_devices["tp"]["specs"]["q"] == ["fsdp", "tensor"]
    assert eight_devices["tp"]["specs"]["q_shard"] == [16, 2, 16]
    for name in ("dp", "fsdp", "tp"):
        assert eight_devices[name]["specs"]["mu_q"] == eight_devices[name]["specs"]["q"]
    assert eight_devices["tp"]["specs"]["embed"] == ["tensor", "fsdp"]


def test_mesh_errors(eight_devices):
    assert eight_devices["mesh_error"] == "mesh data=2 x fsdp=3 x tensor=1 = 6 does not match 8 devices"
    assert eight_devices["fill"] == {"data": 4, "fsdp": 2, "tensor": 1}


def fake_mesh(data=1, fsdp=1, tensor=1):
    return types.SimpleNamespace(shape={"data": data, "fsdp": fsdp, "tensor": tensor})


@pytest.mark.parametrize("mesh, batch, accum, message", [
    (fake_mesh(tensor=4), 8, 1, "model.num_kv_heads=2 does not divide by mesh tensor=4"),
    (fake_mesh(tensor=8), 8, 1, "model.num_heads=12 does not divide by mesh tensor=8"),
    (fake_mesh(data=4, fsdp=2), 12, 1, "global batch=12 does not divide by mesh data x fsdp=8"),
    (fake_mesh(data=4), 8, 4, "global batch=8 does not divide by mesh data x fsdp=4 x grad_accum_steps=4"),
    (fake_mesh(fsdp=5), 10, 1, "model.hidden_size=768 does not divide by mesh fsdp=5"),
])
def test_divisibility_errors_are_one_line(mesh, batch, accum, message):
    with pytest.raises(ConfigError) as err:
        shd.check_divisibility(model_config("paper100m"), mesh, batch, accum)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_heads_vs_kv_heads():
    cfg = types.SimpleNamespace(num_heads=12, num_kv_heads=5, hidden_size=64, intermediate_size=64)
    with pytest.raises(ConfigError, match="num_heads=12 is not a multiple of model.num_kv_heads=5"):
        shd.check_divisibility(cfg, fake_mesh())


def test_mesh_shape_rules():
    assert shd.mesh_shape(-1, 2, 2, 8) == (2, 2, 2)
    with pytest.raises(ConfigError, match="does not match 8 devices"):
        shd.mesh_shape(2, 2, 1, 8)
    with pytest.raises(ConfigError, match="at most one -1"):
        shd.mesh_shape(-1, -1, 1, 8)


def test_initialize_distributed_single_process_and_bad_config(monkeypatch):
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "INTERPLAY_DISTRIBUTED"):
        monkeypatch.delenv(key, raising=False)
    assert shd.initialize_distributed(None) is False  # one process: no-op
    assert shd.initialize_distributed(types.SimpleNamespace(num_processes=1)) is False
    with pytest.raises(ConfigError, match="needs coordinator_address"):
        shd.initialize_distributed(types.SimpleNamespace(num_processes=2, process_id=0))
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    with pytest.raises(ConfigError, match="process_id=2 must be in"):
        shd.initialize_distributed(None)
