"""E3 (§5): mid-training vs RL at equal compute. A total budget T (token-equivalents, Eq. 1-2) is split
as mid-training (1−β)T then RL βT, β in {0, .2, .5, .8, 1}. Finding: light RL (β=0.2) gives the best
OOD-edge pass@1, heavy RL (β=0.8) the best OOD-hard; mid+RL beats RL alone by +10.8 on OOD-hard."""
import pathlib

from interplay_jax.compute import ComputeSettings, split_budget
from interplay_jax.experiments import dag, grid

BETAS = (0.0, 0.2, 0.5, 0.8, 1.0)
PUBLISHED = {"note": "mid+RL beats RL alone by +10.8 points pass@1 on OOD-hard at equal compute"}


def settings(scale):
    """(compute settings, total budget T): the paper's, or those of this scale's run configs."""
    if scale == "paper":
        return ComputeSettings(), 100 * ComputeSettings().rl_step_tokens          # 2.10B
    where = pathlib.Path("runs")
    pre = dag.load_config(grid.pretrain("base", "base", scale), where)
    rl = dag.load_config(grid.rl("rl", "base", "op11-14", scale), where).rl
    s = ComputeSettings(mid_batch_size=pre.batch_size, mid_seq_len=pre.seq_len, rl_prompts=rl.num_prompts,
                        rl_rollouts=rl.n, rl_total_len=rl.max_prompt_len + rl.max_response_len)
    return s, 40 * s.rl_step_tokens


def runs(scale):
    s, total = settings(scale)
    out = [grid.tokenizer(scale), grid.pretrain("base", "base", scale, note="pre-training op2-10")]
    names = ["base"]
    for beta in BETAS:
        split = split_budget(total, beta, s)
        tag = f"beta{beta:g}"
        parent = "base"
        if split["mid_steps"] > 0:
            out.append(grid.midtrain(f"mid_{tag}", "base", scale, steps=split["mid_steps"],
                                     note=f"mid-training {split['mid_steps']} steps ((1-β)T)"))
            parent = f"mid_{tag}"
        if split["rl_steps"] > 0:
            out.append(grid.rl(f"rl_{tag}", parent, "op11-14", scale, steps=split["rl_steps"],
                               note=f"GRPO {split['rl_steps']} steps (βT)"))
            parent = f"rl_{tag}"
        names.append(parent)
    out.append(grid.evaluate("eval", names, scale, note="equal-compute comparison across β"))
    return out
