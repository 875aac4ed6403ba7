"""E1 (§3): where should RL data sit? Base pre-trained on op2-10 (20/30/50), then GRPO on op7-10 /
op9-12 / op11-14 / op17-20; all evaluated on op2-20. Finding: ID pass@1 rises, pass@128 never beats
the base on ID; RL at the edge of competence (op11-14) lifts OOD pass@128 by up to +42 points.

Scale ``cpu_shifted`` (a deviation, BUILD_NOTES "E1 one size down"): the study's design on this 2-core
CPU, every op range shifted down to what a 1M model learns in 30 minutes: the base pre-trained on
op2-5 (20/30/50 over op2-3 / op4 / op5), RL on op4-5 / op5-6 / op6-7 / op8-9 (the places of op7-10 /
op9-12 / op11-14 / op17-20), evaluated on op2-9: ID op2-5, OOD-edge op6-7, OOD-hard op8-9.

Scale ``cpu_exposed`` (a deviation, BUILD_NOTES "E1 with a seen edge"): ``cpu_shifted``'s 1M base never
solved op6-7 (0 of 1,024 samples), so it had no edge. Here the base sees op6-7 at a 5% share (E7's
smallest-but-one hard share, E2's ">= 1% exposure"), so the edge bucket ``edge`` (op6-7) is seen but rare,
not out of distribution; only the two core runs (op4-5, op6-7), with responses up to 320 tokens.

Scale ``cpu_exposed20`` (BUILD_NOTES "E1 with the edge seen at 20%"): 5% gave op6-7 one solved sample in 1,024, so
here the base sees op6-7 at a 20% share (E7's 20% point), with only the edge run (op6-7) (the ID claim was
tested at both other scales) and beside it the edge run with the process-verified reward (``strict``, E4's
variant), because at both other scales the outcome reward taught right answers over wrong work."""
import json
from typing import NamedTuple

from interplay_jax.experiments import dag, grid

REGIMES = ("op7-10", "op9-12", "op11-14", "op17-20")
EDGE_PROBE = {  # per-op probe of the edge preset (configs/rl.py data.edge)
    "cpu": {"data.edge.per_op": 2, "data.edge.n": 4, "data.edge.max_new_tokens": 160, "data.edge.ops": "2-14"},
    "mini": {"data.edge.per_op": 8, "data.edge.n": 16, "data.edge.max_new_tokens": 768},
}


# The claims the report checks (fixed before any run): (text, run, bucket, k or "n" = the largest k,
# expect: "up" = the paired 95% interval of the delta lies above 0 / "not_up" = it does not, core:
# part of the overall verdict). The study's edge is op11-14 by its definition, so rl_op11-14 carries
# the core claim; the probed edge run is reported beside it.
def _claims(id_regime: str | None, edge_regime: str, edge: str = "OOD-edge", probe: bool = True) -> tuple:
    """``id_regime=None``: no ID run, so no ID claims."""
    return tuple(c for c in (
        (f"RL at the edge ({edge_regime}) lifts {edge} pass@n above the base", f"rl_{edge_regime}", edge,
         "n", "up", True),
        (f"RL on in-distribution ops ({id_regime}) does not lift ID pass@n above the base", f"rl_{id_regime}", "ID",
         "n", "not_up", True),
        (f"RL at the probed edge lifts {edge} pass@n above the base", "rl_edge", edge, "n", "up", False),
        (f"RL at the edge ({edge_regime}) raises {edge} pass@1", f"rl_{edge_regime}", edge, 1, "up", False),
        (f"RL on {id_regime} raises ID pass@1", f"rl_{id_regime}", "ID", 1, "up", False),
    ) if (probe or c[1] != "rl_edge") and (id_regime is not None or c[2] != "ID"))


FINDINGS = _claims("op7-10", "op11-14")
SCALES = dag.SCALES + ("cpu_shifted", "cpu_exposed", "cpu_exposed20")
# cpu_shifted: regime -> its ops, and the study regime whose place it takes
SHIFTED_REGIMES = {"op4-5": ((4, 5), "op7-10"), "op5-6": ((5, 6), "op9-12"), "op6-7": ((6, 7), "op11-14"),
                   "op8-9": ((8, 9), "op17-20")}
