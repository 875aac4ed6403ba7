"""Per-op error analysis of sampled solutions (what goes wrong, op by op), and example responses.

Each scored sample (``interplay_jax.eval.evaluate.score_sample``) carries the verifier's counts over
the gold nodes. A sample gets ONE primary outcome, the first that applies in this order:

- ``correct``: VerifiedCorrect;
- ``format``: no parsable answer (no ``<answer>`` / "Answer:") or no parsable ``Define`` step;
- ``missing_node``: a gold node is absent;
- ``dependency``: a gold node has the wrong parent set;
- ``value``: a gold node has the wrong value;
- ``answer``: every gold node is right but the final answer is wrong;

so the shares of one op sum to 1. Beside them, non-exclusive shares: any dependency / missing /
value / answer mismatch, ``extra_nodes`` (steps the gold does not have), ``process_ok_answer_wrong``,
``answer_ok_process_wrong``, ``not_stopped`` (hit the token limit), ``redefined`` (a step defines a
name that an earlier step already defined: the response went back over a node), the mean number of
steps written minus gold steps, and the mean generated length. Samples scored before ``answer_parsed``
/ ``n_pred`` were stored have no ``format`` information (counted by their other errors); before
``redefined_nodes`` was stored, ``redefined`` is None. Pure Python + numpy.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np

PRIMARY = ("correct", "format", "missing_node", "dependency", "value", "answer")
FLAGS = ("format", "missing_node", "dependency_mismatch", "value_mismatch", "answer_mismatch", "extra_nodes",
         "process_ok_answer_wrong", "answer_ok_process_wrong", "not_stopped")


def is_format_error(s: Mapping) -> bool | None:
    """No parsable answer or no parsable step (None when the sample predates these fields)."""
    if "answer_parsed" not in s and "n_pred" not in s:
        return None
    return (not s.get("answer_parsed", True)) or int(s.get("n_pred", 1)) == 0


def primary(s: Mapping) -> str:
    if s.get("verified_correct"):
        return "correct"
    if is_format_error(s):
        return "format"
    if s.get("missing_node", 0) > 0:
        return "missing_node"
    if s.get("dependency_mismatch", 0) > 0:
        return "dependency"
    if s.get("value_mismatch", 0) > 0:
        return "value"
    return "answer"


def flags(s: Mapping) -> dict:
    process_ok = float(s.get("process_acc", 0.0)) >= 1.0
    return {
        "format": bool(is_format_error(s)),
        "missing_node": s.get("missing_node", 0) > 0,
        "dependency_mismatch": s.get("dependency_mismatch", 0) > 0,
        "value_mismatch": s.get("value_mismatch", 0) > 0,
        "answer_mismatch": not s.get("answer_correct", False),
        "extra_nodes": s.get("extra_nodes", 0) > 0,
        "process_ok_answer_wrong": process_ok and not s.get("answer_correct", False),
        "answer_ok_process_wrong": bool(s.get("answer_correct", False)) and not process_ok,
        "not_stopped": not s.get("stopped", True),
    }


def per_op(prompts: Sequence[Mapping]) -> dict:
    """``{op: {"samples": N, "primary": {outcome: share}, "flags": {flag: share},
    "extra_steps": mean(n_pred - n_gold) | None, "redefined": share | None, "mean_length": tokens}}``."""
    by_op = defaultdict(list)
    for p in prompts:
        by_op[int(p["op"])].extend(p.get("samples") or [])
    out = {}
    for op in sorted(by_op):
        ss = by_op[op]
        if not ss:
            continue
        prim = [primary(s) for s in ss]
        fl = [flags(s) for s in ss]
        steps = [int(s["n_pred"]) - int(s["n_gold"]) for s in ss if "n_pred" in s and "n_gold" in s]
        redefined = [int(s["redefined_nodes"]) > 0 for s in ss if "redefined_nodes" in s]
        out[op] = {
            "samples": len(ss),
            "primary": {c: prim.count(c) / len(ss) for c in PRIMARY},
            "flags": {f: float(np.mean([x[f] for x in fl])) for f in FLAGS},
            "extra_steps": float(np.mean(steps)) if steps else None,
            "redefined": float(np.mean(redefined)) if redefined else None,
            "mean_length": float(np.mean([s.get("length", 0) for s in ss])),
        }
    return out


def examples(prompts: Sequence[Mapping], ops: Sequence[int] | None = None, per_op: int = 1,
             samples: int = 2) -> list[dict]:
    """Prompts with stored response texts: ``[{op, id, gold: {problem, question, solution},
    responses: [{text, outcome, ...}]}]``, at most ``per_op`` prompts per op, preferring a prompt
    with at least one failed sample."""
    by_op = defaultdict(list)
    for p in prompts:
        if p.get("gold") and any("text" in s for s in p.get("samples", [])):
            by_op[int(p["op"])].append(p)
    out = []
    for op in sorted(by_op):
        if ops is not None and op not in ops:
            continue
        ps = sorted(by_op[op], key=lambda p: all(s.get("verified_correct") for s in p["samples"] if "text" in s))
        for p in ps[:per_op]:
            resp = [{"text": s["text"], "outcome": primary(s), "process_acc": s.get("process_acc"),
                     "answer_correct": s.get("answer_correct"), "extra_nodes": s.get("extra_nodes", 0)}
                    for s in p["samples"] if "text" in s][:samples]
            out.append({"op": op, "id": p["id"], "gold": p["gold"], "responses": resp})
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}"


def markdown(analysis: Mapping, title: str = "error analysis per op") -> list[str]:
    """Markdown rows of :func:`per_op`'s output (primary outcomes, then the main flags)."""
    lines = [f"## {title} (% of samples; primary = the first error in the order format, missing node, "
             "dependency, value, answer)", "",
             "| op | samples | " + " | ".join(PRIMARY) + " | extra nodes | process ok, answer wrong | "
             "answer ok, process wrong | not stopped | defined twice | steps − gold | length |",
             "|---|---|" + "---|" * (len(PRIMARY) + 7)]
    for op, e in sorted(analysis.items()):
        f = e["flags"]
        xs = "-" if e.get("extra_steps") is None else f"{e['extra_steps']:+.2f}"
        lines.append(f"| {op} | {e['samples']} | " + " | ".join(_pct(e["primary"][c]) for c in PRIMARY)
                     + f" | {_pct(f['extra_nodes'])} | {_pct(f['process_ok_answer_wrong'])} | "
                     f"{_pct(f['answer_ok_process_wrong'])} | {_pct(f['not_stopped'])} | "
                     f"{_pct(e.get('redefined'))} | {xs} | "
                     f"{e['mean_length']:.0f} |")
    return lines


