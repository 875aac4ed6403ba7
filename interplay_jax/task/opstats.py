"""Structure statistics of generated problems per op (what makes one op harder than another).

``op_statistics(ops, n)`` generates ``n`` forward problems per op (contexts A/B/C round-robin, seeds
from their own range) and averages :func:`problem_stats` over them. Used by the evaluation report
(op2 vs op3) and ``benchmarks/op_stats.py``. Pure Python.
"""
from __future__ import annotations

import statistics
from typing import Iterable

from interplay_jax.task.contexts import get_context
from interplay_jax.task.generator import FORWARD, build_problem

SEED0 = 10_000_000     # seeds of the statistics problems (any range gives the same distribution)


def problem_stats(prob) -> dict:
    """Per problem: total question, sentences, distractor / constant-only sentences, solution steps,
    whether the first step is an item of the asked entity, distractors citing the asked node,
    distractors about an item the solution also uses (another entity), the answer."""
    nodes, order = prob.nodes, prob.order
    target = nodes[prob.target]
    needed_inst = [n for n in order if not nodes[n].total]
    distractors = [i for i, nd in enumerate(nodes) if not nd.total and not nd.needed and (nd.parents or nd.rng)]
    needed_items = {nodes[n].name.split(" in ")[0] for n in needed_inst}
    citing = [d for d in distractors if prob.target in nodes[d].parents]
    first = nodes[order[0]]
    return {
        "total_question": bool(target.total),
        "sentences": len(needed_inst) + len(distractors),
        "distractors": len(distractors),
        "distractor_share": len(distractors) / max(len(needed_inst) + len(distractors), 1),
        "constant_sentences": sum(1 for i in needed_inst + distractors if not nodes[i].parents),
        "steps": len(order),
        "first_step_in_asked_entity": (not first.total and first.entity == target.entity),
        "distractors_citing_asked": len(citing),
        "any_distractor_cites_asked": bool(citing),
        "same_item_distractors": sum(1 for d in distractors if nodes[d].name.split(" in ")[0] in needed_items),
        "answer": int(prob.answer),
        "answer_in_1_4": 1 <= int(prob.answer) <= 4,
        "all_values_equal_answer": all(nodes[n].value == prob.answer for n in order),
    }


def op_statistics(ops: Iterable[int], n: int = 600) -> dict:
    """``{op: {stat: mean over n problems}}`` (booleans become shares)."""
    contexts = [get_context(c).name for c in ("A", "B", "C")]
    out = {}
    for op in ops:
        rows = [problem_stats(build_problem(int(op), contexts[i % 3], FORWARD, seed=SEED0 + i)) for i in range(n)]
        out[int(op)] = {k: statistics.fmean(float(r[k]) for r in rows) for k in rows[0]}
    return out
