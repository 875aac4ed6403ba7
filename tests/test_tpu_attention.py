"""TPU flash attention (interplay_jax/model/tpu_attention.py).

* On CPU: the splash kernel in Pallas interpret mode gives the einsum path's logits and gradients
  (plain causal, segment ids, a length that is not a multiple of 128, GQA, head dims 8 and 72), also
  under a data x fsdp mesh (its shard_map; a subprocess with 4 CPU devices); the TPU RoPE equals the
  model's.
* With libtpu (XLA's TPU compiler, no TPU needed; skipped without it): the tiny model's train step
  (plain causal and document masking) and GRPO update compile for a virtual v5e:2x2 slice with "auto"
  attention and the compiled programs launch the splash kernels (forward, dq, dkv); the einsum path
  launches none; the cost-model helper of benchmarks/virtual_tpu.py counts a scan's body per trip.
"""
import importlib.util
import json
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from interplay_jax.model import forward, init_model, model_config, qwen2, tpu_attention

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_persistent_cache():
    """Compile here without the persistent cache: an in-process stage test may have turned it on, and
    an entry it holds cannot be loaded for a virtual TPU ("PjRtCompiler must be constructed with a
    Client"; JAX warns and compiles anyway). JAX decides once per process whether the cache is used,
    so the decision is reset on the way in and out."""
    from jax._src import compilation_cache as cc

    old = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    cc.reset_cache()
    yield
    jax.config.update("jax_enable_compilation_cache", old)
    cc.reset_cache()


def _virtual_tpu():
    """benchmarks/virtual_tpu.py, or skip (with the reason) where libtpu cannot be imported."""
    vt = sys.modules.get("virtual_tpu")
    if vt is None:
        spec = importlib.util.spec_from_file_location("virtual_tpu", REPO / "benchmarks" / "virtual_tpu.py")
        vt = importlib.util.module_from_spec(spec)
        sys.modules["virtual_tpu"] = vt
        spec.loader.exec_module(vt)
    missing = vt.libtpu_missing()
    if missing:
        pytest.skip(missing)
    return vt


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


# ------------------------------------------------------------------------------------------ TPU compiler


def _train_step(vt, attention: str, document_mask: bool):
    from interplay_jax import checkpoint as ck
    from interplay_jax.train import lm_step
    from interplay_jax.train import sharding as shd

    mesh = vt.mesh("v5e:2x2", data=-1)
    cfg = model_config("tiny", dtype="bfloat16", attention=attention)
    tx = optax.adamw(1e-3)
    graphdef, abstract = lm_step.abstract_state(cfg, tx)
    shardings = shd.state_shardings(abstract, mesh)
    bsh = shd.batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct((8, 256), jnp.int32, sharding=bsh) for k in ("tokens", "segment_ids", "positions")}
    step = lm_step.make_lm_step(graphdef, tx, lambda s: 1e-3, mesh=mesh, state_shardings=shardings,
                                grad_accum_steps=2, document_mask=document_mask)
    with vt.as_tpu_host():
        return step.lower(ck.abstract_target(abstract, shardings), batch).compile()


@pytest.mark.parametrize("document_mask", [False, True])
def test_tiny_train_step_compiles_with_flash_attention_for_v5e(document_mask):
    vt = _virtual_tpu()
    compiled = _train_step(vt, "auto", document_mask)
    calls = vt.flash_kernel_calls(compiled)
    layers = model_config("tiny").num_layers
    # forward (with residuals for the backward), dq and dkv kernels, one launch site per layer
    assert {k.split("_")[2]: v for k, v in calls.items()} == {"fwd": layers, "dq": layers, "dkv": layers}, calls
    mem = vt.memory(compiled)
    assert 0 < mem["total"] < 1.0                               # GiB per chip: a 1M-parameter model


def test_einsum_on_tpu_has_no_flash_kernel():
    vt = _virtual_tpu()
    assert vt.flash_kernel_calls(_train_step(vt, "einsum", False)) == {}


def test_tiny_grpo_update_compiles_with_flash_attention_for_v5e():
    vt = _virtual_tpu()
    from interplay_jax import checkpoint as ck
    from interplay_jax.rl import grpo, memory
    from interplay_jax.train import lm_step
    from interplay_jax.train import sharding as shd

    mesh = vt.mesh("v5e:2x2", data=-1)
    cfg = model_config("tiny", dtype="bfloat16")
    tx = optax.adamw(1e-6)
    graphdef, abstract = lm_step.abstract_state(cfg, tx)
    shardings = shd.state_shardings(abstract, mesh)
    bsh = shd.batch_sharding(mesh)
    step = grpo.make_grpo_step(graphdef, tx, grpo.GRPOConfig(), num_minibatches=2, micro_batch_size=8, mesh=mesh,
                               state_shardings=shardings, batch_sharding=bsh)
    rollouts = memory.update_inputs(32, 384, 128, kl=True, sampler_old=False, sharding=bsh)
    with vt.as_tpu_host():
        compiled = step.lower(ck.abstract_target(abstract, shardings), rollouts).compile()
    calls = vt.flash_kernel_calls(compiled)
    layers = cfg.num_layers
    # the old log-probs' forward (no residuals) and each micro-batch's forward + backward
    assert calls.get("splash_mha_fwd_no_residuals") == layers, calls
    assert calls.get("splash_mha_fwd_residuals") == layers and calls.get("splash_mha_dkv_no_residuals") == layers


def test_cost_model_counts_loop_trips():
    vt = _virtual_tpu()
    from jax.sharding import SingleDeviceSharding

    device = SingleDeviceSharding(vt.topology("v5e:2x2").devices[0])
    x = jax.ShapeDtypeStruct((1024, 1024), jnp.bfloat16, sharding=device)

    def body(c, _):
        return jnp.tanh(c @ c), None

    once = vt.cost(jax.jit(lambda a: body(a, None)[0]).lower(x).compile())
    looped = vt.cost(jax.jit(lambda a: jax.lax.scan(body, a, None, length=8)[0]).lower(x).compile())
    assert once["seconds"] > 0 and looped["seconds"] > 0       # no -1 s sentinel left
    assert once["loop_factor"] == 1.0 and 7.0 < looped["loop_factor"] < 9.0, (once, looped)
    assert looped["seconds"] > 6.0 * once["seconds"]          # 8 trips, not one
