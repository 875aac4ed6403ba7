"""E5/E6 (App. A.6): the share of context B in RL prompts (0 / 1 / 2 / 10 / 50 / 100%) after
pre-training with 1% B exposure. Finding: about 10% B in RL already gives +76 pass@128 on B."""
from interplay_jax.experiments import grid

SHARES = ("0", "1", "2", "10", "50", "100")
PUBLISHED = {"note": "~10% context B in RL gives +76 points pass@128 on context B"}


def runs(scale):
    out = [grid.tokenizer(scale), grid.pretrain("pre_ctxB1", "ctxB1", scale, note="op2-20 A + op2 B at 1%")]
    for s in SHARES:
        out.append(grid.rl(f"rl_B{s}", "pre_ctxB1", f"ctxmixB{s}", scale, note=f"GRPO with {s}% context B"))
    out.append(grid.evaluate("eval", ["pre_ctxB1"] + [f"rl_B{s}" for s in SHARES], scale,
                             note="per-context pass@k", **{"eval.contexts": "A,B"}))
    return out
