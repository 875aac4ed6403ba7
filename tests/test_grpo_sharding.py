"""The GRPO step sharded over 4 fake CPU devices (data x fsdp, micro-batches, mini-batches, KL) gives the
same update as the unsharded step. Runs in a subprocess: the device count is fixed at JAX start-up."""
import json
import pathlib
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import jax.numpy as jnp, numpy as np, optax
    from flax import nnx
    from interplay_jax.model.qwen2 import Qwen2, model_config
    from interplay_jax.rl import grpo
    from interplay_jax.train import lm_step, sharding as shd

    cfg = model_config("micro", vocab_size=32, num_layers=1, max_position_embeddings=64)
    tx = optax.sgd(0.5, momentum=0.9)  # (Adam would amplify float noise in near-zero gradients)
    mesh = shd.make_mesh(data=2, fsdp=2)
    graphdef, state = lm_step.init_state(cfg, tx, 0, mesh)
    state_sh = lm_step.shardings_of(state)
    host = jax.device_get(state)
    rng = np.random.default_rng(0)
    n, t, r = 16, 12, 6
    batch = {"tokens": rng.integers(4, 32, size=(n, t)).astype(np.int32),
             "prompt_lens": (2 + np.arange(n) % 4).astype(np.int32), "response_mask": np.zeros((n, r), np.int32),
             "advantages": rng.normal(size=n).astype(np.float32), "ref_is_old": np.zeros(n, bool)}
    for i in range(n):
        batch["response_mask"][i, :1 + i % 6] = 1
    batch["ref_logprobs"] = (-rng.random((n, r)) * batch["response_mask"]).astype(np.float32)
    gcfg = grpo.GRPOConfig(kl_coef=0.1, entropy_coef=0.01)

    sharded = grpo.make_grpo_step(graphdef, tx, gcfg, num_minibatches=2, micro_batch_size=4, mesh=mesh,
                                  state_shardings=state_sh, donate=False)
    s1, m1 = sharded(state, shd.make_global_batch(batch, mesh))
    plain = grpo.make_grpo_step(graphdef, tx, gcfg, num_minibatches=2, donate=False)
    local = jax.tree.map(lambda x: jax.device_put(np.asarray(x), jax.devices()[0]), host)
    s2, m2 = plain(local, {k: jnp.asarray(v) for k, v in batch.items()})
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])))
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(jax.tree.leaves(s2["params"]), jax.tree.leaves(host["params"])))
    specs = sorted({str(x.sharding.spec) for x in jax.tree.leaves(s1["params"])})
    print(json.dumps({"diff": diff, "moved": moved, "loss": [float(m1["loss"]), float(m2["loss"])],
                      "kl": [float(m1["kl"]), float(m2["kl"])], "specs": specs}))
""")


def test_sharded_grpo_step_matches_single_device():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["moved"] > 1e-4                      # the update did something
    assert out["diff"] < 1e-4 * out["moved"], out
    # within a few float32 ulps (the KL here is ~16, where one ulp is 1.9e-6)
    assert abs(out["loss"][0] - out["loss"][1]) < 1e-5 * max(1.0, abs(out["loss"][1]))
    assert abs(out["kl"][0] - out["kl"][1]) < 1e-6 * max(1.0, abs(out["kl"][1]))
    assert any("fsdp" in s for s in out["specs"])   # parameters really are split
