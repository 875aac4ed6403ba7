"""Compare our generator's distribution with reference/samples.jsonl, per op and mode.

    python benchmarks/compare_generator.py [--n 200] [--reference ../shared/reference]

Prints, per (op, mode): answer, number of sentences, number of solution steps, characters of problem+solution and tokens of the training document (with the
original tokenizer), ours (n seeds over the 3 contexts) vs the reference samples.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics

from interplay_jax.task.generator import MODES, generate_problem


def stats(rec, tok):
    answer = int(rec["solution"].rsplit("Answer: ", 1)[1].rstrip("."))
    sentences = rec["problem"].count(". ")
    steps = rec["solution"].count("Define ")
    chars = len(rec["problem"]) + len(rec["solution"])
    toks = None
    if tok is not None:
        body = rec["solution"].rsplit(" Answer:", 1)[0]
        doc = f"<question> {rec['problem']}{rec['question']} </question> <solution> {body} </solution> <answer> {answer} </answer>"
        toks = len(tok.encode(doc).ids)
    return answer, sentences, steps, chars, toks


def summary(values):
    """min/median/max for few values (the reference), p10/median/p90 for many (ours)."""
    values = sorted(v for v in values if v is not None)
    if not values:
        return "-"
    n = len(values)
    lo, hi = (values[0], values[-1]) if n < 20 else (values[n // 10], values[(9 * n) // 10])
    return f"{lo}/{statistics.median(values):g}/{hi}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--reference", default=str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference"))
    ap.add_argument("--ops", default="2,3,5,8,10,12,14,16,20")
    args = ap.parse_args()
    ref_dir = pathlib.Path(args.reference)
    tok = None
    refs = []
    if ref_dir.is_dir():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(ref_dir / "tokenizer.json"))
        refs = [json.loads(line) for line in open(ref_dir / "samples.jsonl", encoding="utf-8")]
    ctxs = ("crazy_zootopia", "teachers_in_school", "movie_festival_awards")
    print("per op/mode: ours p10/median/p90, reference min/median/max: answer | sentences | steps | chars | tokens (document)")
    for op in [int(o) for o in args.ops.split(",")]:
        for mode in MODES:
            ours = [stats(generate_problem(op, ctxs[i % 3], mode, seed=i), tok) for i in range(args.n)]
            theirs = [stats(r, tok) for r in refs if r["op"] == op and r["mode"] == mode]
            for label, rows in (("ours", ours), ("ref ", theirs)):
                if not rows:
                    continue
                cols = list(zip(*rows))
                print(f"op{op:>2} {mode[:7]:7} {label} n={len(rows):>4} ans {summary(cols[0]):>12} | sent {summary(cols[1]):>9} "
                      f"| steps {summary(cols[2]):>8} | chars {summary(cols[3]):>14} | tok {summary(cols[4]):>13}")


if __name__ == "__main__":
    main()
