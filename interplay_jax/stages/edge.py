"""Edge-of-competence RL data selection for the RL stage (the study's advice; the original release has
no such code). It sits above rl/ and eval/: it probes a checkpoint with the evaluation engine and hands
the RL stage its prompt choice.

RL helps most on problems the model fails at pass@1 but solves at pass@k. ``select_edge`` probes a
checkpoint on a small per-op set (its own seed namespace, disjoint by hash from the eval set it is
given), computes strict (VerifiedCorrect) pass@1 and pass@k per op, and keeps the ops with
``pass@1 <= pass1_max`` and ``pass@k >= passk_min``; optionally also the individual probe prompts
that sit at the edge. When no op qualifies it falls back to the ``fallback_ops`` ops with the largest
pass@k − pass@1 gap and says so. The choice is a plain dict the RL stage stores in its run directory
(``edge.json``) and lineage, so the run is reproducible and resumes with the same choice.
"""
from __future__ import annotations

import json
import pathlib
from typing import Sequence

import jax

from interplay_jax.config import parse_list, parse_ops
from interplay_jax.eval import passk
from interplay_jax.eval.evalset import generate_evalset
from interplay_jax.eval.evaluate import evaluate_items
from interplay_jax.sampling.policy import load_policy
from interplay_jax.sampling.sampler import Sampler
from interplay_jax.task.writer import hashes_of_paths

PROBE_SEED_OFFSET = 1_000_003  # probe problems come from a seed stream of their own


def choose(per_op: dict, *, pass1_max: float, passk_min: float, fallback_ops: int = 4) -> tuple[list[int], str]:
    """(ops at the edge, how they were chosen) from ``{op: {"pass@1": p1, "pass@k": pk}}``."""
    edge = sorted(op for op, m in per_op.items() if m["pass@1"] <= pass1_max and m["pass@k"] >= passk_min)
    if edge:
        return edge, "threshold"
    gap = sorted(per_op, key=lambda op: (-(per_op[op]["pass@k"] - per_op[op]["pass@1"]), op))
    return sorted(gap[:fallback_ops]), "fallback: largest pass@k - pass@1 gap"


def select_edge(sampler, params, tokenizer, *, ops: Sequence[int], per_op: int = 16, n: int = 16,
                pass1_max: float = 0.5, passk_min: float = 0.1, keep_prompts: bool = False,
                contexts: Sequence[str] = ("A", "B", "C"), seed: int = 0, exclude_hashes=(),
                max_new_tokens: int = 1024, max_prompt_len: int = 1024, temperature: float = 1.0,
                batch_prompts: int = 8, key=None, responder=None, progress: bool = True) -> dict:
    """Probe the checkpoint and return the edge choice (see the module docstring)."""
    items = generate_evalset(ops=ops, contexts=contexts, per_op=per_op, seed=seed + PROBE_SEED_OFFSET,
                             exclude_hashes=exclude_hashes)
    results = evaluate_items(sampler, params, tokenizer, items, n=n, max_new_tokens=max_new_tokens,
                             temperature=temperature, batch_prompts=batch_prompts, max_prompt_len=max_prompt_len,
                             key=key, responder=responder, progress=progress)
    k = n
    table = {}
    for op in sorted({int(o) for o in ops}):
        rs = [r for r in results if r["op"] == op and r["samples"]]
        if not rs:
            continue
        p1 = sum(passk.pass_at_k(len(r["samples"]), sum(s["verified_correct"] for s in r["samples"]), 1)
                 for r in rs) / len(rs)
        pk = sum(passk.pass_at_k(len(r["samples"]), sum(s["verified_correct"] for s in r["samples"]), k)
                 for r in rs) / len(rs)
        table[op] = {"pass@1": p1, "pass@k": pk, "n_prompts": len(rs)}
    chosen, how = choose(table, pass1_max=pass1_max, passk_min=passk_min)
    out = {"ops": chosen, "how": how, "k": k, "pass1_max": pass1_max, "passk_min": passk_min,
           "per_op": {str(op): m for op, m in table.items()}, "probe_per_op": per_op}
    if keep_prompts:
        recs = []
        for r, it in zip(results, items):
            c = sum(s["verified_correct"] for s in r["samples"])
            m = len(r["samples"])
            if m and c > 0 and c / m <= pass1_max:
                recs.append(it["record"])
        out["prompts"] = recs
    return out


EDGE_FILE = "edge.json"


def resolve_edge(config, workdir) -> dict | None:
    """The RL stage's edge choice for ``data.mixture == "edge"`` (else None).

    Probes the parent checkpoint (``init_from``) once and stores the choice in ``WORKDIR/edge.json``;
    a resumed run reads that file back, so it trains on the same ops / prompts.
    """
    if str(config.data.mixture) != "edge":
        return None
    path = pathlib.Path(workdir) / EDGE_FILE
    if path.is_file():
        return json.loads(path.read_text())
    e = config.data.edge
    parent = load_policy(str(config.init_from), tokenizer=str(config.tokenizer) or None, name="parent",
                         step=int(config.init_step) if int(config.init_step) >= 0 else None)
    sampler = Sampler(parent.graphdef, parent.cfg, pad_id=parent.tokenizer.pad_id)
    choice = select_edge(sampler, parent.params, parent.tokenizer, ops=parse_ops(str(e.ops)),
                         per_op=int(e.per_op), n=int(e.n), pass1_max=float(e.pass1_max),
                         passk_min=float(e.passk_min), keep_prompts=bool(e.keep_prompts), seed=int(config.seed),
                         exclude_hashes=hashes_of_paths(parse_list(config.data.get("exclude", ""))),
                         max_new_tokens=int(e.max_new_tokens),
                         max_prompt_len=int(config.rl.max_prompt_len), temperature=float(config.rl.temperature),
                         batch_prompts=int(e.batch_prompts), key=jax.random.key(int(config.seed) + 17),
                         progress=bool(config.get("progress", True)))
    choice["parent"] = {"path": str(config.init_from), "step": parent.step}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(EDGE_FILE + ".tmp")
    tmp.write_text(json.dumps(choice, indent=1))
    tmp.replace(path)
    table = ", ".join(f"op{op} {m['pass@1']:.2f}/{m['pass@k']:.2f}" for op, m in choice["per_op"].items())
    print(f"rl: edge of competence ({choice['how']}): ops {choice['ops']}  [pass@1/pass@{choice['k']}: {table}]")
    return choice