SHIFTED_BUCKETS = "ID:2-5,OOD-edge:6-7,OOD-hard:8-9"
# the base: the sweep's best CPU recipe (benchmarks/results/sweep_cpu) run for 30 minutes
# (benchmarks/results/cpu_curve/commands.sh: the same fields)
SHIFTED_BASE = {"mixture": '[{"ops": [2, 3], "weight": 0.2}, {"ops": [4], "weight": 0.3}, {"ops": [5], "weight": 0.5}]',
                "seq_len": 512, "batch_size": 16, "document_mask": True, "optimizer.lr": 2e-3,
                "optimizer.min_lr": 2e-4, "optimizer.b2": 0.98, "total_steps": 4800, "ckpt_every": 1200,
                "keep_checkpoints": 5, "eval_every": 0, "eval.buckets": "ID:2-5,OOD-edge:6-7"}
# every RL run: 60 steps of 16 prompts x 8 rollouts (7,680 rollouts); lr 1e-5 = the study's RL / pre-training
# lr ratio (1e-6 / 2e-4) times the base's 2e-3 (the configs' cpu preset)
SHIFTED_RL = {"rl.num_prompts": 16, "rl.n": 8, "rl.max_response_len": 256, "rl.total_steps": 60, "ckpt_every": 10,
              "optimizer.lr": 1e-5}
SHIFTED_EDGE = {"data.edge.ops": "2-9", "data.edge.per_op": 8, "data.edge.n": 16, "data.edge.max_new_tokens": 256}
SHIFTED_EVAL = {"eval.ops": "2-9", "eval.per_op": 32, "sampling.n": 16, "sampling.max_new_tokens": 320,
                "sampling.batch_prompts": 32, "buckets": SHIFTED_BUCKETS}
SHIFTED_FINDINGS = _claims("op4-5", "op6-7")   # the same claims, at the shifted places


def _exposed_base(share: float) -> dict:
    """cpu_shifted's base with ``share`` of its data moved from op5 to op6-7."""
    mixture = [{"ops": [2, 3], "weight": 0.2}, {"ops": [4], "weight": 0.3}, {"ops": [5], "weight": round(0.5 - share, 4)},
               {"ops": [6, 7], "weight": share}]
    return {**SHIFTED_BASE, "eval.buckets": "ID:2-5,edge:6-7", "mixture": json.dumps(mixture)}


# cpu_exposed: cpu_shifted's base with 5% of its data moved from op5 to op6-7; RL responses up to 320 tokens
# (the longest op7 gold completion is 310 tokens with this tokenizer; at 256, 42% of them would be cut)
EXPOSED_BASE = _exposed_base(0.05)
EXPOSED_REGIMES = {r: SHIFTED_REGIMES[r] for r in ("op4-5", "op6-7")}
EXPOSED_RL = {**SHIFTED_RL, "rl.max_response_len": 320}
EXPOSED_EVAL = {**SHIFTED_EVAL, "buckets": "ID:2-5,edge:6-7,OOD-hard:8-9"}
EXPOSED_FINDINGS = _claims("op4-5", "op6-7", edge="edge", probe=False)
# cpu_exposed20: 20% on op6-7, the edge run only, with the outcome and the strict reward (claims fixed before
# the run, like the others; the strict arm's are reported, not core: E4's comparison at E1's edge)
EXPOSED20_BASE = _exposed_base(0.20)
EXPOSED20_REGIMES = {"op6-7": SHIFTED_REGIMES["op6-7"]}
EXPOSED20_FINDINGS = _claims(None, "op6-7", edge="edge", probe=False) + (
    ("RL at the edge with the strict (process-verified) reward lifts edge pass@n above the base",
     "rl_op6-7_strict", "edge", "n", "up", False),
    ("The strict reward beats the outcome reward on edge pass@1 (E4)", "rl_op6-7_strict", "edge", 1, "up", False,
     "rl_op6-7"),
)
PUBLISHED = {  # strict pass@k on the released checkpoints (docs/experiments.md)
    "base": {"OOD-edge": {"1": 18.2, "128": 41.1}, "ID": {"1": 83.1}},
    "rl_op11-14": {"OOD-edge": {"1": 50.6, "128": 84.0}, "ID": {"1": 82.6}},
}


