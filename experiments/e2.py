"""E2 (§4): context transfer. Pre-training on op2-20 context A plus op2-only context B at 0 / 0.1 / 1 /
10% exposure; RL on 50% A + 50% B. Finding: <= 0.1% B exposure gives no transfer; >= 1% transfers up to
op20, up to +60 points pass@128 on B."""
from interplay_jax.experiments import grid

SHARES = ("0", "0.1", "1", "10")
PUBLISHED = {"note": "pass@128 on context B rises by up to +60 points after RL when B exposure >= 1%"}


def runs(scale):
    out = [grid.tokenizer(scale)]
    for s in SHARES:
        out.append(grid.pretrain(f"pre_ctxB{s}", f"ctxB{s}", scale, note=f"op2-20 A + op2 B at {s}%"))
        out.append(grid.rl(f"rl_ctxB{s}_mixA50B50", f"pre_ctxB{s}", "ctxmixB50", scale,
                           note="GRPO on 50% A + 50% B"))
        out.append(grid.evaluate(f"eval_ctxB{s}", [f"pre_ctxB{s}", f"rl_ctxB{s}_mixA50B50"], scale,
                                 note="per-context pass@k", **{"eval.contexts": "A,B"}))
    return out
