"""E7 (App. A.7): pre-training difficulty. Pre-training with hard (op8-10) shares 0.1 / 5 / 20 / 33.3 /
50%, then GRPO on op11-14; pass@128 gain of RL over its base on op11-14 / op15-20."""
from interplay_jax.experiments import grid

MIXES = ("hard0.1", "hard5", "hard20", "hard33", "hard50")
PUBLISHED = {  # pass@128 gain of RL (op11-14) over base: (op11-14, op15-20)
    "hard0.1": (29.0, 5.9), "hard5": (29.2, 10.4), "hard20": (16.6, 22.1),
    "hard33": (45.3, 18.0), "hard50": (42.0, 25.8),
}


# The claims the report checks (fixed before any run; see experiments/e1.py): RL on op11-14 lifts
# op11-14 pass@n over its own base at every hard share (core), and op15-20 pass@n (reported).
FINDINGS = tuple(
    (f"RL (op11-14) lifts op11-14 pass@n over its base ({m})", f"rl_{m}", "op11-14", "n", "up", True, f"pre_{m}")
    for m in MIXES) + tuple(
    (f"RL (op11-14) lifts op15-20 pass@n over its base ({m})", f"rl_{m}", "op15-20", "n", "up", False, f"pre_{m}")
    for m in MIXES)


def runs(scale):
    out = [grid.tokenizer(scale)]
    for m in MIXES:
        out.append(grid.pretrain(f"pre_{m}", m, scale, note=f"pre-training, {m} share of op8-10"))
        out.append(grid.rl(f"rl_{m}", f"pre_{m}", "op11-14", scale, note="GRPO on op11-14"))
        out.append(grid.evaluate(f"eval_{m}", [f"pre_{m}", f"rl_{m}"], scale, note="gain of RL over base",
                                 buckets="op11-14:11-14,op15-20:15-20"))
    return out
