"""Multi-host: two JAX processes on this machine (CPU backend, gloo collectives, localhost
coordinator; 2 CPU devices each, mesh data=2 x fsdp=2 spanning both) run 3 train steps, each
feeding only its half of the global batch via make_global_batch, and match a single-process,
single-device run (loss rtol 1e-5, params atol 1e-5). The processes find the coordinator through
the env variables initialize_distributed reads (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID)."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

WORKER = textwrap.dedent(r'''
    import json, os, sys
    import jax
    role, out = sys.argv[1], sys.argv[2]
    if role == "multi":
        jax.config.update("jax_num_cpu_devices", 2)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    from interplay_jax.train import sharding as shd
    started = shd.initialize_distributed(None)  # env: JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
    import numpy as np
    from jax.experimental import multihost_utils
    from interplay_jax.model.qwen2 import model_config
    from interplay_jax.train import lm_step, optim

    cfg = model_config("micro", vocab_size=64, num_layers=1)
    o = type("O", (), dict(lr=1e-3, min_lr=1e-4, warmup_steps=1, total_steps=10, schedule="cosine", b1=0.9,
                           b2=0.999, eps=1e-8, weight_decay=0.1, grad_clip=1.0))()
    sched = optim.make_schedule(o)
    tx = optim.make_optimizer(o, sched)
    mesh = shd.make_mesh(2, 2, 1) if role == "multi" else shd.make_mesh(1, 1, 1)
    B, T = 8, 16
    shd.check_divisibility(cfg, mesh, B)
    graphdef, state = lm_step.init_state(cfg, tx, 0, mesh)
    step = lm_step.make_lm_step(graphdef, tx, sched, mesh=mesh, state_shardings=lm_step.shardings_of(state))
    rows = shd.local_batch_slice(B, mesh)
    rng = np.random.default_rng(0)  # every process draws the same global batch, feeds only its rows
    losses = []
    for _ in range(3):
        seg = np.ones((B, T), np.int32)
        seg[:, 10:] = 2
        seg[1::2, -3:] = 0
        batch = dict(tokens=rng.integers(0, 64, (B, T)).astype(np.int32), segment_ids=seg)
        local = {k: v[rows] for k, v in batch.items()}
        state, m = step(state, shd.make_global_batch(local, mesh))
        losses.append(float(m["loss"]))
    params = [np.asarray(x) for x in multihost_utils.process_allgather(jax.tree.leaves(state["params"]), tiled=True)]
    info = dict(started=started, process_count=jax.process_count(), device_count=jax.device_count(),
                rows=[rows.start, rows.stop], losses=losses)
    tag = f"{role}{jax.process_index()}"
    np.savez(os.path.join(out, tag + ".npz"), *params)
    with open(os.path.join(out, tag + ".json"), "w") as f:
        json.dump(info, f)
''')


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(role, out, extra_env):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **extra_env)
    env.pop("XLA_FLAGS", None)
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        if key not in extra_env:
            env.pop(key, None)
    return subprocess.Popen([sys.executable, "-c", WORKER, role, str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("multihost")
    addr = f"localhost:{free_port()}"
    procs = [launch("multi", out, dict(JAX_COORDINATOR_ADDRESS=addr, JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
             for i in range(2)]
    procs.append(launch("single", out, {}))
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail("multi-host processes did not finish in 300 s:\n" + "\n".join(l[-1500:] for l in logs))
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    result = {}
    for tag in ("multi0", "multi1", "single0"):
        info = json.loads((out / f"{tag}.json").read_text())
        with np.load(out / f"{tag}.npz") as z:
            info["params"] = [z[f"arr_{i}"] for i in range(len(z.files))]
        result[tag] = info
    return result


def test_two_processes_really_distributed(runs):
    for i in range(2):
        info = runs[f"multi{i}"]
        assert info["started"] and info["process_count"] == 2 and info["device_count"] == 4
    assert runs["multi0"]["rows"] == [0, 4] and runs["multi1"]["rows"] == [4, 8]
    single = runs["single0"]
    assert not single["started"] and single["process_count"] == 1 and single["rows"] == [0, 8]


def test_two_processes_match_one(runs):
    ref = runs["single0"]
    assert ref["losses"][2] < ref["losses"][0]
    for i in range(2):
        got = runs[f"multi{i}"]
        np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5)
        assert len(got["params"]) == len(ref["params"])
        for a, b in zip(got["params"], ref["params"]):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, atol=1e-5)