def _clip(text: str, limit: int) -> str:
    """One line, control characters and backticks replaced (model output can be anything)."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(text)).replace("`", "'")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"


def examples_markdown(exs: Sequence[Mapping], limit: int = 700) -> list[str]:
    """Each example: the question, the gold solution and the responses with their outcome."""
    lines = []
    for ex in exs:
        g = ex["gold"]
        lines += [f"**op {ex['op']}** (`{ex['id']}`): {_clip(g.get('problem', ''), limit)} "
                  f"*{_clip(g.get('question', ''), 200)}*", "", f"- gold: `{_clip(g.get('solution', ''), limit)}`"]
        for r in ex["responses"]:
            pa = r.get("process_acc")
            lines.append(f"- {r['outcome']} (ProcessAcc {'-' if pa is None else f'{pa:.2f}'}, "
                         f"extra nodes {r.get('extra_nodes', 0)}): `{_clip(r['text'], limit)}`")
        lines.append("")
    return lines


def compare_ops(analysis: Mapping, per_op_passk: Mapping, a: int = 2, b: int = 3, generator_n: int = 600) -> str:
    """A paragraph comparing op ``a`` with op ``b`` from the numbers: strict / answer-only pass@1,
    the failure outcome that op ``a`` has most in excess, the continuation signs (extra nodes,
    every gold node right but the answer wrong, steps beyond the gold), and the generator's
    structure statistics of both ops (interplay_jax.task.opstats). Empty if an op is missing."""
    if a not in analysis or b not in analysis:
        return ""
    from interplay_jax.task.opstats import op_statistics

    ea, eb = analysis[a], analysis[b]

    def p1(op, metric):
        v = per_op_passk.get(op, {}).get(metric, {}).get(1)
        return "-" if v is None else f"{100 * v:.0f}%"

    below = (per_op_passk.get(a, {}).get("verified", {}).get(1, 0.0)
             < per_op_passk.get(b, {}).get("verified", {}).get(1, 0.0))
    fails = [c for c in PRIMARY if c != "correct"]
    worst = max(fails, key=lambda c: ea["primary"][c] - eb["primary"][c])
    gap = ea["primary"][worst] - eb["primary"][worst]
    excess = (f"The failure op{a} has most in excess of op{b} is `{worst}` ({100 * ea['primary'][worst]:.0f}% vs "
              f"{100 * eb['primary'][worst]:.0f}% of samples)." if gap > 0 else
              f"No failure type is more frequent at op{a} than at op{b}.")
    gen = op_statistics([a, b], generator_n)
    ga, gb = gen[a], gen[b]
    fa, fb = ea["flags"], eb["flags"]
    xs = lambda e: "-" if e.get("extra_steps") is None else f"{e['extra_steps']:+.2f}"  # noqa: E731
    return (
        f"**op{a} vs op{b}.** Strict pass@1 {p1(a, 'verified')} vs {p1(b, 'verified')}, answer-only "
        f"{p1(a, 'answer')} vs {p1(b, 'answer')}: op{a} {'scores below' if below else 'does not score below'} "
        f"op{b} here. {excess} Signs of "
        f"continuing past the asked node: extra nodes {100 * fa['extra_nodes']:.0f}% vs "
        f"{100 * fb['extra_nodes']:.0f}%, every gold node right but the answer wrong "
        f"{100 * fa['process_ok_answer_wrong']:.0f}% vs {100 * fb['process_ok_answer_wrong']:.0f}%, a node "
        f"defined twice {_pct(ea.get('redefined'))}% vs {_pct(eb.get('redefined'))}%, steps "
        f"written minus gold steps {xs(ea)} vs {xs(eb)}. Generator ({generator_n} forward problems per op): "
        f"op{a} has {ga['distractors']:.1f} distractor sentences beside {ga['sentences'] - ga['distractors']:.0f} "
        f"needed one(s) ({100 * ga['distractor_share']:.0f}% of sentences) vs op{b} "
        f"{gb['distractors']:.1f} beside {gb['sentences'] - gb['distractors']:.0f} "
        f"({100 * gb['distractor_share']:.0f}%); a distractor cites the asked total in "
        f"{100 * ga['any_distractor_cites_asked']:.0f}% vs {100 * gb['any_distractor_cites_asked']:.0f}% of problems "
        f"({ga['distractors_citing_asked']:.2f} vs {gb['distractors_citing_asked']:.2f} such sentences); answers "
        f"lie in 1-4 in {100 * ga['answer_in_1_4']:.0f}% vs {100 * gb['answer_in_1_4']:.0f}%; the first solution "
        f"step is an item of the asked entity in {100 * ga['first_step_in_asked_entity']:.0f}% vs "
        f"{100 * gb['first_step_in_asked_entity']:.0f}%.")
