"""TPU flash attention (interplay_jax/model/tpu_attention.py).

* On CPU: the splash kernel in Pallas interpret mode gives the einsum path's logits and gradients
  (plain causal, segment ids, a length that is not a multiple of 128, GQA, head dims 8 and 72), also
  under a data x fsdp mesh (its shard_map; a subprocess with 4 CPU devices); the TPU RoPE equals the
  model's.
"""
import json
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from interplay_jax.model import forward, init_model, model_config, qwen2, tpu_attention

REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ CPU numerics


@pytest.mark.parametrize("head_dim", [8, 72])
def test_splash_interpret_matches_einsum(head_dim):
    t = 200                                              # padded to 256 inside the kernel call
    tokens = jax.random.randint(jax.random.key(1), (2, t), 0, 2200, dtype=jnp.int32)
    seg = jnp.asarray(np.repeat([[1] * 70 + [2] * 100 + [0] * 30], 2, 0), jnp.int32)
    out = {}
    for impl in ("einsum", "splash"):
        cfg = model_config("micro", head_dim=head_dim, attention=impl)
        graphdef, params = nnx.split(init_model(cfg, seed=0), nnx.Param)
        plain = jax.jit(lambda p, x: forward(graphdef, p, x))(params, tokens)
        masked = jax.jit(lambda p, x, s: forward(graphdef, p, x, segment_ids_BxT=s))(params, tokens, seg)
        grads = jax.jit(jax.grad(lambda p, x, s: (forward(graphdef, p, x, segment_ids_BxT=s)[:, :170] ** 2).mean()))(
            params, tokens, seg)
        out[impl] = (plain, masked, grads)
    (p0, m0, g0), (p1, m1, g1) = out["einsum"], out["splash"]
    np.testing.assert_allclose(p1, p0, atol=2e-5)
    np.testing.assert_allclose(m1[:, :170], m0[:, :170], atol=2e-5)   # padding positions are unspecified
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4)
    assert np.abs(np.asarray(m1[:, 70:170] - p1[:, 70:170])).max() > 1e-3   # the mask does something


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("head_dim", [8, 64, 72])
def test_tpu_rope_equals_rotate_half(head_dim, dtype):
    x = jax.random.normal(jax.random.key(0), (2, 9, 3, head_dim)).astype(dtype)
    cos, sin = qwen2.rope_tables(jnp.arange(9)[None].repeat(2, 0) * 131, head_dim, 1e6)
    a, b = qwen2.apply_rope(x, cos, sin), tpu_attention.rope(x, cos, sin)
    assert b.dtype == x.dtype
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_block_sizes_and_padding():
    assert [tpu_attention.padded_length(t) for t in (1, 128, 129, 2048)] == [128, 128, 256, 2048]
    assert [tpu_attention.block_size(t) for t in (128, 256, 384, 1536, 2048)] == [128, 256, 128, 512, 512]


MESH_SCRIPT = textwrap.dedent("""
    import json
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import numpy as np, optax
    from interplay_jax.model.qwen2 import model_config
    from interplay_jax.rl import grpo
    from interplay_jax.train import lm_step, sharding as shd

    mesh = shd.make_mesh(data=2, fsdp=2)
    rng = np.random.default_rng(0)
    seg = np.repeat([[1] * 50 + [2] * 60 + [0] * 18], 8, 0).astype(np.int32)
    batch = {"tokens": rng.integers(4, 64, size=(8, 128)).astype(np.int32), "segment_ids": seg}
    n, t, r = 16, 128, 32
    rollouts = {"tokens": rng.integers(4, 64, size=(n, t)).astype(np.int32),
                "prompt_lens": (20 + np.arange(n) * 3).astype(np.int32),
                "response_mask": (np.arange(r)[None] < 8 + np.arange(n)[:, None]).astype(np.int32),
                "advantages": rng.normal(size=n).astype(np.float32)}
    out = {}
    for impl in ("einsum", "splash"):
        cfg = model_config("micro", vocab_size=64, num_layers=1, attention=impl)
        tx = optax.sgd(0.1)
        graphdef, state = lm_step.init_state(cfg, tx, 0, mesh)
        sh = lm_step.shardings_of(state)
        step = lm_step.make_lm_step(graphdef, tx, lambda s: 0.1, mesh=mesh, state_shardings=sh, document_mask=True)
        s1, m = step(state, shd.make_global_batch(batch, mesh))
        _, state = lm_step.init_state(cfg, tx, 0, mesh)
        update = grpo.make_grpo_step(graphdef, tx, grpo.GRPOConfig(kl_coef=0.0), num_minibatches=2,
                                     micro_batch_size=4, mesh=mesh, state_shardings=sh)
        s2, g = update(state, shd.make_global_batch(rollouts, mesh))
        out[impl] = dict(loss=float(m["loss"]), grpo=float(g["loss"]), entropy=float(g["entropy"]),
                         params=[np.asarray(x).ravel().tolist() for x in jax.tree.leaves(s1["params"])[:4]])
    print(json.dumps(out))
""")


def test_splash_under_mesh_matches_einsum():
    """The train step (document masking) and the GRPO update on a 2 x 2 (data, fsdp) mesh: the kernel
    runs inside shard_map over the batch axes and agrees with the einsum path."""
    proc = subprocess.run([sys.executable, "-c", MESH_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    e, s = out["einsum"], out["splash"]
    assert abs(e["loss"] - s["loss"]) < 1e-5 and abs(e["grpo"] - s["grpo"]) < 1e-5, out
    assert abs(e["entropy"] - s["entropy"]) < 1e-4
    for a, b in zip(e["params"], s["params"]):
        np.testing.assert_allclose(a, b, atol=1e-6)
