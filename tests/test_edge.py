"""Edge-of-competence selection: thresholds, fallback, and an end-to-end probe with a scripted responder."""
from conftest import load_config

from interplay_jax.stages.edge import choose, select_edge


def test_choose_thresholds_and_fallback():
    table = {5: {"pass@1": 0.9, "pass@k": 1.0}, 9: {"pass@1": 0.3, "pass@k": 0.8},
             11: {"pass@1": 0.1, "pass@k": 0.5}, 17: {"pass@1": 0.0, "pass@k": 0.0}}
    assert choose(table, pass1_max=0.5, passk_min=0.1) == ([9, 11], "threshold")
    ops, how = choose(table, pass1_max=0.05, passk_min=0.9, fallback_ops=2)
    assert ops == [9, 11] and how.startswith("fallback")


def test_select_edge_probes_and_keeps_edge_prompts():
    # scripted model: always right below op 6, right on 1 of 4 samples at op 8-9, never at op 12
    def responder(item, n):
        op, gold = item["op"], item["record"]["solution"]
        right = n if op < 6 else (1 if op < 10 else 0)
        return [gold] * right + ["Answer: -1."] * (n - right)

    out = select_edge(None, None, None, ops=[4, 8, 9, 12], per_op=3, n=4, pass1_max=0.5, passk_min=0.5,
                      keep_prompts=True, responder=responder, progress=False)
    assert out["ops"] == [8, 9] and out["how"] == "threshold"
    assert out["per_op"]["4"]["pass@1"] == 1.0 and out["per_op"]["12"]["pass@k"] == 0.0
    assert out["per_op"]["8"]["pass@1"] == 0.25 and out["per_op"]["8"]["pass@k"] == 1.0
    assert len(out["prompts"]) == 6 and {r["op"] for r in out["prompts"]} == {8, 9}


def test_rl_stage_with_edge_data_probes_once_and_records_the_choice(tmp_path):
    import json

    import jax.numpy as jnp
    import optax
    from flax import nnx

    from interplay_jax import checkpoint as ck
    from interplay_jax.main import run_config
    from interplay_jax.model.qwen2 import Qwen2, model_config_from_dict
    from interplay_jax.task.mixture import get_mixture
    from interplay_jax.task.tokenizer import train_on_records

    mix = get_mixture({"ops": [2, 3], "contexts": ["A"]})
    tok_path = train_on_records([mix.record(1, i) for i in range(150)], vocab_size=400).save(str(tmp_path / "tok.json"))
    model = dict(preset="micro", vocab_size=400, num_layers=1, max_position_embeddings=1024)
    params = nnx.split(Qwen2(model_config_from_dict(model), rngs=nnx.Rngs(params=0)), nnx.Param)[1]
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optax.adamw(1e-3).init(params)}
    parent = tmp_path / "pretrain"
    with ck.Checkpointer(parent) as c:
        c.save(3, state, meta={"stage": "pretrain"})
    ck.write_lineage(parent, "pretrain", {"model": model, "tokenizer": tok_path}, None)

    c = load_config("rl.py:edge,quick")
    c.workdir, c.tokenizer, c.init_from, c.progress = str(tmp_path / "rl"), tok_path, str(parent), False
    c.data.edge.update(dict(ops="2-4", per_op=1, n=2, max_new_tokens=8, batch_prompts=4))
    c.rl.update(dict(num_prompts=2, n=2, max_response_len=8, total_steps=1, num_minibatches=1, prompt_buckets="512"))
    run_config(c)
    edge = json.loads((tmp_path / "rl" / "edge.json").read_text())
    assert set(edge["per_op"]) == {"2", "3", "4"} and edge["ops"] and set(edge["ops"]) <= {2, 3, 4}
    lineage = ck.read_lineage(tmp_path / "rl")
    assert lineage["edge"]["ops"] == edge["ops"]
    samples = [json.loads(l) for l in (tmp_path / "rl" / "samples.jsonl").read_text().splitlines()]
    assert samples  # trained on prompts of the chosen ops
    # a second run in the same workdir reads the stored choice instead of probing again
    (tmp_path / "rl" / "edge.json").write_text(json.dumps(dict(edge, how="stored")))
    c.rl.total_steps = 2
    run_config(c)
    assert json.loads((tmp_path / "rl" / "edge.json").read_text())["how"] == "stored"
    # evaluation loads the RL run with the model it inherited from its parent (not the RL config's)
    from interplay_jax.sampling.policy import load_policy
    loaded = load_policy(tmp_path / "rl", tokenizer=tok_path)
    assert (loaded.cfg.num_layers, loaded.cfg.vocab_size, loaded.step) == (1, 400, 2)
