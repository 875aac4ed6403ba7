"""E4 (§6): reward design on op11-14: outcome-only vs process-verified variants (mixed α = 0.5, 0.2,
strict). Finding: process rewards add about +4.6..+5.2 (op2-14) / +3.4..+4.3 (op15-20) pass@1."""
from interplay_jax.experiments import grid

REWARDS = ("outcome", "mixed0.5", "mixed0.2", "strict")
PUBLISHED = {"outcome": {"op2-14": {"1": 70.7, "128": 94.7}, "op15-20": {"1": 5.6, "128": 23.2}}}


def runs(scale):
    out = [grid.tokenizer(scale), grid.pretrain("base", "base", scale, note="pre-training op2-10")]
    for r in REWARDS:
        out.append(grid.rl(f"rl_op11-14_{r}", "base", "op11-14", scale, reward=r, note=f"GRPO, reward {r}"))
    out.append(grid.evaluate("eval", ["base"] + [f"rl_op11-14_{r}" for r in REWARDS], scale,
                             note="reward variants", buckets="op2-14:2-14,op15-20:15-20"))
    return out
