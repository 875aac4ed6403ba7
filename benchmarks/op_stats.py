"""Per-op statistics of generated problems (why can a trained base score lower at op2 than at op3?).

    python benchmarks/op_stats.py [--n 3000] [--ops 2-10] [--tokenizer PATH] [--no-tokens] [--json OUT]

For each op (forward mode, contexts A/B/C round-robin; interplay_jax/task/opstats.py) it prints the
share of "total" questions, problem sentences, distractor sentences, constant-only sentences
("... equals k.", the candidates for a solution's first step), solution steps, whether the first
solution step is an item of the asked entity, distractors citing the asked node (and the share of
problems with at least one), distractors about an item the solution also uses, answers (mean, share
in 1..4), how often every solution value equals the answer, document tokens (``--tokenizer``;
default: the default tokenizer, built once and cached) and each op's share of documents and tokens
in the base mixture (20/30/50 over op2-4 / 5-7 / 8-10).
"""
from __future__ import annotations

import argparse
import json
import statistics

from interplay_jax.config import parse_ops
from interplay_jax.task.contexts import get_context
from interplay_jax.task.generator import FORWARD, build_problem
from interplay_jax.task.mixture import get_mixture
from interplay_jax.task.opstats import SEED0, op_statistics

COLS = [("total_question", "total q", "{:.0%}"), ("sentences", "sentences", "{:.2f}"),
        ("distractors", "distractors", "{:.2f}"), ("distractor_share", "distractor share", "{:.0%}"),
        ("constant_sentences", "const sent.", "{:.2f}"), ("steps", "steps", "{:.2f}"),
        ("first_step_in_asked_entity", "1st step in asked entity", "{:.0%}"),
        ("distractors_citing_asked", "distr. citing asked", "{:.2f}"),
        ("any_distractor_cites_asked", ">= 1 distr. citing asked", "{:.0%}"),
        ("same_item_distractors", "same-item distr.", "{:.2f}"), ("answer", "answer mean", "{:.2f}"),
        ("answer_in_1_4", "answer 1-4", "{:.0%}"), ("all_values_equal_answer", "all values = answer", "{:.0%}"),
        ("doc_tokens", "doc tokens", "{:.0f}")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=3000, help="problems per op")
    p.add_argument("--ops", default="2-10")
    p.add_argument("--tokenizer", default="", help="tokenizer.json (default: the default tokenizer)")
    p.add_argument("--no-tokens", action="store_true", help="skip document token counts (and token shares)")
    p.add_argument("--json", default="", help="also write the table as JSON here")
    a = p.parse_args(argv)
    ops = parse_ops(a.ops)
    rows = op_statistics(ops, a.n)
    if not a.no_tokens:
        from interplay_jax.task.tokenizer import Tokenizer, default_tokenizer_path
        tok = Tokenizer.load(a.tokenizer or default_tokenizer_path())
        contexts = [get_context(c).name for c in ("A", "B", "C")]
        for op in ops:
            rows[op]["doc_tokens"] = statistics.fmean(
                len(tok.encode_document(build_problem(op, contexts[i % 3], FORWARD, seed=SEED0 + i).record()))
                for i in range(a.n))
    probs = get_mixture("base").op_probs()
    tok_mass = {op: probs.get(op, 0.0) * rows.get(op, {}).get("doc_tokens", 0.0) for op in probs}
    tok_total = sum(tok_mass.values())
    print(f"{a.n} problems per op, forward, contexts A/B/C")
    print("| op | " + " | ".join(c[1] for c in COLS) + " | mixture docs | mixture tokens |")
    print("|---|" + "---|" * (len(COLS) + 2))
    for op, row in rows.items():
        cells = [fmt.format(row[k]) if k in row else "-" for k, _, fmt in COLS]
        # token shares need every op of the mixture counted (run with --ops 2-10)
        share = f"{tok_mass.get(op, 0.0) / tok_total:.1%}" if tok_total and set(probs) <= set(rows) else "-"
        print(f"| {op} | " + " | ".join(cells) + f" | {probs.get(op, 0.0):.1%} | {share} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"n": a.n, "per_op": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
