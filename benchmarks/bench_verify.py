"""Verifier throughput: verifications/s through the public ``verify`` on op 10-20 responses.

Responses are model-output shaped (``" {body} </solution> <answer> N </answer>"``), grouped by prompt
as in RL/eval (several responses per prompt): the exact gold completion and mutated ones (a wrong
intermediate value, a dropped step, a wrong parent letter, a wrong answer, a truncation). Gold
parses are cached before timing (as in RL, where every prompt is scored against many responses).

Figures printed:
  * grouped: the response set scored once, step-parse cache cleared first (a step text seen in an
    earlier response of the same prompt is a cache hit, as in a real RL batch);
  * cold: the step-parse cache cleared before every response (no sharing at all, the worst case);
  * the time for one 100 KB response (cold).

    python benchmarks/bench_verify.py [--prompts 200] [--per-prompt 16] [--seconds 3]
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import re
import sys
import time

import interplay_jax.task.verify  # noqa: F401
from interplay_jax.task.formats import format_document, format_prompt

V = sys.modules["interplay_jax.task.verify"]
CONTEXTS = ("crazy_zootopia", "teachers_in_school", "movie_festival_awards")
MODES = ("normalforward", "forwardreverse")
_STEP = re.compile(r"Define .*?\.(?= |$)")


def gold_records(n: int):
    try:
        from interplay_jax.task.generator import generate_problem
    except ImportError:
        generate_problem = None
    if generate_problem is not None:
        return [generate_problem(10 + i % 11, CONTEXTS[i % 3], MODES[(i // 3) % 2], seed=i) for i in range(n)]
    ref = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference" / "samples.jsonl"
    records = [json.loads(line) for line in ref.open() if json.loads(line)["op"] >= 10]
    return [records[i % len(records)] for i in range(n)]


def mutate(completion: str, rng: random.Random) -> str:
    steps = list(_STEP.finditer(completion))
    kind = rng.randrange(6)
    if kind == 0 or not steps:
        return completion
    m = steps[rng.randrange(len(steps))]
    if kind == 1:   # wrong value: bump the last number of a step
        nums = list(re.finditer(r"\d+", m.group(0)))
        if nums:
            n = nums[-1]
            s, e = m.start() + n.start(), m.start() + n.end()
            return completion[:s] + str(int(n.group(0)) + 1) + completion[e:]
        return completion
    if kind == 2:   # dropped step
        return completion[:m.start()] + completion[m.end() + 1:]
    if kind == 3:   # wrong parent letter
        letters = list(re.finditer(r"(?<= )[A-Za-z](?= [+*-]| =)", m.group(0)))
        if letters:
            x = letters[-1]
            s = m.start() + x.start()
            return completion[:s] + rng.choice("QRSTUVWabcdefg") + completion[s + 1:]
        return completion
    if kind == 4:   # wrong answer
        return re.sub(r"<answer> (\d+) </answer>", lambda a: f"<answer> {int(a.group(1)) + 1} </answer>", completion)
    return completion[:rng.randrange(1, len(completion))]   # truncated


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--per-prompt", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=3.0)
    args = ap.parse_args()
    rng = random.Random(0)
    records = gold_records(args.prompts)
    pairs = []
    for r in records:
        completion = format_document(r)[len(format_prompt(r)):]
        pairs += [(r["solution"], mutate(completion, rng)) for _ in range(args.per_prompt)]
    for gold, _ in pairs:
        V.parse_gold(gold)
    chars = sum(len(resp) for _, resp in pairs) / len(pairs)
    print(f"{len(records)} prompts (op 10-20, both modes, 3 contexts) x {args.per_prompt} responses, "
          f"mean response {chars:.0f} chars")

    n, t0, w0, verified = 0, time.process_time(), time.perf_counter(), 0
    while time.process_time() - t0 < args.seconds:
        V._static_step.cache_clear()
        for gold, resp in pairs:
            verified += V.verify(gold, resp).verified_correct
        n += len(pairs)
    dt, wall = time.process_time() - t0, time.perf_counter() - w0
    print(f"grouped: {n / dt:,.0f} verifications/s of CPU time ({n / wall:,.0f}/s wall clock), "
          f"{verified / n:.0%} VerifiedCorrect")

    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < args.seconds:
        for gold, resp in pairs[:2000]:
            V._static_step.cache_clear()
            V.verify(gold, resp)
        n += len(pairs[:2000])
    dt = time.process_time() - t0
    print(f"cold:    {n / dt:,.0f} verifications/s (no step text shared between responses)")

    gold = records[0]["solution"]
    big = ""
    i = 0
    while len(big) < 100_000:
        big += " ".join(m.group(0).replace(" as ", f"{i} as ", 1) for m in _STEP.finditer(gold)) + " "
        i += 1
    big = big[:100_000]
    times = []
    for _ in range(5):
        V._static_step.cache_clear()
        t = time.process_time()
        V.verify(gold, big)
        times.append(time.process_time() - t)
    print(f"100 KB response ({big.count('Define ')} Defines, cold): {min(times) * 1e3:.1f} ms (best of 5)")


if __name__ == "__main__":
    main()
