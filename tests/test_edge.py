"""Edge-of-competence selection: thresholds, fallback, and an end-to-end probe with a scripted responder."""
from interplay_jax.rl.edge import choose, select_edge


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
