"""Checkpoints (orbax): round trip, keep-N, partial writes never loaded, other-mesh restore,
restore_params, params digest, lineage chain CLI."""
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from interplay_jax import checkpoint as ck
from interplay_jax import lineage
from interplay_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]


def toy_state(seed=0, step=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {"embed": jax.random.normal(k[0], (16, 8)), "layers": [{"w": jax.random.normal(k[1], (8, 8)),
                                                                     "b": jnp.zeros(8, jnp.bfloat16)}]}
    return {"step": jnp.int32(step), "params": params,
            "opt_state": {"mu": jax.tree.map(jnp.zeros_like, params), "count": jnp.int32(step)}}


def assert_tree_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keep_n_and_metadata(tmp_path):
    with ck.Checkpointer(tmp_path, max_to_keep=2) as c:
        for s in (1, 2, 3):
            c.save(s, toy_state(s, s), data_state={"parent": {"next_index": 10 * s}, "emitted": s},
                   meta={"stage": "pretrain"})
        c.wait()
        assert c.all_steps() == [2, 3] and c.latest_step() == 3
        state, data, meta = c.restore(target=toy_state(0))
        assert_tree_equal(state, toy_state(3, 3))
        assert data == {"parent": {"next_index": 30}, "emitted": 3}
        assert meta["stage"] == "pretrain" and meta["step"] == 3
        state2, data2, _ = c.restore(step=2, target=toy_state(0))
        assert_tree_equal(state2, toy_state(2, 2)) and data2["emitted"] == 2
        with pytest.raises(ConfigError, match="no complete checkpoint at step 1"):
            c.restore(step=1)


def test_partial_checkpoint_dir_is_ignored(tmp_path):
    with ck.Checkpointer(tmp_path, max_to_keep=3) as c:
        c.save(5, toy_state(5, 5))
    # what a save killed half way leaves behind: orbax's temporary directory
    junk = tmp_path / "checkpoints" / "9.orbax-checkpoint-tmp-1234567"
    (junk / "state").mkdir(parents=True)
    (junk / "state" / "garbage").write_bytes(b"\x00" * 100)
    assert ck.complete_steps(tmp_path) == [5]
    params, run_dir, step = ck.restore_params(tmp_path)
    assert step == 5
    with ck.Checkpointer(tmp_path) as c:        # opening a manager cleans temporaries up
        assert c.latest_step() == 5
        state, _, _ = c.restore(target=toy_state(0))
        assert_tree_equal(state, toy_state(5, 5))
    assert not junk.exists()


WRITER = textwrap.dedent("""
    import sys, jax.numpy as jnp
    from interplay_jax import checkpoint as ck
    c = ck.Checkpointer(sys.argv[1], max_to_keep=100)
    for s in range(1, 1000):
        big = jnp.full((1 << 21,), float(s))            # 8 MB per leaf
        c.save(s, {"a": big, "b": big + 1, "step": jnp.int32(s)}, data_state={"s": s}, meta={"s": s})
        print(s, flush=True)
""")


def test_killed_checkpoint_write_is_never_loaded_as_whole(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=REPO, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(ck.complete_steps(tmp_path)) < 2:
            time.sleep(0.05)
        assert len(ck.complete_steps(tmp_path)) >= 2, "writer made no checkpoints"
        time.sleep(random.uniform(0.0, 0.5))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    steps = ck.complete_steps(tmp_path)
    assert steps
    with ck.Checkpointer(tmp_path, max_to_keep=100) as c:
        assert c.all_steps() == steps
        for s in steps[-3:]:                      # every listed checkpoint is whole and right
            target = {"a": jnp.zeros(1 << 21), "b": jnp.zeros(1 << 21), "step": jnp.int32(0)}
            state, data, meta = c.restore(step=s, target=target)
            assert float(state["a"].min()) == float(state["a"].max()) == s
            assert float(state["b"][0]) == s + 1 and int(state["step"]) == s
            assert data == {"s": s} and meta["s"] == s


MESH_SCRIPT = textwrap.dedent("""
    import sys, jax
    jax.config.update("jax_num_cpu_devices", 2)
    import jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from interplay_jax import checkpoint as ck
    devs = jax.devices()
    assert len(devs) == 2
    mesh2 = jax.make_mesh((2,), ("x",), devices=devs)
    x = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh2, P("x")))
    with ck.Checkpointer(sys.argv[1]) as c:
        c.save(1, {"params": {"w": x}})
    # restore onto a different layout: sharded on the other dim, and onto one device
    for sh in (NamedSharding(mesh2, P(None, "x")), NamedSharding(jax.make_mesh((1,), ("x",), devices=devs[:1]), P())):
        tgt = {"params": {"w": jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=sh)}}
        with ck.Checkpointer(sys.argv[1]) as c:
            st, _, _ = c.restore(target=tgt)
        assert st["params"]["w"].sharding == sh, st["params"]["w"].sharding
        np.testing.assert_array_equal(np.asarray(st["params"]["w"]), np.arange(32.0).reshape(8, 4))
        p, _, _ = ck.restore_params(sys.argv[1], target=tgt["params"])
        assert p["w"].sharding == sh
    print("ok")
""")


def test_restore_onto_a_different_mesh(tmp_path):
    out = subprocess.run([sys.executable, "-c", MESH_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")


def test_params_digest_equal_iff_params_equal(tmp_path):
    s = toy_state(1)
    d = ck.params_digest(s["params"])
    assert d == ck.params_digest(jax.tree.map(lambda x: np.asarray(x).copy(), s["params"]))
    changed = jax.tree.map(lambda x: x, s["params"])
    changed["embed"] = changed["embed"].at[3, 2].add(1e-6)
    assert ck.params_digest(changed) != d
    assert ck.params_digest(toy_state(2)["params"]) != d
    # the digest of restored params (plain dicts, no target) equals the original's
    with ck.Checkpointer(tmp_path) as c:
        c.save(4, s)
    p, _, step = ck.restore_params(tmp_path)
    assert step == 4 and ck.params_digest(p) == d


def test_restore_params_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ck.restore_params(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        ck.restore_params(tmp_path / "empty")
    with ck.Checkpointer(tmp_path / "r") as c:
        c.save(2, toy_state(0))
    with pytest.raises(ConfigError, match="no checkpoint at step 3"):
        ck.restore_params(tmp_path / "r", step=3)
    p, run_dir, step = ck.restore_params(tmp_path / "r" / "checkpoints" / "2")
    assert step == 2 and run_dir == (tmp_path / "r").absolute()


def test_lineage_chain_cli(tmp_path, capsys):
    runs = {name: tmp_path / name for name in ("pre", "mid", "rl")}
    digests = {}
    for i, (name, stage, parent) in enumerate([("pre", "pretrain", None), ("mid", "midtrain", ("pre", 2)),
                                                ("rl", "rl", ("mid", 3))]):
        with ck.Checkpointer(runs[name]) as c:
            for s in (2, 3):
                st = toy_state(10 * i + s, s)
                c.save(s, st)
                digests[(name, s)] = ck.params_digest(st["params"])
        ck.write_lineage(runs[name], stage, {"mixture": f"m{i}", "model": {"preset": "micro"}},
                         None if parent is None else {"run_dir": runs[parent[0]], "step": parent[1]})
    chain = ck.lineage_chain(runs["rl"])
    assert [r["stage"] for r in chain] == ["rl", "midtrain", "pretrain"]
    assert [r["step"] for r in chain] == [3, 3, 2]
    assert lineage.main([str(runs["rl"]), "--digest"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "stage=rl" in lines[0] and str(runs["rl"]) in lines[0]
    assert "mixture=m1" in out and "model.preset=micro" in out
    for name, s in (("rl", 3), ("mid", 3), ("pre", 2)):
        assert f"sha256:{digests[(name, s)]}" in out
    assert f"sha256:{digests[('pre', 3)]}" not in out     # the step the child used, not the latest
    assert lineage.main([str(tmp_path / "nope")]) == 2
    assert "error:" in capsys.readouterr().err