def findings(scale):
    return {"cpu_shifted": SHIFTED_FINDINGS, "cpu_exposed": EXPOSED_FINDINGS,
            "cpu_exposed20": EXPOSED20_FINDINGS}.get(scale, FINDINGS)


class CpuScale(NamedTuple):
    base: dict            # the base's pre-training overrides
    regimes: dict         # RL regime -> (its ops, the study regime whose place it takes)
    rl: dict              # every RL run's overrides
    evaluation: dict      # the evaluation's overrides
    probe: bool           # also the probed edge run (rl_edge)?
    base_note: str
    edge_rewards: tuple = ()   # more rewards for the edge regime (op6-7): runs rl_op6-7_<reward>


CPU_SCALES = {
    "cpu_shifted": CpuScale(SHIFTED_BASE, SHIFTED_REGIMES, SHIFTED_RL, SHIFTED_EVAL, True, "op2-5 (20/30/50), 30 min"),
    "cpu_exposed": CpuScale(EXPOSED_BASE, EXPOSED_REGIMES, EXPOSED_RL, EXPOSED_EVAL, False,
                            "op2-5 (20/30/45) + op6-7 (5%), 40 min"),
    "cpu_exposed20": CpuScale(EXPOSED20_BASE, EXPOSED20_REGIMES, EXPOSED_RL, EXPOSED_EVAL, False,
                              "op2-5 (20/30/30) + op6-7 (20%), 40 min", edge_rewards=("strict",)),
}


def shifted_runs(scale="cpu_shifted"):
    s = CPU_SCALES[scale]
    tok = grid.Run(grid.TOKENIZER, "tokenizer.py", "", {"num_docs": 20_000},
                   note="byte-level BPE on 20,000 generated documents (= the default tokenizer)")
    out = [tok, grid.Run("base", "pretrain.py", "base,cpu", dict(s.base), refs=dict(grid.TOK_REF),
                         note=f"pre-training {s.base_note}")]
    names = ["base"]
    for regime, (ops, study) in s.regimes.items():
        out.append(grid.rl(f"rl_{regime}", "base", "uniform", "cpu", note=f"GRPO on {regime} (the study's {study})",
                           **{**s.rl, "data.ops": ops}))
        names.append(f"rl_{regime}")
    for reward in s.edge_rewards:
        ops, study = s.regimes["op6-7"]
        out.append(grid.rl(f"rl_op6-7_{reward}", "base", "uniform", "cpu", reward=reward,
                           note=f"GRPO on op6-7 (the study's {study}), reward {reward}", **{**s.rl, "data.ops": ops}))
        names.append(f"rl_op6-7_{reward}")
    if s.probe:
        out.append(grid.rl("rl_edge", "base", "edge", "cpu", note="GRPO on the base's edge of competence (probed)",
                           **s.rl, **SHIFTED_EDGE))
        names.append("rl_edge")
    out.append(grid.evaluate("eval", names, "cpu", note="pass@k, base vs each RL regime", **s.evaluation))
    return out


def runs(scale):
    if scale in CPU_SCALES:
        return shifted_runs(scale)
    out = [grid.tokenizer(scale), grid.pretrain("base", "base", scale, note="pre-training op2-10 (20/30/50)")]
    for regime in REGIMES:
        out.append(grid.rl(f"rl_{regime}", "base", regime, scale, note=f"GRPO on {regime}"))
    # the study's advice made operational: at small scale the edge is not op11-14, so probe for it
    out.append(grid.rl("rl_edge", "base", "edge", scale, note="GRPO on the base's edge of competence (probed)",
                       **EDGE_PROBE.get(scale, {})))
    out.append(grid.evaluate("eval", ["base"] + [f"rl_{r}" for r in REGIMES] + ["rl_edge"], scale,
                             note="pass@k, base vs each RL regime"))
    return out
